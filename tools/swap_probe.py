#!/usr/bin/env python
"""Swap probe of a coarse (retrieval) model: does it read words and relations in the image, or only prefer them?

    python tools/swap_probe.py --config-file configs/fiber_shapes/zoo/retrieval.yaml \\
        --words "[['left','right'], ['above','below']]" --order "['left of', 'right of', 'above', 'below']" \\
        MODEL.WEIGHTS model_zoo/fiber_shapes/retrieval.safetensors

For each caption of the dataset (default: the config's first DATASETS.TEST) and each word swap (`--words`, groups as
INPUT.COARSE.ITM_SWAP_WORDS) and order swap (`--order`, relations as INPUT.COARSE.ITM_SWAP_ORDER), how often ITM
and ITC score the true caption above the swapped one against its image (chance 50; fiber_d2/evaluation/swap_probe.py).
"balanced" rows are 50 for a model that prefers one word of a group without looking at the image. Prints one JSON
object per row.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a coarse model's config")
    parser.add_argument("--dataset", default="", help="a registered image-text dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--words", default="[]", help="word groups as a Python literal, e.g. \"[['left','right']]\"")
    parser.add_argument("--order", default="[]", help="asymmetric relations as a Python literal, e.g. \"['above']\"")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import fiber_d2  # noqa: F401  (registers the datasets and models)
    from fiber_d2.checkpoint import FiberCheckpointer
    from fiber_d2.config import ConfigError, load_fiber_config
    from fiber_d2.data.build import load_grounding_dataset_dicts
    from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
    from fiber_d2.data.positive_map import encode_prompt
    from fiber_d2.data.swapped_captions import check_order_relations, check_swap_groups
    from fiber_d2.engine.trainer import Trainer
    from fiber_d2.evaluation.swap_probe import swap_probe

    try:
        groups = check_swap_groups(ast.literal_eval(args.words))
        relations = check_order_relations(ast.literal_eval(args.order))
        cfg = load_fiber_config(args.config_file, args.opts)
        dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not dataset:
            raise ValueError("no --dataset and no DATASETS.TEST in the config")
        model = Trainer.build_model(cfg)
        FiberCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        mapper = CoarseDatasetMapper(cfg, False, task="retrieval")
        records = load_grounding_dataset_dicts([dataset])

        def encode(text: str) -> torch.Tensor:
            return encode_prompt(mapper.tokenizer, text, cfg.INPUT.COARSE.MAX_TEXT_LEN)[0]

        results = swap_probe(model, records, mapper, encode, groups, relations)
    except (ConfigError, ValueError, SyntaxError, OSError, KeyError) as error:
        print(f"swap_probe: {error}", file=sys.stderr)
        return 2
    for key, row in results.items():
        print(json.dumps({"dataset": dataset, "swap": key, "pairs": row["pairs"],
                          "itm": round(row["itm"], 1), "itc": round(row["itc"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
