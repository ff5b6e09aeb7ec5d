#!/usr/bin/env python
"""fiber_d2 benchmarks: one subcommand per benchmark, each printing one JSON object per line on stdout (logs: stderr).

    python tools/benchmark.py backbone          # FIBER-B at 384x384 (text 40) and 800x1333 (text 256)
    python tools/benchmark.py backbone --sizes 384x384 --skip-memory --repeats 5
    python tools/benchmark.py backbone --config-file configs/backbone/FIBER-tiny.yaml --sizes 64x96 --text-len 12 \\
        --memory-size 64x96 --repeats 1 --warmup 0
    python tools/benchmark.py dcn               # the DyHead's 3x3 DCNv2 at P3-P7 of 800x1333, 256 channels
    python tools/benchmark.py lvis --num-chunks 3 --repeats 1   # FIBER-B at 800x1333, LVIS names in chunks of 40
    python tools/benchmark.py throughput        # FIBER-tiny grounding detector: images/s in batches of 1 and 4

`backbone` measures the fused backbone (random weights: FLOPs, time and memory do not depend on them) with fusion on,
fusion off (the two unimodal encoders) and a METER-style baseline built here (the unfused backbone plus K = 6
co-attention layers per stream on top). `dcn` times one modulated deformable 3x3 convolution (random offsets and
masks) three ways at each FPN level's shape, forward and forward+backward: a plain 3x3 convolution (the floor),
torchvision's `deform_conv2d`, and fiber_d2's `deform_conv_sampled` (what the DyHead uses on CPU). `lvis` times one
image's detection over the 1203 LVIS names in prompt chunks: the whole detector per chunk (naive), the detector
reusing the text-independent lower backbone (ours, MODEL.FIBER.PROMPT.REUSE_LOWER), and the floor (the image lower
part once plus the fused upper part, FPN and head per chunk, each timed alone). `throughput` times
`FiberPredictor.predict_batch` on same-size images in batches of 1 and of 4 (images/s). Rows and their fields are
described in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing fiber_d2
    sys.path.insert(0, str(REPO))

from fiber_d2.modeling.backbone.attention import multi_head_attention, padding_bias  # noqa: E402
from fiber_d2.modeling.deform_conv import deform_conv_sampled  # noqa: E402
from fiber_d2.modeling.backbone.fusion import FusionMode  # noqa: E402

logger = logging.getLogger("benchmark")

DEFAULT_CONFIG = "configs/backbone/FIBER-B.yaml"
LVIS_CONFIG = "configs/fiber_b/lvis_minival_zeroshot.yaml"
DEFAULT_SIZES = "384x384,800x1333"
# FIBER's text lengths: the coarse stage truncates captions to 40 tokens (images 384/576); the fine stage pads every
# query to MAX_QUERY_LEN = 256 (images 800x1333).
COARSE_TEXT_LEN, FINE_TEXT_LEN, COARSE_MAX_SIDE = 40, 256, 576
SDPA_OP = "aten::scaled_dot_product_attention"

_STDOUT = sys.stdout  # JSON rows go here; everything else printed while benchmarking is sent to stderr


def emit(row: dict) -> None:
    """Print one JSON row on the real stdout."""
    _STDOUT.write(json.dumps(row) + "\n")
    _STDOUT.flush()


# ----------------------------------------------------------------------------------------------------- FLOP counting
def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: MACs = batch * Lq * Lk * (Dqk + Dv).

    query [..., Lq, Dqk], key [..., Lk, Dqk], value [..., Lk, Dv]; the leading dims (batch, windows, heads)
    broadcast. Q K^T costs Lq*Lk*Dqk multiply-adds and P V costs Lq*Lk*Dv; the softmax, scale and additive mask are
    elementwise and not counted (fvcore's convention for softmax).
    """
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(value) for value in inputs[:3])
    if query is None or key is None or value is None:
        raise ValueError("scaled_dot_product_attention input shapes are unknown to the tracer")
    batch = torch.broadcast_shapes(tuple(query[:-2]), tuple(key[:-2]), tuple(value[:-2]))
    return math.prod(batch) * query[-2] * key[-2] * (query[-1] + value[-1])


def flop_analysis(model: nn.Module, inputs: tuple):
    """An fvcore FlopCountAnalysis with the SDPA handle, quiet about skipped ops (they are reported in the rows)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**{SDPA_OP: sdpa_flop_jit})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def count_flops(model: nn.Module, inputs: tuple) -> dict:
    """{"total": flops, "sdpa": flops of the attention op, "unsupported": {op: calls}} (1 multiply-add = 1 flop)."""
    analysis = flop_analysis(model, inputs)
    with torch.no_grad():
        total = analysis.total()
    return {
        "total": total,
        "sdpa": analysis.by_operator().get(SDPA_OP.split("::")[-1], 0),  # fvcore drops the "aten::" prefix
        "unsupported": dict(analysis.unsupported_ops()),
    }


# ------------------------------------------------------------------------------------------ models taking only tensors
class BackboneForward(nn.Module):
    """FiberBackbone with a fixed fusion mode: (images, ids, mask) -> (*image features in out_features order, text)."""

    def __init__(self, backbone: nn.Module, fusion: FusionMode | str):
        super().__init__()
        self.backbone = backbone
        self.fusion = FusionMode(fusion)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        features, text = self.backbone(images, input_ids, attention_mask, fusion=self.fusion)
        return (*(features[name] for name in self.backbone._out_features), text)


class LowerForward(nn.Module):
    """The text-independent lower part only: encode_image_lower + encode_text_lower, every tensor they produce."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        image_state = self.backbone.encode_image_lower(images)
        text_state = self.backbone.encode_text_lower(input_ids, attention_mask)
        return (image_state.tokens, *image_state.outputs.values(), text_state.hidden)


class MeterAttention(nn.Module):
    """BERT attention block: LN(x + Dense(MHA(Q x, K ctx, V ctx))); ctx = x for self-attention."""

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_bias: torch.Tensor | None) -> torch.Tensor:
        attended = multi_head_attention(
            self.query(x),
            self.key(context),
            self.value(context),
            self.num_heads,
            bias=context_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.norm(x + self.dropout(self.dense(attended)))


class MeterCoAttentionLayer(nn.Module):
    """METER's BertCrossLayer for one stream: self-attention, cross-attention to the other stream, FFN (BERT style)."""

    def __init__(self, hidden: int = 768, num_heads: int = 12, intermediate: int = 3072, dropout: float = 0.1):
        super().__init__()
        self.self_attention = MeterAttention(hidden, num_heads, dropout)
        self.cross_attention = MeterAttention(hidden, num_heads, dropout)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(
        self, x: torch.Tensor, x_bias: torch.Tensor | None, other: torch.Tensor, other_bias: torch.Tensor | None
    ) -> torch.Tensor:
        """x: [B, L, hidden] this stream; other: [B, S, hidden]; *_bias: additive key-padding biases or None."""
        x = self.self_attention(x, x, x_bias)
        x = self.cross_attention(x, other, other_bias)
        return self.norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class MeterFusion(nn.Module):
    """METER's fusion module: projections into `hidden`, modality-type embeddings, and `num_layers` co-attention
    layers per stream. Both streams update in parallel (each layer reads the other stream's previous state)."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate: int = 3072,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, hidden)
        self.text_proj = nn.Linear(text_dim, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.image_layers = nn.ModuleList(
            MeterCoAttentionLayer(hidden, num_heads, intermediate, dropout) for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            MeterCoAttentionLayer(hidden, num_heads, intermediate, dropout) for _ in range(num_layers)
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(
        self, image_tokens: torch.Tensor, text: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens [B, N, image_dim] (no mask, as in METER); text [B, T, text_dim]; attention_mask [B, T].

        Returns (fused image [B, N, hidden], fused text [B, T, hidden]).
        """
        y = self.image_proj(image_tokens) + self.token_type.weight[1]
        x = self.text_proj(text) + self.token_type.weight[0]
        text_bias = padding_bias(attention_mask, x.dtype)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            x, y = text_layer(x, text_bias, y, None), image_layer(y, None, x, text_bias)
        return y, x


class MeterBaseline(nn.Module):
    """METER-style model on FIBER's encoders: the backbone with fusion OFF (two unimodal encoders), then the final
    Swin stage's tokens (after its LayerNorm) and the text hidden states go through `MeterFusion`.

    forward(images, ids, mask) -> (*unfused image features, unfused text, fused image [B, N, hidden], fused text).
    `for_backbone` sizes the fusion like the text encoder (FIBER-B: hidden 768, 12 heads, FFN 3072, 6 layers = METER).
    """

    @classmethod
    def for_backbone(cls, backbone: nn.Module) -> "MeterBaseline":
        """METER's fusion scaled to the backbone: text hidden size, heads, FFN size and dropout; one co-attention
        layer per fused step K (FIBER-B: 768, 12, 3072, 0.1, 6 layers, which is METER's setting)."""
        config = backbone.text.model.config
        return cls(backbone, hidden=config.hidden_size, num_layers=backbone.num_fused,
                   num_heads=config.num_attention_heads, intermediate=config.intermediate_size,
                   dropout=config.hidden_dropout_prob)

    def __init__(self, backbone: nn.Module, hidden: int = 768, num_layers: int = 6, num_heads: int = 12,
                 intermediate: int = 3072, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.last_feature = backbone._out_features[-1]
        image_dim = backbone.output_shape()[self.last_feature].channels
        self.fusion = MeterFusion(image_dim, backbone.text.hidden_size, hidden, num_layers, num_heads, intermediate,
                                  dropout)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        features, text = self.backbone(images, input_ids, attention_mask, fusion=FusionMode.OFF)
        image_tokens = features[self.last_feature].flatten(2).transpose(1, 2)
        fused_image, fused_text = self.fusion(image_tokens, text, attention_mask)
        return (*(features[name] for name in self.backbone._out_features), text, fused_image, fused_text)


# --------------------------------------------------------------------------------------------------------- helpers
def build_backbone(config_file: str, opts: Sequence[str] = ()) -> nn.Module:
    from detectron2.config import get_cfg

    from fiber_d2.config import add_fiber_config
    from fiber_d2.modeling import FiberBackbone

    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return FiberBackbone(cfg)


VARIANTS = ("fusion_on", "fusion_off", "meter")


def build_variant(backbone: nn.Module, name: str) -> nn.Module:
    """"fusion_on" | "fusion_off" | "meter" -> a module taking (images, ids, mask) and returning a tuple of tensors."""
    if name == "meter":
        return MeterBaseline.for_backbone(backbone)
    return BackboneForward(backbone, {"fusion_on": FusionMode.ON, "fusion_off": FusionMode.OFF}[name])


def parse_size(text: str) -> tuple[int, int]:
    """'800x1333' -> (height 800, width 1333)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 800x1333)") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return height, width


def default_text_len(size: tuple[int, int]) -> int:
    """40 tokens (coarse stage) for images whose longer side is at most 576, else 256 (fine stage)."""
    return COARSE_TEXT_LEN if max(size) <= COARSE_MAX_SIDE else FINE_TEXT_LEN


def make_inputs(size: tuple[int, int], text_len: int, batch: int, vocab_size: int, divisor: int,
                device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random normalised images padded (zeros, right/bottom) to a multiple of `divisor` as Detectron2 batches them;
    random token ids with a full attention mask (the fine stage pads queries to 256: same compute)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = (-(-side // divisor) * divisor for side in size)
    images = torch.zeros(batch, 3, height, width)
    images[:, :, : size[0], : size[1]] = torch.randn(batch, 3, *size, generator=generator)
    input_ids = torch.randint(3, vocab_size, (batch, text_len), generator=generator)
    attention_mask = torch.ones(batch, text_len, dtype=torch.long)
    return images.to(device), input_ids.to(device), attention_mask.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(variants: dict[str, nn.Module], inputs: tuple, repeats: int, warmup: int,
                  device: torch.device, inference: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each variant (under `torch.inference_mode` when `inference`, else with autograd on);
    repeats are interleaved across variants so that drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode() if inference else contextlib.nullcontext():
        for name, model in variants.items():
            for _ in range(warmup):
                model(*inputs)
            synchronize(device)
        for repeat in range(repeats):
            for name, model in variants.items():
                synchronize(device)
                start = time.perf_counter()
                model(*inputs)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
                logger.info("  latency %s repeat %d/%d: %.1f ms", name, repeat + 1, repeats, 1e3 * times[name][-1])
    return times


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


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gflops(flops: float) -> float:
    return round(flops / 1e9, 3)


def rounded(value: float, digits: int = 4) -> float:
    return round(value, digits)


# ------------------------------------------------------------------------------------------------- backbone command
def memory_worker(args: argparse.Namespace) -> int:
    """Child process: build one variant, run one forward + backward in train mode, print its memory as JSON."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(available_threads())
    device = torch.device(args.device)
    backbone = build_backbone(args.config_file, args.opts)
    model = build_variant(backbone, args.variant).to(device).train()
    inputs = make_inputs(args.size, args.text_len, args.batch, backbone.text.model.config.vocab_size,
                         backbone.size_divisibility, device, seed=args.seed)
    synchronize(device)
    result: dict[str, Any] = {"variant": args.variant, "rss_after_build_kib": current_rss_kib(),
                              "peak_rss_before_kib": peak_rss_kib()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_allocated_before_bytes"] = torch.cuda.memory_allocated(device)
    outputs = model(*inputs)
    loss = sum(output.float().mean() for output in outputs)
    loss.backward()
    synchronize(device)
    result["peak_rss_kib"] = peak_rss_kib()
    result["rss_growth_kib"] = result["peak_rss_kib"] - result["rss_after_build_kib"]
    if device.type == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_growth_bytes"] = result["cuda_peak_allocated_bytes"] - result["cuda_allocated_before_bytes"]
    emit(result)
    return 0


def measure_memory(args: argparse.Namespace, variant: str, text_len: int) -> dict:
    """Run `memory_worker` for one variant in a fresh interpreter (ru_maxrss is a per-process high-water mark)."""
    size = "x".join(map(str, args.memory_size))
    command = [sys.executable, str(Path(__file__).resolve()), "_memory", "--variant", variant,
               "--config-file", str(args.config_file), "--size", size, "--text-len", str(text_len),
               "--batch", str(args.memory_batch), "--device", args.device, "--seed", str(args.seed)]
    if args.opts:
        command += ["--opts", *args.opts]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"memory worker for {variant} printed no result:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["peak_rss_kib"] <= result["peak_rss_before_kib"]:
        logger.warning("memory %s: the forward+backward never exceeded the RSS peak reached while building, so its "
                       "RSS growth is a lower bound", variant)
    return result


def backbone_command(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    threads = available_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    model_name = Path(args.config_file).stem
    text_lens = args.text_len or [default_text_len(size) for size in args.sizes]
    if len(text_lens) == 1:
        text_lens = text_lens * len(args.sizes)
    if len(text_lens) != len(args.sizes):
        raise SystemExit(f"--text-len gives {len(text_lens)} values for {len(args.sizes)} sizes (give 1 or 1 per size)")

    logger.info("building %s (random init) on %s, %d threads", model_name, device, threads)
    backbone = build_backbone(args.config_file, args.opts).to(device).eval()
    variants = {name: build_variant(backbone, name).to(device).eval() for name in VARIANTS}
    vocab = backbone.text.model.config.vocab_size

    for size, text_len in zip(args.sizes, text_lens):
        inputs = make_inputs(size, text_len, args.batch, vocab, backbone.size_divisibility, device, seed=args.seed)
        common = {
            "bench": "backbone", "model": model_name, "size": f"{size[0]}x{size[1]}",
            "input_size": f"{inputs[0].shape[-2]}x{inputs[0].shape[-1]}", "text_len": text_len,
            "batch": args.batch, "device": device.type,
        }
        if not args.skip_flops:
            counts = {}
            for name, model in [*variants.items(), ("lower", LowerForward(backbone))]:
                logger.info("%s: counting FLOPs of %s", common["size"], name)
                counts[name] = count_flops(model, inputs)
            on, off, meter = (counts[name]["total"] for name in ("fusion_on", "fusion_off", "meter"))
            unsupported = Counter()
            for count in counts.values():
                unsupported.update(count["unsupported"])
            emit({
                **common, "metric": "flops", "unit": "GFLOPs (1 multiply-add = 1 flop, fvcore)",
                "fusion_on": gflops(on), "fusion_off": gflops(off), "meter": gflops(meter),
                "lower": gflops(counts["lower"]["total"]),
                "fusion_fiber": gflops(on - off), "fusion_meter": gflops(meter - off),
                "fusion_ratio_fiber_over_meter": rounded((on - off) / (meter - off)),
                "total_ratio_fiber_over_meter": rounded(on / meter),
                "lower_share_of_fusion_on": rounded(counts["lower"]["total"] / on),
                "attention_sdpa": {name: gflops(count["sdpa"]) for name, count in counts.items()},
                "unsupported_ops": sorted(unsupported),
            })
        if not args.skip_latency:
            logger.info("%s: timing %d warmup + %d repeats per variant", common["size"], args.warmup, args.repeats)
            times = time_variants(variants, inputs, args.repeats, args.warmup, device)
            median = {name: statistics.median(values) for name, values in times.items()}
            fastest = {name: min(values) for name, values in times.items()}
            emit({
                **common, "metric": "latency", "unit": "ms", "threads": threads, "repeats": args.repeats,
                "warmup": args.warmup,
                **{f"{name}_median": rounded(1e3 * median[name], 2) for name in times},
                **{f"{name}_min": rounded(1e3 * fastest[name], 2) for name in times},
                "ratio_fusion_on_over_off": rounded(median["fusion_on"] / median["fusion_off"]),
                "ratio_meter_over_off": rounded(median["meter"] / median["fusion_off"]),
                "ratio_fusion_on_over_meter": rounded(median["fusion_on"] / median["meter"]),
                "min_ratio_fusion_on_over_off": rounded(fastest["fusion_on"] / fastest["fusion_off"]),
                "min_ratio_meter_over_off": rounded(fastest["meter"] / fastest["fusion_off"]),
                "min_ratio_fusion_on_over_meter": rounded(fastest["fusion_on"] / fastest["meter"]),
            })
        del inputs

    if not args.skip_memory:
        text_len = args.memory_text_len or default_text_len(args.memory_size)
        logger.info("memory: one forward+backward of each of %s in fresh processes (%d at a time)",
                    ", ".join(VARIANTS), args.memory_jobs)
        with ThreadPoolExecutor(max_workers=args.memory_jobs) as pool:
            results = dict(zip(VARIANTS, pool.map(lambda variant: measure_memory(args, variant, text_len), VARIANTS)))
        if device.type == "cuda":
            measure, key, scale = "torch.cuda.max_memory_allocated growth", "cuda_growth_bytes", 2**20
        else:
            measure, key, scale = "ru_maxrss growth over RSS after build (fresh process)", "rss_growth_kib", 2**10
        peak = {variant: result[key] / scale for variant, result in results.items()}
        emit({
            "bench": "backbone", "model": model_name, "size": "x".join(map(str, args.memory_size)),
            "input_size": "x".join(str(-(-side // backbone.size_divisibility) * backbone.size_divisibility)
                                   for side in args.memory_size),
            "text_len": text_len, "batch": args.memory_batch, "device": device.type, "metric": "memory",
            "mode": "train, one forward+backward, loss = sum of output means", "measure": measure, "unit": "MiB",
            **{variant: rounded(value, 1) for variant, value in peak.items()},
            "ratio_fusion_on_over_meter": rounded(peak["fusion_on"] / peak["meter"]),
            "ratio_fusion_on_over_off": rounded(peak["fusion_on"] / peak["fusion_off"]),
            "rss_after_build_mib": {
                variant: rounded(result["rss_after_build_kib"] / 2**10, 1) for variant, result in results.items()
            },
        })
    return 0


# ------------------------------------------------------------------------------------------------------------ DCN
DCN_STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def dyhead_level_shapes(size: tuple[int, int], strides: Sequence[int] = DCN_STRIDES) -> list[tuple[int, int]]:
    """The FPN map sizes of an image padded to a multiple of 32 (Detectron2's batching), P6/P7 by stride-2 convs."""
    height, width = (math.ceil(side / 32) * 32 for side in size)
    shapes: list[tuple[int, int]] = []
    for stride in strides:
        if stride <= 32:
            shapes.append((height // stride, width // stride))
        else:  # a 3x3 stride-2 conv with padding 1 on the previous level
            previous = shapes[-1]
            shapes.append(((previous[0] + 1) // 2, (previous[1] + 1) // 2))
    return shapes


def dcn_command(args: argparse.Namespace) -> int:
    """One row per FPN level: ms per forward (and per forward+backward) of a plain conv, torchvision's DCNv2 and ours,
    their ratios, and how far ours is from torchvision (output and gradients)."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or available_threads())
    device = torch.device(args.device)
    channels = args.channels
    weight = (torch.randn(channels, channels, 3, 3, device=device) / math.sqrt(9 * channels)).requires_grad_()
    bias = torch.zeros(channels, device=device, requires_grad=True)
    for level, (height, width) in zip(("p3", "p4", "p5", "p6", "p7"), dyhead_level_shapes(args.size)):
        x = torch.randn(1, channels, height, width, device=device, requires_grad=True)
        offset = (torch.randn(1, 18, height, width, device=device) * args.offset_std).requires_grad_()
        mask = torch.rand(1, 9, height, width, device=device, requires_grad=True)
        cotangent = torch.randn(1, channels, height, width, device=device)
        inputs = {"x": x, "offset": offset, "mask": mask, "weight": weight, "bias": bias}
        forward = {
            "plain": lambda: F.conv2d(x, weight, bias, padding=1),
            "torchvision": lambda: torchvision_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask),
            "ours": lambda: deform_conv_sampled(x, offset, mask, weight, bias),
        }

        def forward_backward(call, wrt: tuple):
            return lambda: torch.autograd.grad(call(), wrt, cotangent)

        # Forward + backward: the gradients wrt every input of the op (x, weight, bias for the plain conv).
        train = {
            "plain": forward_backward(forward["plain"], (x, weight, bias)),
            "torchvision": forward_backward(forward["torchvision"], tuple(inputs.values())),
            "ours": forward_backward(forward["ours"], tuple(inputs.values())),
        }
        with torch.inference_mode():
            difference = (forward["ours"]() - forward["torchvision"]()).abs().max().item()
        times = time_variants(forward, (), args.repeats, args.warmup, device)
        ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
        row = {
            "bench": "dcn", "level": level, "channels": channels, "height": height, "width": width,
            "device": device.type, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "plain_ms": rounded(ms["plain"], 2), "torchvision_ms": rounded(ms["torchvision"], 2),
            "ours_ms": rounded(ms["ours"], 2),
            "ours_over_plain": rounded(ms["ours"] / ms["plain"], 3),
            "torchvision_over_plain": rounded(ms["torchvision"] / ms["plain"], 3),
            "torchvision_over_ours": rounded(ms["torchvision"] / ms["ours"], 3),
            "max_abs_difference": difference,
        }
        if not args.skip_backward:
            gradients = {name: train[name]() for name in ("ours", "torchvision")}
            row["max_abs_grad_difference"] = {
                name: (ours - theirs).abs().max().item()
                for name, ours, theirs in zip(inputs, gradients["ours"], gradients["torchvision"])
            }
            times = time_variants(train, (), args.repeats, args.warmup, device, inference=False)
            ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
            row.update({
                "plain_train_ms": rounded(ms["plain"], 2), "torchvision_train_ms": rounded(ms["torchvision"], 2),
                "ours_train_ms": rounded(ms["ours"], 2),
                "ours_over_plain_train": rounded(ms["ours"] / ms["plain"], 3),
                "torchvision_over_plain_train": rounded(ms["torchvision"] / ms["plain"], 3),
                "torchvision_over_ours_train": rounded(ms["torchvision"] / ms["ours"], 3),
            })
        emit(row)
    return 0


# ----------------------------------------------------------------------------------------------------------- LVIS
LVIS_CHUNK_PARTS = ("text_lower", "upper", "fpn", "head")  # timed per chunk; the floor sums all but text_lower


def lvis_names() -> list[str]:
    """The 1203 LVIS v1 category names as the evaluation prompts them (detectron2's thing_classes, cleaned)."""
    from detectron2.data.datasets.lvis import get_lvis_instances_meta

    from fiber_d2.data.prompts import clean_category_name

    return [clean_category_name(name) for name in get_lvis_instances_meta("lvis_v1")["thing_classes"]]


def names_tokenizer(cfg, names: Sequence[str], train_on_names: bool, workdir: str,
                    vocabulary: str) -> tuple[str, str]:
    """(tokenizer directory, description): MODEL.FIBER.TOKENIZER if that directory exists and `train_on_names` is
    False, else a byte-level BPE trained here on the names (vocabulary at most min(the model's, 8000): about one token
    per word), so that the prompts have lengths close to those of real prompts. `vocabulary` names the names in logs."""
    from fiber_d2.data.tokenizer import resolve_path, train_roberta_bpe_tokenizer

    path = cfg.MODEL.FIBER.TOKENIZER
    if not train_on_names and path and os.path.isdir(resolve_path(path)):
        return path, path
    vocab_size = min(cfg.MODEL.FIBER.TEXT.VOCAB_SIZE, 8000)
    logger.info("tokenizer: a byte-level BPE (vocabulary <= %d) trained on the %s names", vocab_size, vocabulary)
    directory = train_roberta_bpe_tokenizer(names, workdir, vocab_size=vocab_size, min_frequency=1)
    return str(directory), f"byte-level BPE trained on the {vocabulary} names (vocab <= {vocab_size})"


def build_detector_cfg(args: argparse.Namespace):
    """The detector config of `--config-file` + `--opts` on `--device`; random weights (MODEL.WEIGHTS is emptied)."""
    from detectron2.config import get_cfg

    from fiber_d2.config import add_fiber_config

    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(args.config_file))
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    return cfg


def lvis_command(args: argparse.Namespace) -> int:
    """One row per chunk (its parts of the floor) and one summary row: naive, ours and floor in ms, their ratios."""
    import tempfile

    from detectron2.modeling import build_model

    from fiber_d2.data.prompts import vocabulary_chunks
    from fiber_d2.data.tokenizer import load_tokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or available_threads())
    device = torch.device(args.device)
    cfg = build_detector_cfg(args)
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
                len(chunks), all_chunks, torch.get_num_threads())
    model = build_model(cfg).eval()
    bottom_up = model.backbone.bottom_up
    height, width = args.size
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    inputs = [{"image": image, "height": height, "width": width, "prompts": chunks}]
    images = model.preprocess_image(inputs).tensor

    times: dict[str, list[float]] = {}

    def timed(name: str, record: bool, function, *function_args):
        synchronize(device)
        start = time.perf_counter()
        output = function(*function_args)
        synchronize(device)
        if record:
            times.setdefault(name, []).append(time.perf_counter() - start)
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
    parts = {part: [ms[f"{part}/{index}"] for index in range(len(chunks))] for part in LVIS_CHUNK_PARTS}
    common = {"bench": "lvis", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "input_size": f"{images.shape[-2]}x{images.shape[-1]}", "device": device.type,
              "threads": torch.get_num_threads(), "repeats": args.repeats}
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
    return 0


# ----------------------------------------------------------------------------------------------------- throughput
THROUGHPUT_CONFIG = "configs/fiber_shapes/fiber_tiny_grounding.yaml"


def throughput_command(args: argparse.Namespace) -> int:
    """One row per batch size (images/s of `FiberPredictor.predict_batch` over `--images` same-size images, in
    batches of that size) and one summary row with every batch size's rate over the first one's."""
    import tempfile

    import numpy as np

    from fiber_d2.data.shapes.vocabulary import colorshape_categories
    from fiber_d2.engine.predictor import FiberPredictor

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or available_threads())
    device = torch.device(args.device)
    cfg = build_detector_cfg(args)
    names = [category["name"] for category in colorshape_categories()]  # the 48 "colour shape" names
    with tempfile.TemporaryDirectory() as workdir:
        cfg.MODEL.FIBER.TOKENIZER, tokenizer_name = names_tokenizer(cfg, names, args.names_tokenizer, workdir,
                                                                    "FIBER-Shapes colour+shape")
        predictor = FiberPredictor(cfg)  # reads the tokenizer now; random weights
    chunks = predictor.prompt_chunks(names)
    height, width = args.size
    generator = np.random.default_rng(args.seed)
    images = [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    resized = predictor.resize.get_transform(images[0]).apply_image(images[0]).shape[:2]
    logger.info("%s (random init) on %s, %d threads: %d images %dx%d (model input %dx%d), prompt of %d names in %d "
                "chunk(s), batch sizes %s", args.config_file, device, torch.get_num_threads(), args.images, height,
                width, *predictor.padded_size(*resized), len(names), len(chunks), args.batch_sizes)

    def run(batch_size: int) -> None:
        for start in range(0, len(images), batch_size):
            predictor.predict_batch(images[start : start + batch_size], names)

    times: dict[int, list[float]] = {batch_size: [] for batch_size in args.batch_sizes}
    for repeat in range(args.warmup + args.repeats):
        for batch_size in args.batch_sizes:
            synchronize(device)
            start = time.perf_counter()
            run(batch_size)
            synchronize(device)
            if repeat >= args.warmup:
                times[batch_size].append(time.perf_counter() - start)
                logger.info("  batch %d, repeat %d/%d: %.1f images/s", batch_size, repeat + 1 - args.warmup,
                            args.repeats, len(images) / times[batch_size][-1])
    rate = {batch_size: len(images) / statistics.median(values) for batch_size, values in times.items()}
    common = {"bench": "throughput", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "input_size": "x".join(map(str, predictor.padded_size(*resized))), "device": device.type,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "images": len(images),
              "names": len(names), "chunks": len(chunks), "tokens": sum(len(chunk.input_ids) for chunk in chunks)}
    for batch_size in args.batch_sizes:
        emit({**common, "metric": "batch", "batch_size": batch_size, "forwards": -(-len(images) // batch_size),
              "seconds": rounded(statistics.median(times[batch_size])), "images_per_s": rounded(rate[batch_size]),
              "ms_per_image": rounded(1e3 / rate[batch_size], 2)})
    first = args.batch_sizes[0]
    emit({**common, "metric": "summary", "tokenizer": tokenizer_name,
          "images_per_s": {str(batch_size): rounded(value) for batch_size, value in rate.items()},
          **{f"ratio_batch{batch_size}_over_batch{first}": rounded(rate[batch_size] / rate[first])
             for batch_size in args.batch_sizes[1:]}})
    return 0


# -------------------------------------------------------------------------------------------------------------- CLI
def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def add_detector_run_options(parser: argparse.ArgumentParser, timed: str, inputs: str) -> None:
    """--repeats, --warmup, --threads, --device, --seed and --opts of the subcommands that time a random detector."""
    parser.add_argument("--repeats", type=int, default=3, help=f"timed runs {timed} (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed runs {timed} (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs available)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                        help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the random weights and {inputs}")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (must come last)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{backbone,dcn,lvis,throughput}")

    bench = commands.add_parser("backbone", help="FLOPs, latency and memory: fused backbone vs METER-style fusion")
    bench.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"backbone config (default {DEFAULT_CONFIG})")
    bench.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES),
                       help=f"comma-separated HEIGHTxWIDTH image sizes (default {DEFAULT_SIZES}); padded to a "
                            "multiple of 32 like Detectron2 batches")
    bench.add_argument("--text-len", type=_ints, default=None,
                       help=f"text tokens per size, comma-separated, or one value for all sizes (default: "
                            f"{COARSE_TEXT_LEN}, the coarse stage's max text length, for sizes whose longer side is "
                            f"<= {COARSE_MAX_SIDE}; else {FINE_TEXT_LEN}, the fine stage's padded query length)")
    bench.add_argument("--batch", type=int, default=1, help="batch size for FLOPs and latency (default 1)")
    bench.add_argument("--repeats", type=int, default=3, help="timed forwards per variant and size (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed forwards per variant and size (default 1)")
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                       help="default: cuda when available")
    bench.add_argument("--skip-flops", action="store_true", help="no FLOP rows")
    bench.add_argument("--skip-latency", action="store_true", help="no latency rows")
    bench.add_argument("--skip-memory", action="store_true", help="no memory row")
    bench.add_argument("--memory-size", type=parse_size, default=(384, 384), help="memory row image size (384x384)")
    bench.add_argument("--memory-batch", type=int, default=2, help="memory row batch size (default 2)")
    bench.add_argument("--memory-text-len", type=int, default=None,
                       help="memory row text length (default: the --text-len rule for --memory-size)")
    bench.add_argument("--memory-jobs", type=int, default=1,
                       help="memory processes run at once (default 1; each measures only itself, but together they "
                            "need that many times the host or GPU memory)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    bench.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                       help="config overrides KEY VALUE ... (must come last)")
    bench.set_defaults(func=backbone_command)

    dcn = commands.add_parser("dcn", help="DyHead DCNv2 per FPN level: plain conv vs torchvision vs fiber_d2")
    dcn.add_argument("--size", type=parse_size, default=(800, 1333), help="image HEIGHTxWIDTH (default 800x1333)")
    dcn.add_argument("--channels", type=int, default=256, help="DyHead channels (default 256, FIBER-B)")
    dcn.add_argument("--offset-std", type=float, default=1.0, help="std of the random offsets, pixels (default 1)")
    dcn.add_argument("--repeats", type=int, default=5, help="timed forwards per variant and level (default 5)")
    dcn.add_argument("--warmup", type=int, default=1, help="untimed forwards per variant and level (default 1)")
    dcn.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs available)")
    dcn.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    dcn.add_argument("--skip-backward", action="store_true", help="time the forward only (no *_train_ms fields)")
    dcn.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    dcn.set_defaults(func=dcn_command)

    lvis = commands.add_parser("lvis", help="LVIS prompt chunks: detector per chunk vs lower part reused vs floor")
    lvis.add_argument("--config-file", default=LVIS_CONFIG, help=f"detector config (default {LVIS_CONFIG}); random "
                      "weights (MODEL.WEIGHTS is not loaded)")
    lvis.add_argument("--size", type=parse_size, default=(800, 1333), help="image HEIGHTxWIDTH (default 800x1333)")
    lvis.add_argument("--chunk-size", type=int, default=40, help="LVIS names per prompt (default 40, FIBER's)")
    lvis.add_argument("--num-chunks", type=int, default=0, help="time only the first N chunks (default 0: all)")
    lvis.add_argument("--chunk-batch", type=int, default=0,
                      help="chunks per forward of the upper part (default 0: MODEL.FIBER.PROMPT.CHUNK_BATCH)")
    lvis.add_argument("--names-tokenizer", action="store_true",
                      help="tokenize with a BPE trained on the LVIS names even if MODEL.FIBER.TOKENIZER exists (the "
                           "fallback when it does not)")
    add_detector_run_options(lvis, "of every variant and part", "image")
    lvis.set_defaults(func=lvis_command)

    throughput = commands.add_parser("throughput", help="images/s of the predictor in batches of 1 vs 4 (tiny model)")
    throughput.add_argument("--config-file", default=THROUGHPUT_CONFIG, help=f"detector config (default "
                            f"{THROUGHPUT_CONFIG}); random weights (MODEL.WEIGHTS is not loaded)")
    throughput.add_argument("--size", type=parse_size, default=(256, 320),
                            help="image HEIGHTxWIDTH before the predictor's resize (default 256x320)")
    throughput.add_argument("--images", type=int, default=16, help="images per timed run (default 16)")
    throughput.add_argument("--batch-sizes", type=_ints, default=[1, 4],
                            help="comma-separated batch sizes; ratios are over the first (default 1,4)")
    throughput.add_argument("--names-tokenizer", action="store_true",
                            help="tokenize with a BPE trained on the 48 names even if MODEL.FIBER.TOKENIZER exists "
                                 "(the fallback when it does not)")
    add_detector_run_options(throughput, "per batch size", "images")
    throughput.set_defaults(func=throughput_command)

    # Internal: one memory measurement in a fresh process (used by `backbone`).
    worker = commands.add_parser("_memory")
    worker.add_argument("--variant", choices=["fusion_on", "fusion_off", "meter"], required=True)
    worker.add_argument("--config-file", required=True)
    worker.add_argument("--size", type=parse_size, required=True)
    worker.add_argument("--text-len", type=int, required=True)
    worker.add_argument("--batch", type=int, required=True)
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    worker.set_defaults(func=memory_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    positive = ("batch", "repeats", "memory_batch", "memory_jobs", "chunk_size", "images")
    if min(getattr(args, name, 1) for name in positive) <= 0:
        raise SystemExit("--batch, --repeats, --memory-batch, --memory-jobs, --chunk-size and --images must be "
                         "positive")
    if min(getattr(args, name, 0) for name in ("num_chunks", "chunk_batch", "threads")) < 0:
        raise SystemExit("--num-chunks, --chunk-batch and --threads must be >= 0")
    if getattr(args, "warmup", 0) < 0:
        raise SystemExit("--warmup must be >= 0")
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stray prints must not break the JSON lines
        code = args.func(args)
    if args.command != "_memory":
        logger.info("done in %.1f s", time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
