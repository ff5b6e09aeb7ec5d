"""`backbone`: FLOPs, latency and training memory of the fused backbone with fusion on, with fusion off (the two
unimodal encoders) and of a METER-style baseline (`meter.MeterBaseline`), at FIBER's image sizes and text lengths."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..modeling.backbone import FiberBackbone, FusionMode
from .common import (
    BenchmarkError,
    Emit,
    available_threads,
    default_device,
    load_config,
    logger,
    non_negative_int,
    parse_positive_ints,
    parse_size,
    parse_sizes,
    positive_int,
    rounded,
    synchronize,
    time_variants,
)
from .flops import count_flops
from .meter import MeterBaseline

HELP = "FLOPs, latency and memory: fused backbone vs METER-style fusion"
DEFAULT_CONFIG = "configs/backbone/FIBER-B.yaml"
DEFAULT_SIZES = "384x384,800x1333"
# FIBER's text lengths: the coarse stage truncates captions to 40 tokens (images 384/576); the fine stage pads every
# query to MAX_QUERY_LEN = 256 (images 800x1333).
COARSE_TEXT_LEN, FINE_TEXT_LEN, COARSE_MAX_SIDE = 40, 256, 576
VARIANTS = ("fusion_on", "fusion_off", "meter")


class BackboneForward(nn.Module):
    """FiberBackbone with a fixed fusion mode: (images, ids, mask) -> (*image features in output order, text)."""

    def __init__(self, backbone: FiberBackbone, fusion: FusionMode | str):
        super().__init__()
        self.backbone = backbone
        self.fusion = FusionMode(fusion)
        self.feature_names = list(backbone.output_shape())

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        features, text = self.backbone(images, input_ids, attention_mask, fusion=self.fusion)
        return (*(features[name] for name in self.feature_names), text)


class LowerForward(nn.Module):
    """The text-independent lower part only: encode_image_lower + encode_text_lower, every tensor they produce."""

    def __init__(self, backbone: FiberBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        image_state = self.backbone.encode_image_lower(images)
        text_state = self.backbone.encode_text_lower(input_ids, attention_mask)
        return (image_state.tokens, *image_state.outputs.values(), text_state.hidden)


def build_backbone(config_file: str, opts: Sequence[str] = ()) -> FiberBackbone:
    """The FiberBackbone of a config (random weights)."""
    return FiberBackbone(load_config(config_file, opts))


def build_variant(backbone: FiberBackbone, name: str) -> nn.Module:
    """"fusion_on" | "fusion_off" | "meter" -> a module taking (images, ids, mask) and returning a tuple of tensors."""
    if name == "meter":
        return MeterBaseline.for_backbone(backbone)
    return BackboneForward(backbone, {"fusion_on": FusionMode.ON, "fusion_off": FusionMode.OFF}[name])


def default_text_len(size: tuple[int, int]) -> int:
    """40 tokens (coarse stage) for images whose longer side is at most 576, else 256 (fine stage)."""
    return COARSE_TEXT_LEN if max(size) <= COARSE_MAX_SIDE else FINE_TEXT_LEN


def make_inputs(size: tuple[int, int], text_len: int, batch: int, vocab_size: int, divisor: int,
                device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random normalised images [B, 3, H, W] padded (zeros, right/bottom) to a multiple of `divisor` as Detectron2
    batches them; random token ids [B, T] with a full attention mask (the fine stage pads queries to 256: same
    compute)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = (-(-side // divisor) * divisor for side in size)
    images = torch.zeros(batch, 3, height, width)
    images[:, :, : size[0], : size[1]] = torch.randn(batch, 3, *size, generator=generator)
    input_ids = torch.randint(3, vocab_size, (batch, text_len), generator=generator)
    attention_mask = torch.ones(batch, text_len, dtype=torch.long)
    return images.to(device), input_ids.to(device), attention_mask.to(device)


def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux /proc; falls back to the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return peak_rss_kib()


def peak_rss_kib() -> int:
    """ru_maxrss of this process in KiB (Linux reports KiB; macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def train_step_memory(config_file: str, opts: Sequence[str], variant: str, size: tuple[int, int], text_len: int,
                      batch: int, device: str, seed: int) -> dict[str, Any]:
    """Build one variant, run one forward + backward in train mode; its memory (run it in a fresh process:
    ru_maxrss is a per-process high-water mark). KiB for RSS, bytes for CUDA."""
    torch.manual_seed(seed)
    torch.set_num_threads(available_threads())
    device = torch.device(device)
    backbone = build_backbone(config_file, opts)
    model = build_variant(backbone, variant).to(device).train()
    inputs = make_inputs(size, text_len, batch, backbone.text.model.config.vocab_size, backbone.size_divisibility,
                         device, seed=seed)
    synchronize(device)
    result: dict[str, Any] = {"variant": variant, "rss_after_build_kib": current_rss_kib(),
                              "peak_rss_before_kib": peak_rss_kib()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_allocated_before_bytes"] = torch.cuda.memory_allocated(device)
    loss = sum(output.float().mean() for output in model(*inputs))
    loss.backward()
    synchronize(device)
    result["peak_rss_kib"] = peak_rss_kib()
    result["rss_growth_kib"] = result["peak_rss_kib"] - result["rss_after_build_kib"]
    if device.type == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_growth_bytes"] = result["cuda_peak_allocated_bytes"] - result["cuda_allocated_before_bytes"]
    return result


def memory_in_fresh_process(*args) -> dict[str, Any]:
    """`train_step_memory(*args)` in a new interpreter (spawned), so that its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(train_step_memory, *args).result()
    if result["peak_rss_kib"] <= result["peak_rss_before_kib"]:
        logger.warning("memory %s: the forward+backward never exceeded the RSS peak reached while building, so its "
                       "RSS growth is a lower bound", result["variant"])
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `backbone`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"backbone config (default {DEFAULT_CONFIG})")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help=f"comma-separated HEIGHTxWIDTH image sizes (default {DEFAULT_SIZES}); padded to a "
                             "multiple of 32 like Detectron2 batches")
    parser.add_argument("--text-len", type=parse_positive_ints, default=None,
                        help=f"text tokens per size, comma-separated, or one value for all sizes (default: "
                             f"{COARSE_TEXT_LEN}, the coarse stage's max text length, for sizes whose longer side is "
                             f"<= {COARSE_MAX_SIDE}; else {FINE_TEXT_LEN}, the fine stage's padded query length)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size for FLOPs and latency (default 1)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed forwards per variant and size (default 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed forwards per variant and size (default 1)")
    parser.add_argument("--device", default=default_device(), choices=["cpu", "cuda"],
                        help="default: cuda when available")
    parser.add_argument("--skip-flops", action="store_true", help="no FLOP rows")
    parser.add_argument("--skip-latency", action="store_true", help="no latency rows")
    parser.add_argument("--skip-memory", action="store_true", help="no memory row")
    parser.add_argument("--memory-size", type=parse_size, default=(384, 384), help="memory row image size (384x384)")
    parser.add_argument("--memory-batch", type=positive_int, default=2, help="memory row batch size (default 2)")
    parser.add_argument("--memory-text-len", type=positive_int, default=None,
                        help="memory row text length (default: the --text-len rule for --memory-size)")
    parser.add_argument("--memory-jobs", type=positive_int, default=1,
                        help="memory processes run at once (default 1; each measures only itself, but together they "
                             "need that many times the host or GPU memory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (must come last)")


def flops_row(variants: dict[str, nn.Module], backbone: FiberBackbone, inputs: tuple, common: dict) -> dict:
    """The `flops` row of one size: GFLOPs per variant and of the lower part, and the cost of fusion."""
    counts = {}
    for name, model in [*variants.items(), ("lower", LowerForward(backbone))]:
        logger.info("%s: counting FLOPs of %s", common["size"], name)
        counts[name] = count_flops(model, inputs)
    on, off, meter = (counts[name]["total"] for name in VARIANTS)
    unsupported = Counter()
    for count in counts.values():
        unsupported.update(count["unsupported"])
    return {
        **common, "metric": "flops", "unit": "GFLOPs (1 multiply-add = 1 flop, fvcore)",
        "fusion_on": gflops(on), "fusion_off": gflops(off), "meter": gflops(meter),
        "lower": gflops(counts["lower"]["total"]),
        "fusion_fiber": gflops(on - off), "fusion_meter": gflops(meter - off),
        "fusion_ratio_fiber_over_meter": rounded((on - off) / (meter - off)),
        "total_ratio_fiber_over_meter": rounded(on / meter),
        "lower_share_of_fusion_on": rounded(counts["lower"]["total"] / on),
        "attention_sdpa": {name: gflops(count["sdpa"]) for name, count in counts.items()},
        "unsupported_ops": sorted(unsupported),
    }


def latency_row(times: dict[str, list[float]], common: dict, threads: int, args: argparse.Namespace) -> dict:
    """The `latency` row of one size: median and fastest ms per variant, and their ratios."""
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    row = {**common, "metric": "latency", "unit": "ms", "threads": threads, "repeats": args.repeats,
           "warmup": args.warmup,
           **{f"{name}_median": rounded(1e3 * median[name], 2) for name in times},
           **{f"{name}_min": rounded(1e3 * fastest[name], 2) for name in times}}
    for prefix, values in (("", median), ("min_", fastest)):
        row[f"{prefix}ratio_fusion_on_over_off"] = rounded(values["fusion_on"] / values["fusion_off"])
        row[f"{prefix}ratio_meter_over_off"] = rounded(values["meter"] / values["fusion_off"])
        row[f"{prefix}ratio_fusion_on_over_meter"] = rounded(values["fusion_on"] / values["meter"])
    return row


def memory_row(args: argparse.Namespace, model_name: str, divisor: int, device: torch.device) -> dict:
    """The `memory` row: one forward+backward of each variant in fresh processes."""
    text_len = args.memory_text_len or default_text_len(args.memory_size)
    logger.info("memory: one forward+backward of each of %s in fresh processes (%d at a time)", ", ".join(VARIANTS),
                args.memory_jobs)
    job = (args.config_file, list(args.opts))
    rest = (args.memory_size, text_len, args.memory_batch, device.type, args.seed)
    with ThreadPoolExecutor(max_workers=args.memory_jobs) as pool:
        results = dict(zip(VARIANTS, pool.map(lambda variant: memory_in_fresh_process(*job, variant, *rest),
                                              VARIANTS)))
    if device.type == "cuda":
        measure, key, scale = "torch.cuda.max_memory_allocated growth", "cuda_growth_bytes", 2**20
    else:
        measure, key, scale = "ru_maxrss growth over RSS after build (fresh process)", "rss_growth_kib", 2**10
    peak = {variant: result[key] / scale for variant, result in results.items()}
    return {
        "bench": "backbone", "model": model_name, "size": "x".join(map(str, args.memory_size)),
        "input_size": "x".join(str(-(-side // divisor) * divisor) for side in args.memory_size),
        "text_len": text_len, "batch": args.memory_batch, "device": device.type, "metric": "memory",
        "mode": "train, one forward+backward, loss = sum of output means", "measure": measure, "unit": "MiB",
        **{variant: rounded(value, 1) for variant, value in peak.items()},
        "ratio_fusion_on_over_meter": rounded(peak["fusion_on"] / peak["meter"]),
        "ratio_fusion_on_over_off": rounded(peak["fusion_on"] / peak["fusion_off"]),
        "rss_after_build_mib": {
            variant: rounded(result["rss_after_build_kib"] / 2**10, 1) for variant, result in results.items()
        },
    }


def gflops(flops: float) -> float:
    """Flops -> GFLOPs, 3 decimals."""
    return round(flops / 1e9, 3)


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One `flops` and one `latency` row per size, then one `memory` row."""
    torch.manual_seed(args.seed)
    threads = available_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    model_name = Path(args.config_file).stem
    text_lens = args.text_len or [default_text_len(size) for size in args.sizes]
    if len(text_lens) == 1:
        text_lens = text_lens * len(args.sizes)
    if len(text_lens) != len(args.sizes):
        raise BenchmarkError(f"--text-len gives {len(text_lens)} values for {len(args.sizes)} sizes (give 1 or 1 per "
                             "size)")
    logger.info("building %s (random init) on %s, %d threads", model_name, device, threads)
    backbone = build_backbone(args.config_file, args.opts).to(device).eval()
    variants = {name: build_variant(backbone, name).to(device).eval() for name in VARIANTS}
    vocab = backbone.text.model.config.vocab_size
    for size, text_len in zip(args.sizes, text_lens):
        inputs = make_inputs(size, text_len, args.batch, vocab, backbone.size_divisibility, device, seed=args.seed)
        common = {"bench": "backbone", "model": model_name, "size": f"{size[0]}x{size[1]}",
                  "input_size": f"{inputs[0].shape[-2]}x{inputs[0].shape[-1]}", "text_len": text_len,
                  "batch": args.batch, "device": device.type}
        if not args.skip_flops:
            emit(flops_row(variants, backbone, inputs, common))
        if not args.skip_latency:
            logger.info("%s: timing %d warmup + %d repeats per variant", common["size"], args.warmup, args.repeats)
            times = time_variants(variants, inputs, args.repeats, args.warmup, device)
            emit(latency_row(times, common, threads, args))
        del inputs
    if not args.skip_memory:
        emit(memory_row(args, model_name, backbone.size_divisibility, device))
