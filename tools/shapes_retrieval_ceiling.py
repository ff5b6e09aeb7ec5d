#!/usr/bin/env python
"""The text-to-image Recall@1 ceiling of FIBER-Shapes retrieval: how ambiguous the captions of a split are.

    python tools/shapes_retrieval_ceiling.py                    # $DETECTRON2_DATASETS/fiber_shapes, split val
    python tools/shapes_retrieval_ceiling.py --root output/datasets_10k/fiber_shapes --split novel

A caption such as "there are two stars ." fits every image with exactly two stars. A model that ranks exactly the
images a caption fits first, in random order, gets the printed Recall@1 (fiber_d2/data/shapes/caption_truth.py):
"strict" reads "a star" as exactly one star (as the generator writes it), "loose" as at least one; "relation-blind"
readings also leave out the relation of a two-object caption ("a star left of a cross" fits every image with a star
and a cross): what a model that reads every object but not where they are can reach. Prints one JSON object per
reading.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from fiber_d2.data.shapes import SPLITS, load_split_scenes
from fiber_d2.data.shapes.caption_truth import text_to_image_ceiling


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "fiber_shapes"
    parser.add_argument("--root", type=Path, default=default_root, help="a FIBER-Shapes dataset (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="val", help="the split whose captions are ranked")
    args = parser.parse_args(argv)
    try:
        scenes, texts = load_split_scenes(args.root, args.split)
        captions = [[sentence.text for sentence in text.sentences] for text in texts]
        for ignore_relation in (False, True):
            for strict in (True, False):
                ceiling = text_to_image_ceiling(captions, scenes, strict=strict, ignore_relation=ignore_relation)
                reading = ("strict" if strict else "loose") + (", relation-blind" if ignore_relation else "")
                row = {"root": str(args.root), "split": args.split, "reading": reading,
                       "images": len(scenes), "captions": sum(map(len, captions))}
                print(json.dumps({**row, **{key: round(value, 2) for key, value in ceiling.items()}}))
    except ValueError as error:
        print(f"shapes_retrieval_ceiling: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
