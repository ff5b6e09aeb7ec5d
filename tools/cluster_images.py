#!/usr/bin/env python
"""Cluster a coarse model's training images by its ITC image embeddings, for DATALOADER.BATCH_CLUSTERS.

    python tools/cluster_images.py --config-file configs/fiber_shapes/zoo/retrieval.yaml --num-clusters 200 \\
        --output output/clusters.json MODEL.WEIGHTS model.pth

Each image of DATASETS.TRAIN is embedded at the test size (INPUT.COARSE.TEST_IMAGE_SIZE, else IMAGE_SIZE) by the
dual encoder's image side; cosine k-means (fiber_d2/data/batch_clusters.py) groups them, and clusters smaller than a
batch (SOLVER.IMS_PER_BATCH) are merged into their nearest neighbours. Writes {"<image_id>": cluster} and prints one
JSON line: images, clusters, smallest / median / largest cluster, seconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Sequence

import torch
from detectron2.config import CfgNode


def embed_training_images(cfg: CfgNode, batch_size: int) -> tuple[list, torch.Tensor]:
    """(image ids, ITC image embeddings [N, D]) of the distinct images of cfg.DATASETS.TRAIN, in record order,
    `batch_size` images per forward."""
    from fiber_d2.checkpoint import FiberCheckpointer
    from fiber_d2.data import CoarseDatasetMapper, load_grounding_dataset_dicts
    from fiber_d2.engine.trainer import Trainer

    model = Trainer.build_model(cfg)
    FiberCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    mapper = CoarseDatasetMapper(cfg, False, task="caption")  # at inference: the image at the test size
    records, seen = [], set()
    for record in load_grounding_dataset_dicts(cfg.DATASETS.TRAIN):
        if record["image_id"] not in seen:
            seen.add(record["image_id"])
            records.append(record)
    loader = torch.utils.data.DataLoader(
        records, batch_size=batch_size, num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=lambda batch: [mapper(r) for r in batch],
    )
    embeddings = []
    with torch.no_grad():
        for batch in loader:
            embeddings.append(model.image_embeddings(model.preprocess_images(batch)).float().cpu())
    return [r["image_id"] for r in records], torch.cat(embeddings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a coarse model's config (FiberCoarseModel)")
    parser.add_argument("--num-clusters", type=int, required=True, help="k of the k-means (before merging)")
    parser.add_argument("--output", required=True, help="the JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="the k-means++ start's seed")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (default: %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs (MODEL.WEIGHTS ...)")
    args = parser.parse_args(argv)

    import fiber_d2  # noqa: F401  (registers the model and the datasets)
    from fiber_d2.config import ConfigError, load_fiber_config
    from fiber_d2.data.batch_clusters import spherical_kmeans, write_batch_clusters

    start = time.perf_counter()
    try:
        cfg = load_fiber_config(args.config_file, args.opts)
        cfg.freeze()
        image_ids, embeddings = embed_training_images(cfg, args.batch_size)
        clusters = spherical_kmeans(embeddings, args.num_clusters, cfg.SOLVER.IMS_PER_BATCH, seed=args.seed)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"cluster_images: {error}", file=sys.stderr)
        return 2
    write_batch_clusters(args.output, image_ids, clusters.tolist())
    sizes = torch.bincount(clusters).tolist()
    print(json.dumps({
        "output": args.output, "images": len(image_ids), "clusters": len(sizes), "smallest": min(sizes),
        "median": statistics.median(sizes), "largest": max(sizes), "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
