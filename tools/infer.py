#!/usr/bin/env python
r"""Detect a prompt's phrases or a vocabulary's categories in many images; write COCO-format detections.

    python tools/infer.py --config-file C --input DIR_OR_GLOB [--input ...] \
        (--prompt "red circle. blue star" | --vocabulary coco|lvis|FILE) --output results.json \
        [--coco-json GT.json] [--batch-size N] [--confidence-threshold 0.05] [--overwrite] [--opts KEY VALUE ...]

Inputs: a directory (its .jpg/.jpeg/.png/.bmp/.webp files, any case, not recursive), a file, or a glob; the files
of all inputs are de-duplicated and sorted by absolute path. An image's `image_id` is its 0-based index in that list,
or, with `--coco-json`, the `id` that COCO-format file gives the image of the same file name (its `file_name`, or
`coco_url` for LVIS, compared by the last path component; every input must be listed).
Vocabularies: `--prompt` (names separated by MODEL.FIBER.PROMPT.SEPARATOR) or a FILE (one name per line, or a JSON
list of names if it ends in .json): category ids 1, 2, ... in order; `coco`: the 80 COCO thing classes with their
COCO ids; `lvis`: the 1203 LVIS v1 categories (their first synonym) with their LVIS ids.

The output is a JSON list of {"image_id", "file_name", "category_id", "bbox": [x, y, w, h] in original pixels,
"score", "category_name"} with scores >= --confidence-threshold. While running, each finished image is appended to
OUTPUT.partial.jsonl; a stopped run resumes from it when run again with the same config, inputs, image ids,
vocabulary and threshold (a damaged line is reported by number and its image computed again). Unreadable images
(missing, empty, corrupt, truncated; 16-bit images are read as their high byte) are reported, skipped and listed in
OUTPUT.skipped.json, {"run": what identifies the run, "skipped": [{"image_id", "file_name", "reason"}]}. Running a
finished command again does nothing. Exit status: 0, 1 when no input could be read (nothing written), 2 for bad
arguments, 130 when interrupted. Files are written with mode 0666 less the umask (0644 under the usual 022).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import sys
import tempfile
from typing import Callable, Sequence, TextIO

from detectron2.config import CfgNode
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from tqdm import tqdm

from fiber_d2.config import ConfigError, load_fiber_config
from fiber_d2.data.datasets.errors import load_json, top_level_list
from fiber_d2.data.image_io import ImageError, read_image
from fiber_d2.data.positive_map import PromptError
from fiber_d2.engine.predictor import FiberPredictor, split_prompt

PROG = "infer.py"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HEADER_KEY = "fiber_d2 tools/infer.py run"
HEADER_FIELDS = {
    "config_sha256": "config (or its weights file)",
    "inputs_sha256": "input images or their ids",
    "vocabulary_sha256": "vocabulary",
    "confidence_threshold": "confidence threshold",
}


class RunConflict(Exception):
    """The output's side file cannot be resumed by this run."""


@dataclasses.dataclass
class Vocabulary:
    """What to detect: the prompt given to FiberPredictor, its label names and one category id per label."""

    prompt: str | list[str]
    names: list[str]
    category_ids: list[int]


def _threshold(value: str) -> float:
    try:
        threshold = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return threshold


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=formatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", action="extend", nargs="+", required=True, metavar="DIR_OR_GLOB",
                        help="image directories, files or glob patterns (repeatable)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='phrases to detect, separated by ". "')
    what.add_argument("--vocabulary", metavar="coco|lvis|FILE",
                      help="category names: COCO's, LVIS v1's, or a file (one per line, or a .json list)")
    parser.add_argument("--output", required=True, metavar="FILE", help="the COCO-format detections (JSON)")
    parser.add_argument("--coco-json", metavar="FILE",
                        help="take each image's image_id from this COCO-format file (matched by file name)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                        help="images read per step; those of one padded size share a forward (default 1)")
    parser.add_argument("--confidence-threshold", type=_threshold, default=0.05, metavar="T",
                        help="keep detections scoring at least this (default 0.05)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output and discard a stopped run's side file instead of resuming")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """The image files named by directories, files or globs: de-duplicated, sorted by absolute path.

    An input that names no file (or a directory without images) raises ValueError naming it."""
    paths: dict[str, str] = {}
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            matches = [
                os.path.join(pattern, name) for name in sorted(os.listdir(pattern))
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, name))
            ]
            if not matches:
                raise ValueError(f"--input {pattern!r} is a directory without {'/'.join(IMAGE_EXTENSIONS)} files")
        else:
            matches = [pattern] if os.path.isfile(pattern) else sorted(filter(os.path.isfile, glob.glob(pattern)))
            if not matches:
                raise ValueError(f"--input {pattern!r} matches no file")
        for path in matches:
            paths.setdefault(os.path.abspath(path), os.path.normpath(path))
    return [paths[key] for key in sorted(paths)]


def read_vocabulary_file(path: str) -> list[str]:
    """Category names from a file: one per line (blank lines skipped), or a JSON list of names for a .json file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.lower().endswith(".json"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--vocabulary {path!r} is not valid JSON: {e}") from None
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"--vocabulary {path!r} must hold a JSON list of non-empty names")
    return names


def build_vocabulary(prompt: str | None, vocabulary: str | None, separator: str) -> Vocabulary:
    """The Vocabulary of --prompt or --vocabulary (label names cleaned as FiberPredictor cleans them)."""
    if prompt is not None:
        names = split_prompt(prompt, separator)
        return Vocabulary(prompt, names, list(range(1, len(names) + 1)))
    if vocabulary == "coco":
        categories = [c for c in COCO_CATEGORIES if c["isthing"]]
        raw, ids = [c["name"] for c in categories], [c["id"] for c in categories]
    elif vocabulary == "lvis":  # as detectron2's LVIS v1 metadata: thing_classes are the first synonyms, by id
        categories = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
        raw, ids = [c["synonyms"][0] for c in categories], [c["id"] for c in categories]
    elif os.path.isfile(vocabulary):
        raw = read_vocabulary_file(vocabulary)
        ids = list(range(1, len(raw) + 1))
    else:
        raise ValueError(f"--vocabulary {vocabulary!r} is neither coco, lvis nor an existing file")
    if not raw:
        raise ValueError(f"--vocabulary {vocabulary!r} names no category")
    return Vocabulary(raw, split_prompt(raw, separator), ids)


def coco_image_ids(json_file: str, paths: Sequence[str]) -> list[int]:
    """The `id` of each input in the COCO-format file `json_file`, matched by the last path component of its
    `file_name` (or `coco_url`). Raises ValueError naming the first input it does not list."""
    images = top_level_list(load_json(json_file), "images", json_file)
    ids: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        name = image.get("file_name") or image.get("coco_url") if isinstance(image, dict) else None
        if not isinstance(name, str) or not isinstance(image.get("id"), int) or isinstance(image["id"], bool):
            raise ValueError(f"--coco-json {json_file!r}: images[{index}] needs an integer 'id' and a 'file_name'")
        ids.setdefault(os.path.basename(name.replace("\\", "/")), []).append(image["id"])
    unlisted = [path for path in paths if os.path.basename(path) not in ids]
    if unlisted:
        more = f" (and {len(unlisted) - 1} more inputs)" if len(unlisted) > 1 else ""
        raise ValueError(f"--coco-json {json_file!r} lists no image named {os.path.basename(unlisted[0])!r}: "
                         f"input {unlisted[0]}{more}")
    ambiguous = next((path for path in paths if len(ids[os.path.basename(path)]) > 1), None)
    if ambiguous:
        raise ValueError(f"--coco-json {json_file!r} lists {len(ids[os.path.basename(ambiguous)])} images named "
                         f"{os.path.basename(ambiguous)!r} (input {ambiguous})")
    result = [ids[os.path.basename(path)][0] for path in paths]
    if len(set(result)) < len(result):
        raise ValueError(f"--coco-json {json_file!r} gives two inputs the same id")
    return result


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def run_header(cfg: CfgNode, images: dict[int, str], vocabulary: Vocabulary, threshold: float) -> dict:
    """What identifies a run: the config (and its weights file's size and time), the inputs ({image_id: path}),
    vocabulary and threshold."""
    weights = cfg.MODEL.WEIGHTS
    stat = os.stat(weights) if weights and os.path.isfile(weights) else None
    weights_id = [stat.st_size, stat.st_mtime_ns] if stat else None
    return {
        HEADER_KEY: 1,
        "config_sha256": _sha256([cfg.dump(), weights_id]),
        "inputs_sha256": _sha256([[image_id, os.path.abspath(path)] for image_id, path in images.items()]),
        "vocabulary_sha256": _sha256([vocabulary.names, vocabulary.category_ids]),
        "confidence_threshold": threshold,
        "num_images": len(images),
    }


def header_differences(stored, header: dict) -> list[str]:
    """What differs between a stored run header and `header` (HEADER_FIELDS' labels), or ["run"] if not a header."""
    if not isinstance(stored, dict) or stored.get(HEADER_KEY) != 1:
        return ["run"]
    return [label for key, label in HEADER_FIELDS.items() if stored.get(key) != header[key]]


_DETECTION_KEYS = {"image_id", "file_name", "category_id", "bbox", "score", "category_name"}


def _record_problem(record, images: dict[int, str]) -> str | None:
    """What is wrong with a side-file line's record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an image's record"
    image_id = record.get("image_id")
    if not isinstance(image_id, int) or images.get(image_id) != record.get("file_name"):
        return "names an image that is not among the inputs"
    detections = record.get("detections")
    if not isinstance(detections, list) or not all(
        isinstance(d, dict) and d.keys() == _DETECTION_KEYS and d["image_id"] == image_id for d in detections
    ):
        return "has no valid 'detections' list"
    return None


def load_side_file(path: str, header: dict, images: dict[int, str]) -> dict[int, dict]:
    """The finished images ({image_id: record}) of a stopped run's side file, if it is this run's (else RunConflict).

    A last line cut short (the run was killed while writing it) is dropped; any other bad line (not UTF-8, not JSON,
    not an image's record) is reported with its number and dropped: its image is computed again."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    try:
        stored = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        stored = None
    differs = header_differences(stored, header)
    if differs == ["run"]:
        raise RunConflict(f"{path} is not a side file of {PROG}")
    if differs:
        raise RunConflict(f"{path} is from a different run (different {', '.join(differs)})")
    records: dict[int, dict] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            problem = _record_problem(record, images)
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, without its newline: cut short when the run was stopped
                break
            problem = "not valid JSON"
        if problem:
            _warn(f"{path} line {number}: {problem}; that image is computed again")
            continue
        records[record["image_id"]] = record
    return records


def image_record(image_id: int, file_name: str, output: dict, vocabulary: Vocabulary, threshold: float) -> dict:
    """One image's line of the side file: its COCO-format detections scoring at least `threshold`."""
    instances = output["instances"].to("cpu")
    instances = instances[instances.scores >= threshold]
    detections = []
    for (x0, y0, x1, y1), score, label in zip(
        instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
    ):
        detections.append({
            "image_id": image_id,
            "file_name": file_name,
            "category_id": vocabulary.category_ids[label],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": score,
            "category_name": vocabulary.names[label].strip(),
        })
    return {"image_id": image_id, "file_name": file_name, "detections": detections}


def write_atomic(path: str, write: Callable[[TextIO], None]) -> None:
    """Call `write` on a temporary file next to `path`, sync it, give it mode 0666 less the umask (as `open` would),
    then move it over `path`."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _warn(message: str) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)


def setup_cfg(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CfgNode:
    try:
        cfg = load_fiber_config(args.config_file, args.opts)
    except ConfigError as e:
        parser.error(str(e))
    cfg.freeze()
    return cfg


def run(
    predictor: FiberPredictor,
    images: dict[int, str],
    vocabulary: Vocabulary,
    threshold: float,
    batch_size: int,
    records: dict[int, dict],
    side: TextIO,
) -> list[dict]:
    """Detect in every image ({image_id: path}) not in `records`, `batch_size` images per step; each finished image
    goes into `records` and, flushed, into the `side` file. Returns the unreadable images as
    [{"image_id", "file_name", "reason"}]."""
    pending = [image_id for image_id in images if image_id not in records]
    skipped = []
    with tqdm(total=len(images), initial=len(records), unit="img", file=sys.stderr, desc=PROG) as progress:
        for start in range(0, len(pending), batch_size):
            ids, arrays = [], []
            for image_id in pending[start : start + batch_size]:
                path = images[image_id]
                try:
                    arrays.append(read_image(path, format="BGR"))
                    ids.append(image_id)
                except ImageError as e:
                    reason = str(e).removeprefix(f"{path}: ")
                    _warn(f"skipping {path}: {reason}")
                    skipped.append({"image_id": image_id, "file_name": path, "reason": reason})
            outputs = predictor.predict_batch(arrays, vocabulary.prompt) if arrays else []
            for image_id, output in zip(ids, outputs):
                records[image_id] = image_record(image_id, images[image_id], output, vocabulary, threshold)
                side.write(json.dumps(records[image_id]) + "\n")
            side.flush()
            os.fsync(side.fileno())
            progress.update(len(pending[start : start + batch_size]))
    return skipped


def open_side_file(path: str, header: dict, records: dict[int, dict]) -> TextIO:
    """(Re)start the side file with `header` and the finished `records`, atomically; returns it open for appending."""
    lines = [header] + list(records.values())
    write_atomic(path, lambda f: f.writelines(json.dumps(line) + "\n" for line in lines))
    return open(path, "a", encoding="utf-8")


def finished_run(skipped_path: str) -> dict | None:
    """The run header stored in a finished run's OUTPUT.skipped.json, or None."""
    try:
        with open(skipped_path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report.get("run") if isinstance(report, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = expand_inputs(args.input)
        ids = coco_image_ids(args.coco_json, paths) if args.coco_json else list(range(len(paths)))
    except (OSError, ValueError) as e:
        parser.error(str(e))
    images = dict(zip(ids, paths))
    cfg = setup_cfg(args, parser)
    try:
        vocabulary = build_vocabulary(args.prompt, args.vocabulary, cfg.MODEL.FIBER.PROMPT.SEPARATOR)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    threshold = args.confidence_threshold
    header = run_header(cfg, images, vocabulary, threshold)
    side_path, skipped_path = args.output + ".partial.jsonl", args.output + ".skipped.json"
    records: dict[int, dict] = {}
    if os.path.exists(side_path) and not args.overwrite:
        try:
            records = load_side_file(side_path, header, images)
        except RunConflict as e:
            parser.error(f"{e}; pass --overwrite to discard it, or choose another --output")
    elif os.path.exists(args.output) and not args.overwrite:
        differs = header_differences(finished_run(skipped_path), header)
        if not differs:
            print(f"{PROG}: {args.output} is already done by this command; nothing to do "
                  "(pass --overwrite to run it again)", file=sys.stderr)
            return 0
        parser.error(f"--output {args.output!r} exists from a different run (different {', '.join(differs)}); "
                     "pass --overwrite to replace it")

    if not cfg.MODEL.WEIGHTS:
        _warn("MODEL.WEIGHTS is empty: the model's weights are random")
    try:
        predictor = FiberPredictor(cfg)
        predictor.prompt_chunks(predictor.prompt_names(vocabulary.prompt))
    except PromptError as e:
        parser.error(f"the vocabulary does not fit the model's prompts: {e}")
    except ValueError as e:
        parser.error(str(e))

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if records:
        print(f"{PROG}: resuming: {len(records)} of {len(images)} images done in {side_path}", file=sys.stderr)
    with open_side_file(side_path, header, records) as side:
        try:
            skipped = run(predictor, images, vocabulary, threshold, args.batch_size, records, side)
        except KeyboardInterrupt:
            print(f"\n{PROG}: stopped; {len(records)} images are saved in {side_path}: run the same command "
                  "again to resume", file=sys.stderr)
            return 130
    write_atomic(skipped_path, lambda f: json.dump({"run": header, "skipped": skipped}, f))
    os.remove(side_path)
    if not records:
        if os.path.exists(args.output):  # an earlier run's, which --overwrite discards
            os.remove(args.output)
        print(f"{PROG}: error: none of the {len(images)} inputs could be read (listed in {skipped_path}); "
              f"{args.output} not written", file=sys.stderr)
        return 1
    detections = [detection for image_id in ids if image_id in records
                  for detection in records[image_id]["detections"]]
    write_atomic(args.output, lambda f: json.dump(detections, f))
    print(f"{PROG}: {len(records)} images, {len(detections)} detections -> {args.output}; "
          f"unreadable files skipped: {len(skipped)} (listed in {skipped_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
