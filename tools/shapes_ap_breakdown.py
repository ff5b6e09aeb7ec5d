#!/usr/bin/env python
r"""Where a FIBER-Shapes detector loses AP: AP50 with its colour+shape categories, merged by colour, by shape, and
class-agnostic (fiber_d2/evaluation/merged_category_ap.py). Prints one JSON object.

    python tools/shapes_ap_breakdown.py \
        --annotations datasets/fiber_shapes/annotations/instances_colorshape_val.json \
        --predictions output/demo/inference/fiber_shapes_colorshape_val/coco_instances_results.json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from fiber_d2.evaluation.merged_category_ap import colour_shape_breakdown


def _load_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {what} file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {what} file {path} is not valid JSON: {error}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="COCO instances JSON with '<colour> <shape>' categories")
    parser.add_argument("--predictions", required=True, help="COCO results JSON (coco_instances_results.json)")
    args = parser.parse_args(argv)
    coco_gt = _load_json(args.annotations, "annotations")
    detections = _load_json(args.predictions, "predictions")
    if not isinstance(coco_gt, dict) or not {"images", "annotations", "categories"} <= set(coco_gt):
        raise SystemExit(f"error: {args.annotations} lacks 'images', 'annotations' or 'categories'")
    if not isinstance(detections, list):
        raise SystemExit(f"error: {args.predictions} is not a JSON list of detections")
    try:
        result = colour_shape_breakdown(coco_gt, detections)
    except KeyError as error:
        raise SystemExit(f"error: {args.predictions}: {error.args[0]}") from None
    print(json.dumps({key: round(value, 2) for key, value in result.items()}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
