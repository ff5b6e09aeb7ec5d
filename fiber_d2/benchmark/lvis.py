"""`lvis`: one image's detection over the 1203 LVIS names in prompt chunks: the whole detector per chunk (naive),
the detector reusing the text-independent lower backbone (ours, MODEL.FIBER.PROMPT.REUSE_LOWER), and the floor (the
image's lower part once plus the fused upper part, FPN and head per chunk, each timed alone)."""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from detectron2.modeling import build_model

from ..data.prompts import vocabulary_chunks
from ..data.tokenizer import load_tokenizer
from .common import (
    Emit,
    add_run_options,
    load_config,
    logger,
    non_negative_int,
    parse_size,
    positive_int,
    rounded,
    set_threads,
    timed_call,
)
from .vocabularies import lvis_names, names_tokenizer

HELP = "LVIS prompt chunks: detector per chunk vs lower part reused vs floor"
DEFAULT_CONFIG = "configs/fiber_b/lvis_minival_zeroshot.yaml"
CHUNK_PARTS = ("text_lower", "upper", "fpn", "head")  # timed per chunk; the floor sums all but text_lower


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `lvis`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"detector config (default {DEFAULT_CONFIG}); "
                        "random weights (MODEL.WEIGHTS is not loaded)")
    parser.add_argument("--size", type=parse_size, default=(800, 1333), help="image HEIGHTxWIDTH (default 800x1333)")
    parser.add_argument("--chunk-size", type=positive_int, default=40, help="LVIS names per prompt (default 40)")
    parser.add_argument("--num-chunks", type=non_negative_int, default=0,
                        help="time only the first N chunks (default 0: all)")
    parser.add_argument("--chunk-batch", type=non_negative_int, default=0,
                        help="chunks per forward of the upper part (default 0: MODEL.FIBER.PROMPT.CHUNK_BATCH)")
    parser.add_argument("--names-tokenizer", action="store_true",
                        help="tokenize with a BPE trained on the LVIS names even if MODEL.FIBER.TOKENIZER exists (the "
                             "fallback when it does not)")
    add_run_options(parser, "of every variant and part", "image")


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One row per chunk (its parts of the floor) and one summary row: naive, ours and floor in ms, their ratios."""
    torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config_file, args.opts, args.device)
    if args.chunk_batch:
        cfg.MODEL.FIBER.PROMPT.CHUNK_BATCH = args.chunk_batch
    names = lvis_names()
    with tempfile.TemporaryDirectory() as workdir:
        directory, tokenizer_name = names_tokenizer(cfg, names, args.names_tokenizer, workdir, "LVIS")
        tokenizer = load_tokenizer(directory)
        chunks = vocabulary_chunks(names, tokenizer, cfg.MODEL.FIBER.MAX_QUERY_LEN, args.chunk_size,
                                   cfg.MODEL.FIBER.PROMPT.SEPARATOR)
    all_chunks = len(chunks)
    chunks = chunks[: args.num_chunks or None]
    # Steady state over a dataset: every chunk's text state stays cached.
    cfg.MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE = max(cfg.MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE, len(chunks))
    logger.info("building %s (random init) on %s; %d of %d chunks, %d threads", args.config_file, device,
                len(chunks), all_chunks, threads)
    model = build_model(cfg).eval()
    bottom_up = model.backbone.bottom_up
    height, width = args.size
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    inputs = [{"image": image, "height": height, "width": width, "prompts": chunks}]
    images = model.preprocess_image(inputs).tensor
    times: dict[str, list[float]] = {}

    def timed(name: str, record: bool, function, *function_args):
        output, seconds = timed_call(device, function, *function_args)
        if record:
            times.setdefault(name, []).append(seconds)
        return output

    def run_detector(reuse_lower: bool):
        model.reuse_lower = reuse_lower
        return model.inference(inputs)

    with torch.inference_mode():
        for chunk in chunks:  # fill the text cache, as the first image of a dataset does
            model.text_lower(chunk.input_ids)
        for repeat in range(args.warmup + args.repeats):
            record = repeat >= args.warmup
            logger.info("%s %d/%d", "repeat" if record else "warmup", repeat + 1 - args.warmup * record,
                        args.repeats if record else args.warmup)
            timed("naive", record, run_detector, False)
            timed("ours", record, run_detector, True)
            image_state = timed("image_lower", record, bottom_up.encode_image_lower, images)
            for index, chunk in enumerate(chunks):
                ids = chunk.input_ids.to(device).unsqueeze(0)
                mask = torch.ones_like(ids)
                text_state = timed(f"text_lower/{index}", record, bottom_up.encode_text_lower, ids, mask)
                features, text = timed(f"upper/{index}", record, bottom_up.encode_upper, image_state, text_state)
                pyramid = timed(f"fpn/{index}", record, model.backbone.pyramid, features)
                timed(f"head/{index}", record, model.predict, pyramid, text, mask.bool())

    ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    parts = {part: [ms[f"{part}/{index}"] for index in range(len(chunks))] for part in CHUNK_PARTS}
    common = {"bench": "lvis", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "input_size": f"{images.shape[-2]}x{images.shape[-1]}", "device": device.type,
              "threads": threads, "repeats": args.repeats}
    for index, chunk in enumerate(chunks):
        chunk_ms = {f"{part}_ms": rounded(values[index], 2) for part, values in parts.items()}
        emit({**common, "metric": "chunk", "chunk": index, "names": len(chunk.label_ids),
              "tokens": len(chunk.input_ids), **chunk_ms})
    floor = ms["image_lower"] + sum(parts["upper"]) + sum(parts["fpn"]) + sum(parts["head"])
    tokens = [len(chunk.input_ids) for chunk in chunks]
    emit({
        **common, "metric": "latency", "unit": "ms", "warmup": args.warmup, "tokenizer": tokenizer_name,
        "chunk_size": args.chunk_size, "chunk_batch": model.chunk_batch, "num_chunks": len(chunks),
        "all_chunks": all_chunks, "names": sum(len(chunk.label_ids) for chunk in chunks),
        "tokens_min": min(tokens), "tokens_mean": rounded(statistics.mean(tokens), 1), "tokens_max": max(tokens),
        "naive_ms": rounded(ms["naive"], 2), "ours_ms": rounded(ms["ours"], 2), "floor_ms": rounded(floor, 2),
        "image_lower_ms": rounded(ms["image_lower"], 2),
        **{f"{part}_ms": rounded(sum(values), 2) for part, values in parts.items()},
        "ours_over_floor": rounded(ms["ours"] / floor), "naive_over_ours": rounded(ms["naive"] / ms["ours"]),
    })
