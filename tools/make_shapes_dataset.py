#!/usr/bin/env python
"""Generate the FIBER-Shapes synthetic benchmark (docs/DATA_FORMATS.md).

    python tools/make_shapes_dataset.py                       # -> $DETECTRON2_DATASETS/fiber_shapes (./datasets/...)
    python tools/make_shapes_dataset.py --root /tmp/shapes --seed 1 --num-train 100 --num-val 20 --num-novel 20

Skips the work if the root already holds a complete dataset made with the same parameters (unless --force).
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from fiber_d2.data.shapes import generate_fiber_shapes


def default_root() -> Path:
    """$DETECTRON2_DATASETS/fiber_shapes, with DETECTRON2_DATASETS defaulting to ./datasets."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "fiber_shapes"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", type=Path, default=default_root(), help="output folder (default: $DETECTRON2_DATASETS/fiber_shapes)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--num-train", type=int, default=1000, help="images in the train split")
    parser.add_argument("--num-val", type=int, default=200, help="images in the val split")
    parser.add_argument("--num-novel", type=int, default=200, help="images in the novel (held-out combinations) split")
    parser.add_argument("--force", action="store_true", help="regenerate even if an identical dataset exists")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_val, args.num_novel) < 0:
        parser.error("image counts must be >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    report = generate_fiber_shapes(
        args.root, seed=args.seed, num_train=args.num_train, num_val=args.num_val, num_novel=args.num_novel,
        force=args.force,
    )
    splits = report.meta["splits"]
    counts = "/".join(str(splits[split]["images"]) for split in splits)
    objects = sum(split["objects"] for split in splits.values())
    if report.skipped:
        print(f"FIBER-Shapes: {report.root} already holds this dataset (seed {args.seed}, train/val/novel images "
              f"{counts}); skipped, use --force to regenerate")
    else:
        print(f"FIBER-Shapes: wrote {counts} train/val/novel images ({objects} objects, seed {args.seed}) to "
              f"{report.root} in {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
