"""`throughput`: images/s of `FiberPredictor.predict_batch` (resize, preprocessing, model, postprocessing) on
same-size random images in batches of each size given, and each rate over the first batch size's."""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from .common import (
    Emit,
    add_run_options,
    load_config,
    logger,
    parse_positive_ints,
    parse_size,
    positive_int,
    rounded,
    set_threads,
    timed_call,
)
from .vocabularies import shapes_predictor

HELP = "images/s of the predictor in batches of 1 vs 4 (tiny model)"
DEFAULT_CONFIG = "configs/fiber_shapes/fiber_tiny_grounding.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `throughput`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"detector config (default {DEFAULT_CONFIG}); "
                        "random weights (MODEL.WEIGHTS is not loaded)")
    parser.add_argument("--size", type=parse_size, default=(256, 320),
                        help="image HEIGHTxWIDTH before the predictor's resize (default 256x320)")
    parser.add_argument("--images", type=positive_int, default=16, help="images per timed run (default 16)")
    parser.add_argument("--batch-sizes", type=parse_positive_ints, default=[1, 4],
                        help="comma-separated batch sizes; ratios are over the first (default 1,4)")
    parser.add_argument("--names-tokenizer", action="store_true",
                        help="tokenize with a BPE trained on the 48 names even if MODEL.FIBER.TOKENIZER exists (the "
                             "fallback when it does not)")
    add_run_options(parser, "per batch size", "images")


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One row per batch size (images/s over `--images` images in batches of that size) and one summary row with
    every batch size's rate over the first one's."""
    torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config_file, args.opts, args.device)
    predictor, names, tokenizer_name = shapes_predictor(cfg, args.names_tokenizer)
    chunks = predictor.prompt_chunks(names)
    height, width = args.size
    generator = np.random.default_rng(args.seed)
    images = [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    resized = predictor.resize.get_transform(images[0]).apply_image(images[0]).shape[:2]
    input_size = predictor.padded_size(*resized)
    logger.info("%s (random init) on %s, %d threads: %d images %dx%d (model input %dx%d), prompt of %d names in %d "
                "chunk(s), batch sizes %s", args.config_file, device, threads, args.images, height, width,
                *input_size, len(names), len(chunks), args.batch_sizes)

    def run_all(batch_size: int) -> None:
        for start in range(0, len(images), batch_size):
            predictor.predict_batch(images[start : start + batch_size], names)

    times: dict[int, list[float]] = {batch_size: [] for batch_size in args.batch_sizes}
    for repeat in range(args.warmup + args.repeats):
        for batch_size in args.batch_sizes:
            seconds = timed_call(device, run_all, batch_size)[1]
            if repeat >= args.warmup:
                times[batch_size].append(seconds)
                logger.info("  batch %d, repeat %d/%d: %.1f images/s", batch_size, repeat + 1 - args.warmup,
                            args.repeats, len(images) / seconds)
    rate = {batch_size: len(images) / statistics.median(values) for batch_size, values in times.items()}
    common = {"bench": "throughput", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "input_size": "x".join(map(str, input_size)), "device": device.type, "threads": threads,
              "repeats": args.repeats, "images": len(images), "names": len(names), "chunks": len(chunks),
              "tokens": sum(len(chunk.input_ids) for chunk in chunks)}
    for batch_size in args.batch_sizes:
        emit({**common, "metric": "batch", "batch_size": batch_size, "forwards": -(-len(images) // batch_size),
              "seconds": rounded(statistics.median(times[batch_size])), "images_per_s": rounded(rate[batch_size]),
              "ms_per_image": rounded(1e3 / rate[batch_size], 2)})
    first = args.batch_sizes[0]
    emit({**common, "metric": "summary", "tokenizer": tokenizer_name,
          "images_per_s": {str(batch_size): rounded(value) for batch_size, value in rate.items()},
          **{f"ratio_batch{batch_size}_over_batch{first}": rounded(rate[batch_size] / rate[first])
             for batch_size in args.batch_sizes[1:]}})
