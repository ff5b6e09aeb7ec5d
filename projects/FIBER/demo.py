#!/usr/bin/env python
"""Draw a FIBER grounding model's detections on images: the names of a prompt, or the phrases of a caption.

    python projects/FIBER/demo.py --config-file C --input img1.jpg "images/*.jpg" --output out_dir \\
        [--prompt "red circle. blue star" | --caption "a red circle left of a blue star"] \\
        [--confidence-threshold 0.5] [--max-detections K] [--max-inputs N] [--no-one-label-per-box] \\
        [--opts MODEL.WEIGHTS model_final.pth]

Each input image is written to `out_dir` under its own file name with boxes, labels and scores drawn (labels kept
inside the image). `--prompt`: names separated by ". "; `--caption`: a sentence whose phrases are found
automatically and grounded (GLIP's demo); neither: the category names of the config's first test dataset. A model
whose scores are not calibrated yet (a short training run) may score nothing above the threshold: the line printed
for each image then gives its best score; lower `--confidence-threshold`, or draw the K best with `--max-detections`.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import warnings

PROG = "demo.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=formatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files or glob patterns")
    parser.add_argument("--output", required=True, help="directory for the drawn images")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", help='names to detect, separated by ". " (default: the first test dataset\'s)')
    what.add_argument("--caption", help="a sentence whose phrases to ground (found automatically)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T",
                        help="draw detections scoring at least this (default: %(default)s)")
    parser.add_argument("--max-detections", type=int, default=None, metavar="K",
                        help="draw at most the K highest-scoring detections (default: all above the threshold)")
    parser.add_argument("--one-label-per-box", action=argparse.BooleanOptionalAction, default=True,
                        help="of boxes overlapping by more than MODEL.FIBER.HEAD.NMS_THRESH_TEST IoU, draw only the "
                             "best, whatever its label (default: %(default)s)")
    parser.add_argument("--max-inputs", type=int, default=None, metavar="N",
                        help="use only the first N inputs, sorted (default: all)")
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


def summary(path: str, output: dict, drawn: int, threshold: float, seconds: float, out_path: str) -> str:
    """The line printed for one image; when nothing is drawn, it names the best score and its label."""
    line = f"{path}: {drawn} detections in {seconds:.2f} s -> {out_path}"
    scores = output["instances"].scores
    if drawn == 0 and len(scores):
        best = int(scores.argmax())
        line += (f" (none scores at least {threshold}; best {float(scores[best]):.3f}, "
                 f"{output['text_labels'][best]!r})")
    elif drawn == 0:
        line += " (the model returned no detection)"
    return line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = expand_inputs(args.input, args.max_inputs)
    # Imported after the arguments are parsed, so that --help and argument errors are instant. Warnings from the
    # libraries' own calls (fvcore's torch.jit.script on import, Detectron2's torch.meshgrid) are nothing a user can
    # act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
    import cv2
    from detectron2.data import MetadataCatalog
    from detectron2.data.catalog import Metadata

    from fiber_d2.config import load_fiber_config
    from fiber_d2.data.image_io import ImageError, read_image
    from fiber_d2.data.phrases import find_phrases
    from fiber_d2.engine.predictor import FiberPredictor, split_prompt
    from fiber_d2.engine.visualizer import LabelFittingVisualizer

    cfg = load_fiber_config(args.config_file, args.opts)
    cfg.freeze()
    prompt = args.prompt
    if args.caption is None and prompt is None:
        dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
        prompt = MetadataCatalog.get(dataset).get("thing_classes", None) if dataset else None
        if not prompt:
            raise ValueError("give --prompt or --caption (the config has no test dataset with category names)")
        print(f"{PROG}: no --prompt: detecting the {len(prompt)} category names of {dataset}")
    if prompt is not None:
        split_prompt(prompt, cfg.MODEL.FIBER.PROMPT.SEPARATOR)  # an empty prompt fails here, before the model loads
    else:
        phrases = [args.caption[start:end] for ((start, end),) in find_phrases(args.caption)]
        if not phrases:
            raise ValueError(f"found no phrase to ground in --caption {args.caption!r}")
        print(f"{PROG}: grounding the phrases {phrases}")
    predictor = FiberPredictor(cfg)

    def predict(image):
        if args.caption is not None:
            return predictor.ground(image, args.caption, one_label_per_box=args.one_label_per_box)
        return predictor(image, prompt, one_label_per_box=args.one_label_per_box)

    os.makedirs(args.output, exist_ok=True)
    for path in paths:
        try:
            image = read_image(path, format="BGR")
        except ImageError as e:
            print(f"{PROG}: skipping {e}", file=sys.stderr)
            continue
        start = time.perf_counter()
        output = predict(image)
        instances = output["instances"]
        instances = instances[instances.scores >= args.confidence_threshold][: args.max_detections]
        metadata = Metadata(name="prompt", thing_classes=output["label_names"])
        drawn = LabelFittingVisualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out_path = os.path.join(args.output, os.path.basename(path))
        cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1])
        seconds = time.perf_counter() - start
        print(summary(path, output, len(instances), args.confidence_threshold, seconds, out_path))


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"{PROG}: error: {e}")
