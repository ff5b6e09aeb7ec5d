"""Training batches drawn from one cluster of similar images (topic-aware sampling, as TAS-B: Hofstaetter et al.,
SIGIR 2021, who cluster the queries by a trained model's embeddings and draw each batch from one cluster).

A contrastive loss over a random batch of 16 rarely meets two images that differ in one object, while retrieval
among test images must rank exactly those. Drawing each batch from a cluster of near neighbours makes the in-batch
negatives (ITC's, and ITM's, which are drawn from the batch) that hard.

The clusters are a JSON file {"<image_id>": cluster, ...}, written by `tools/cluster_images.py` from a model's ITC
image embeddings (`spherical_kmeans`), read by the coarse training loader (DATALOADER.BATCH_CLUSTERS).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import torch

from .datasets.errors import DatasetFormatError


def spherical_kmeans(
    embeddings: torch.Tensor, num_clusters: int, min_size: int, iterations: int = 30, seed: int = 0
) -> torch.Tensor:
    """Cluster ids [N] (0..C-1, C <= num_clusters) of L2-normalised `embeddings` [N, D] by cosine k-means (k-means++
    start from `seed`). Clusters with fewer than `min_size` members are then dissolved, smallest first, their members
    moved to the nearest remaining centre, so that every cluster can fill a batch of `min_size`."""
    n = embeddings.shape[0]
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}] (the number of images), got {num_clusters}")
    if min_size > n:
        raise ValueError(f"min_size {min_size} is more than the {n} images")
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, num_clusters):  # k-means++: the next centre with probability ~ its squared distance
        distance = (1 - x @ centres.T).clamp_min(0).min(dim=1).values
        weights = distance**2
        if weights.sum() > 0:
            pick = torch.multinomial(weights / weights.sum(), 1, generator=generator)
        else:  # every point is a centre already
            pick = torch.randint(n, (1,), generator=generator)
        centres = torch.cat([centres, x[pick]])
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centres = torch.where(empty[:, None], centres, torch.nn.functional.normalize(sums, dim=1))
    assign = (x @ centres.T).argmax(dim=1)
    alive = torch.ones(len(centres), dtype=torch.bool)
    while True:
        sizes = torch.bincount(assign, minlength=len(centres)).masked_fill(~alive, n + 1)
        smallest = int(sizes.argmin())
        if sizes[smallest] >= min_size:
            break
        alive[smallest] = False
        members = assign == smallest
        similarity = (x[members] @ centres.T).masked_fill(~alive, -2)
        assign[members] = similarity.argmax(dim=1)
    return torch.unique(assign, return_inverse=True)[1]


def write_batch_clusters(path: str, image_ids: Sequence, cluster_ids: Sequence[int]) -> None:
    """Write {"<image_id>": cluster} to `path` (JSON)."""
    if len(image_ids) != len(cluster_ids):
        raise ValueError(f"{len(image_ids)} image ids but {len(cluster_ids)} cluster ids")
    with open(path, "w") as f:
        json.dump({str(i): int(c) for i, c in zip(image_ids, cluster_ids)}, f)


def load_batch_cluster_ids(path: str, records: Sequence[dict], batch_size: int) -> list[int]:
    """The cluster of each record, by its image_id, from the JSON file at `path`, as consecutive group ids.
    Raises DatasetFormatError, one line naming the file and the record or cluster, when a record has no cluster, a
    cluster holds fewer than `batch_size` records (its batches would hold an image twice, a false negative) or the
    file is not such JSON."""
    try:
        with open(os.path.expandvars(path)) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"DATALOADER.BATCH_CLUSTERS {path!r}: cannot read it as JSON ({e})") from None
    if not isinstance(table, dict):
        raise DatasetFormatError(f"DATALOADER.BATCH_CLUSTERS {path!r}: expected an object {{image_id: cluster}}")
    clusters = []
    for record in records:
        key = str(record.get("image_id"))
        if key not in table:
            raise DatasetFormatError(
                f"DATALOADER.BATCH_CLUSTERS {path!r} has no cluster for image_id {key} "
                f"({record.get('file_name', '?')}); write it for this training set (tools/cluster_images.py)"
            )
        clusters.append(table[key])
    names = sorted(set(clusters), key=str)
    group = {name: i for i, name in enumerate(names)}
    ids = [group[c] for c in clusters]
    sizes = torch.bincount(torch.tensor(ids), minlength=len(names))
    if int(sizes.min()) < batch_size:
        small = names[int(sizes.argmin())]
        raise DatasetFormatError(
            f"DATALOADER.BATCH_CLUSTERS {path!r}: cluster {small!r} holds {int(sizes.min())} training records, fewer "
            f"than the {batch_size} of a batch per process, so its batches would hold an image twice"
        )
    return ids
