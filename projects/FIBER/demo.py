#!/usr/bin/env python
"""Draw a trained model's detections on images with Detectron2's Visualizer.

    python projects/FIBER/demo.py --config-file C --input img1.jpg "images/*.jpg" --output out_dir \
        [--prompt "red circle. blue star"] [--confidence-threshold 0.5] [--max-detections K] [--max-inputs N] \
        [--opts MODEL.WEIGHTS model_final.pth]

Each input image is written to `out_dir` under its own file name with boxes, phrase (or class) names and scores
drawn. A FIBER grounding model detects the phrases of `--prompt` (names separated by ". "); without it, the names
of the first test dataset's categories. `--max-detections K` draws only the K highest-scoring detections above the
threshold, for models whose scores are not yet calibrated (a short training run scores everything alike).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import cv2
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

import fiber_d2.data.datasets  # noqa: F401  (registers the datasets, for class names)
from fiber_d2.config import add_fiber_config
from fiber_d2.engine.predictor import FiberPredictor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files or glob patterns")
    parser.add_argument("--output", required=True, help="directory for the visualised images")
    parser.add_argument("--prompt", help='phrases to detect, separated by ". " (FIBER grounding models)')
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--max-detections", type=int, default=None, help="draw at most the K highest-scoring detections")
    parser.add_argument("--max-inputs", type=int, default=None, help="use only the first N inputs (sorted)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def expand_inputs(patterns: list[str], max_inputs: int | None = None) -> list[str]:
    """Files named by `patterns` (paths or globs), sorted; an unmatched pattern is an error naming it."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        paths.extend(matches)
    return paths[:max_inputs] if max_inputs is not None else paths


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if cfg.MODEL.META_ARCHITECTURE == "FiberGroundingDetector":
        prompt = args.prompt or metadata.get("thing_classes")
        if not prompt:
            raise ValueError("a FIBER grounding model needs --prompt (the first test dataset has no category names)")
        fiber_predictor = FiberPredictor(cfg)
        metadata = Metadata(name="prompt", thing_classes=list(fiber_predictor.prompt_names(prompt)))

        def predictor(image):
            return fiber_predictor(image, prompt)

    else:
        if args.prompt:
            raise ValueError(f"--prompt needs a FIBER grounding model; the config builds {cfg.MODEL.META_ARCHITECTURE}")
        predictor = DefaultPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    for path in expand_inputs(args.input, args.max_inputs):
        try:
            image = read_image(path, format="BGR")
        except OSError as e:
            print(f"skipping {path}: cannot read it as an image ({e})", file=sys.stderr)
            continue
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        if args.max_detections is not None:
            instances = instances[instances.scores.argsort(descending=True)[: args.max_detections]]
        drawn = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out_path = os.path.join(args.output, os.path.basename(path))
        cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1])
        print(f"{path}: {len(instances)} detections in {time.perf_counter() - start:.2f} s -> {out_path}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"demo.py: error: {e}")
