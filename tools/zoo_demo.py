#!/usr/bin/env python
"""`make demo`: the FIBER-Shapes model zoo (MODEL_ZOO.md) evaluated on its held-out test sets, and drawn.

For every model in fiber_d2/model_zoo/manifest.json: its config, its weights (sha256 checked), evaluated on the
config's test sets by train_net.py's own Trainer.test and evaluators (with test-time augmentation alone where the
config enables it: TEST.AUG). One Markdown table of the headline metrics is
printed and written to OUTPUT/results.md ({config: {dataset: {task: {metric}}}} to OUTPUT/results.json). The grounding
detector then draws a few validation images three ways: all category names, the phrases of a caption (found
automatically, as GLIP's demo does) and a referring expression (its best box), as OUTPUT/*.png; the image-level
models show their answers and captions for a few validation images next to the truth.

    python tools/zoo_demo.py --output output/demo [--models fiber_shapes/zoo/grounding.yaml ...] [--pictures 4]
    python tools/zoo_demo.py --record        # (building the zoo) store the metrics in the manifest for MODEL_ZOO.md
    python tools/zoo_demo.py --compare output/demo_train/results.json   # a results.json next to the zoo detector's

The metrics each zoo model was published with are in the manifest ("metrics"); the demo says whether its own
evaluation gives the same numbers (to the 0.1 the table shows).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

PROG = "zoo_demo.py"
# task -> the metrics the table shows, with their labels
HEADLINES = {
    "bbox": (("AP50", "AP50"), ("AP", "AP")),
    "grounding": (("R@1", "R@1"),),
    "refexp": (("P@1", "P@1"),),
    "retrieval": (
        ("tr_R@1", "image-to-text R@1"), ("ir_R@1", "text-to-image R@1"),
        ("itc_tr_R@1", "image-to-text R@1, dual encoder alone"), ("itc_ir_R@1", "text-to-image R@1, dual encoder alone"),
    ),
    "vqa": (("accuracy", "accuracy"),),
    "caption": (("CIDEr", "CIDEr-D x100"), ("pairs_all_present", "% captions naming only present pairs")),
}
# metrics shown (and compared) scaled: CIDEr-D on the scale papers print (coco-caption's x 100)
SCALES = {"CIDEr": 100.0}
PICTURE_THRESHOLD = 0.3  # detections drawn: those scoring at least this (names and caption pictures)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=formatter)
    parser.add_argument("--output", default="output/demo",
                        help="directory for results and pictures (default: %(default)s)")
    parser.add_argument("--models", nargs="+", metavar="CONFIG",
                        help="zoo configs (relative to configs/) to run (default: every model in the zoo)")
    parser.add_argument("--num-processes", type=int, default=min(2, os.cpu_count() or 1), metavar="P",
                        help="evaluation processes, each with its share of the test sets (default: %(default)s)")
    parser.add_argument("--pictures", type=int, default=3, metavar="N",
                        help="validation images drawn each way by the grounding detector, and whose answers and "
                             "captions the image-level models show (default: %(default)s)")
    parser.add_argument("--record", action="store_true",
                        help="store the headline metrics in fiber_d2/model_zoo/manifest.json (building the zoo)")
    parser.add_argument("--compare", metavar="RESULTS_JSON",
                        help="only print this train_net.py results.json next to the zoo detector's recorded metrics")
    return parser.parse_args(argv)


def headline_rows(config: str, results: dict) -> list[tuple[str, str, str, float]]:
    """(config, test set, metric label, value) for the headline metrics of one model's
    {dataset: {task: {metric: value}}} results."""
    rows = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            for metric, label in HEADLINES.get(task, ()):
                if metric in metrics:
                    rows.append((config, dataset, label, _scaled(metric, metrics[metric])))
    return rows


def _scaled(metric: str, value: float) -> float:
    return float(value) * SCALES.get(metric, 1.0)


def headline_metrics(results: dict) -> dict:
    """The headline metrics of {dataset: {task: {metric: value}}} results, in the same layout (values as they are, so
    that tables of recorded and of new results round them alike)."""
    kept: dict = {}
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            for metric, _ in HEADLINES.get(task, ()):
                if metric in metrics:
                    kept.setdefault(dataset, {}).setdefault(task, {})[metric] = float(metrics[metric])
    return kept


def differences(results: dict, recorded: dict) -> list[str]:
    """Headline metrics of `results` that differ from `recorded` at the table's precision (0.1, after SCALES)."""
    found = headline_metrics(results)
    out = []
    for dataset, tasks in recorded.items():
        for task, metrics in tasks.items():
            for metric, value in metrics.items():
                got = found.get(dataset, {}).get(task, {}).get(metric)
                if got is None or f"{_scaled(metric, got):.1f}" != f"{_scaled(metric, value):.1f}":
                    out.append(f"{dataset} {task} {metric}: {got} here, {value} recorded")
    return out


def comparison_table(results: dict, recorded: dict, label: str) -> str:
    """A train_net.py results.json's headline metrics next to the zoo's recorded ones, row by row."""
    lines = [f"| test set | metric | {label} | model zoo |", "|---|---|---|---|"]
    for dataset, tasks in recorded.items():
        for task, metrics in tasks.items():
            for metric, label_ in HEADLINES.get(task, ()):
                if metric in metrics:
                    got = results.get(dataset, {}).get(task, {}).get(metric)
                    shown = "-" if got is None else f"{_scaled(metric, got):.1f}"
                    lines.append(f"| {dataset} | {label_} | {shown} | {_scaled(metric, metrics[metric]):.1f} |")
    return "\n".join(lines)


def markdown_table(rows: list[tuple[str, str, str, float]]) -> str:
    lines = ["| model (config) | test set | metric | value |", "|---|---|---|---|"]
    lines += [f"| {config} | {dataset} | {label} | {value:.1f} |" for config, dataset, label, value in rows]
    return "\n".join(lines)


def _stem(config: str) -> str:
    """The folder, under the demo's output, of the model trained with `config`."""
    return os.path.splitext(os.path.basename(config))[0]


def evaluate(config: str, output_dir: str) -> dict:
    """{dataset: {task: {metric: value}}} of the zoo model trained with `config`, on the config's test sets."""
    from fiber_d2 import model_zoo
    from fiber_d2.checkpoint import FiberCheckpointer
    from fiber_d2.engine.trainer import Trainer

    cfg = model_zoo.get_config(config, trained=True)
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    model = Trainer.build_model(cfg)
    FiberCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    if cfg.TEST.AUG.ENABLED:  # the model as its config evaluates it: with test-time augmentation ("<dataset>_TTA");
        return Trainer.test_with_TTA(cfg, model)  # train_net.py --eval-only gives the single view as well
    return Trainer.test(cfg, model)


def evaluate_all(configs: list[str], output: str, results_file: str, threads: int) -> None:
    """One evaluation process: every config evaluated (each process takes its share of each test set; the
    evaluators gather); the main process writes {config: results} to `results_file`."""
    import torch
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    import fiber_d2  # noqa: F401  (registers fiber_d2's models and datasets in this process)
    from fiber_d2.engine.allocator import keep_freed_cpu_memory

    torch.set_num_threads(threads)
    keep_freed_cpu_memory()  # KEEP_FREED_CPU_MEMORY's default, for every config evaluated here
    setup_logger(os.path.join(output, "log.txt"), distributed_rank=comm.get_rank(), name="fiber_d2",
                 abbrev_name="fiber_d2")
    results = {}
    for config in configs:
        start = time.perf_counter()
        results[config] = evaluate(config, os.path.join(output, _stem(config)))
        if comm.is_main_process():
            print(f"== {PROG}: {config} evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    if comm.is_main_process():
        with open(results_file, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


def draw_pictures(config: str, output_dir: str, count: int) -> list[str]:
    """Draws `count` validation images each way (names, caption, referring expression) with the detector of
    `config`; returns the files written."""
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.catalog import Metadata

    from fiber_d2 import model_zoo
    from fiber_d2.data.image_io import read_image
    from fiber_d2.engine.predictor import FiberPredictor
    from fiber_d2.engine.visualizer import LabelFittingVisualizer

    predictor = FiberPredictor(model_zoo.get_config(config, trained=True))
    names = MetadataCatalog.get("fiber_shapes_colorshape_val").thing_classes
    captions = DatasetCatalog.get("fiber_shapes_flickr_val")
    expressions = DatasetCatalog.get("fiber_shapes_refexp_val")
    written = []

    def save(record: dict, output: dict, kind: str, title: str) -> None:
        image = read_image(record["file_name"], format="BGR")
        metadata = Metadata(name=kind, thing_classes=output["label_names"])
        drawn = LabelFittingVisualizer(image[:, :, ::-1], metadata).draw_instance_predictions(output["instances"])
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, f"{kind}_{stem}.png")
        cv2.imwrite(path, drawn.get_image()[:, :, ::-1])
        written.append(path)
        print(f"{path}: {title} -> {', '.join(output['text_labels']) or 'nothing'}")

    # one record per image: the first caption and the first expression of each validation image
    first_caption = {r["file_name"]: r for r in reversed(captions)}
    first_expression = {r["file_name"]: r for r in reversed(expressions)}
    files = sorted(first_caption)[:count]
    for file_name in files:
        image = read_image(file_name, format="BGR")
        output = predictor(image, names, score_threshold=PICTURE_THRESHOLD, one_label_per_box=True)
        save({"file_name": file_name}, output, "names", f"the {len(names)} category names")
        record = first_caption[file_name]
        output = predictor.ground(image, record["caption"], score_threshold=PICTURE_THRESHOLD, one_label_per_box=True)
        save(record, output, "caption", repr(record["caption"]))
        record = first_expression[file_name]
        output = predictor.ground(image, record["caption"], [[0, len(record["caption"])]])
        output["instances"] = output["instances"][:1]  # a referring expression names one object: its best box
        output["text_labels"] = output["text_labels"][:1]
        save(record, output, "refexp", repr(record["caption"]))
    return written


def example_lines(config: str, output_dir: str, count: int) -> list[str]:
    """A few answers and captions of the image-level model of `config`, next to the truth, read from the predictions
    its evaluators wrote under `output_dir` (VQA: each question of the first `count` images; captioning: the first
    `count` images' captions and their first reference); those of test-time augmentation where the config has it."""
    from collections import Counter

    from detectron2.data import DatasetCatalog

    from fiber_d2 import model_zoo

    lines = []
    cfg = model_zoo.get_config(config)
    for dataset in cfg.DATASETS.TEST:
        folder = os.path.join(output_dir, "inference_TTA" if cfg.TEST.AUG.ENABLED else "inference", dataset)
        records = sorted(DatasetCatalog.get(dataset), key=lambda r: (r["image_id"], r.get("question_id", 0)))
        shown = sorted({r["image_id"] for r in records})[:count]
        if os.path.isfile(os.path.join(folder, "vqa_predictions.json")):
            with open(os.path.join(folder, "vqa_predictions.json"), encoding="utf-8") as f:
                answers = {p["question_id"]: p["answer"] for p in json.load(f)}
            for r in records:
                if r["image_id"] in shown and r["question_id"] in answers:
                    truth = Counter(r["answers"]).most_common(1)[0][0]
                    lines.append(f"{os.path.basename(r['file_name'])}: {r['question']} -> {answers[r['question_id']]}"
                                 f" (answer: {truth})")
        if os.path.isfile(os.path.join(folder, "caption_predictions.json")):
            with open(os.path.join(folder, "caption_predictions.json"), encoding="utf-8") as f:
                captions = {p["image_id"]: p["caption"] for p in json.load(f)}
            for r in records:
                if r["image_id"] in shown and r["image_id"] in captions:
                    lines.append(f"{os.path.basename(r['file_name'])}: {captions[r['image_id']]!r}"
                                 f" (a reference: {r['captions'][0]!r})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
    import fiber_d2  # noqa: F401  (registers fiber_d2's models and datasets)
    from fiber_d2 import model_zoo
    from fiber_d2.engine import launch

    zoo = model_zoo.list_models()
    if args.compare:
        detectors = [c for c in sorted(zoo) if model_zoo.get_config(c).INPUT.DATASET_MAPPER_NAME == "grounding"]
        if not detectors or "metrics" not in zoo[detectors[0]]:
            sys.exit(f"{PROG}: error: the model zoo has no grounding detector with recorded metrics")
        with open(args.compare, encoding="utf-8") as f:
            run = json.load(f)
        print(f"\n== {PROG}: {args.compare} next to the zoo's {detectors[0]}\n")
        print(comparison_table(run, zoo[detectors[0]]["metrics"], "this run") + "\n")
        return 0
    configs = args.models or sorted(zoo)
    unknown = [config for config in configs if config not in zoo]
    if not zoo or unknown:
        sys.exit(f"{PROG}: error: the model zoo has no weights for {unknown or 'any config'}; it has: {sorted(zoo)}")
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    results_file = os.path.join(args.output, "results.json")
    if os.path.exists(results_file):
        os.remove(results_file)
    processes = max(1, args.num_processes)
    threads = max(1, (os.cpu_count() or 1) // processes)
    launch(evaluate_all, processes, args=(configs, args.output, results_file, threads))
    with open(results_file, encoding="utf-8") as f:
        results = json.load(f)
    rows = [row for config in configs for row in headline_rows(config, results[config])]
    for config in configs:
        if model_zoo.get_config(config).INPUT.DATASET_MAPPER_NAME == "grounding" and args.pictures > 0:
            draw_pictures(config, args.output, args.pictures)
        elif args.pictures > 0:
            for line in example_lines(config, os.path.join(args.output, _stem(config)), args.pictures):
                print(f"{config}: {line}")
    table = markdown_table(rows)
    mismatches = [f"{config}: {line}" for config in configs if "metrics" in zoo[config]
                  for line in differences(results[config], zoo[config]["metrics"])]
    if args.record:
        model_zoo.record_metrics({config: headline_metrics(results[config]) for config in configs})
    with open(os.path.join(args.output, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(f"\n== {PROG}: the FIBER-Shapes model zoo (MODEL_ZOO.md), {time.perf_counter() - start:.0f} s\n\n{table}\n")
    if args.record:
        print(f"== {PROG}: metrics recorded in the manifest")
    elif mismatches:
        print(f"== {PROG}: {len(mismatches)} numbers differ from MODEL_ZOO.md's:\n  " + "\n  ".join(mismatches))
        return 1
    else:
        print(f"== {PROG}: every number equals the one MODEL_ZOO.md gives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
