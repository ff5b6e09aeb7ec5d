"""`dcn`: one modulated deformable 3x3 convolution (the DyHead's DCNv2) at each FPN level's shape, forward and
forward+backward: a plain 3x3 convolution (the floor), torchvision's `deform_conv2d`, and fiber_d2's
`deform_conv_sampled` (what the DyHead uses on CPU)."""
from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from ..modeling.grounding.deform_conv import deform_conv_sampled
from .common import (
    Emit,
    median_ms,
    non_negative_int,
    parse_size,
    positive_int,
    rounded,
    set_threads,
    time_variants,
)

HELP = "DyHead DCNv2 per FPN level: plain conv vs torchvision vs fiber_d2"
DCN_STRIDES = (8, 16, 32, 64, 128)  # P3-P7
LEVELS = ("p3", "p4", "p5", "p6", "p7")
METHODS = ("plain", "torchvision", "ours")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dcn`."""
    parser.add_argument("--size", type=parse_size, default=(800, 1333), help="image HEIGHTxWIDTH (default 800x1333)")
    parser.add_argument("--channels", type=positive_int, default=256, help="DyHead channels (default 256, FIBER-B)")
    parser.add_argument("--offset-std", type=float, default=1.0, help="std of the random offsets, pixels (default 1)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed forwards per method and level (default 5)")
    parser.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed forwards per method and level (default 1)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch threads (default 0: the CPUs available)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--skip-backward", action="store_true", help="time the forward only (no *_train_ms fields)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def timing_fields(ms: dict[str, float], suffix: str) -> dict:
    """Each method's ms and the three ratios between them (from the unrounded times)."""
    return {
        **{f"{name}{suffix}_ms": rounded(ms[name], 2) for name in METHODS},
        f"ours_over_plain{suffix}": rounded(ms["ours"] / ms["plain"], 3),
        f"torchvision_over_plain{suffix}": rounded(ms["torchvision"] / ms["plain"], 3),
        f"torchvision_over_ours{suffix}": rounded(ms["torchvision"] / ms["ours"], 3),
    }


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One row per FPN level: ms per forward (and per forward+backward) of each method, their ratios, and how far
    ours is from torchvision (output and gradients)."""
    torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    channels = args.channels
    weight = (torch.randn(channels, channels, 3, 3, device=device) / math.sqrt(9 * channels)).requires_grad_()
    bias = torch.zeros(channels, device=device, requires_grad=True)
    for level, (height, width) in zip(LEVELS, dyhead_level_shapes(args.size)):
        x = torch.randn(1, channels, height, width, device=device, requires_grad=True)
        offset = (torch.randn(1, 18, height, width, device=device) * args.offset_std).requires_grad_()
        mask = torch.rand(1, 9, height, width, device=device, requires_grad=True)
        cotangent = torch.randn(1, channels, height, width, device=device)
        inputs = {"x": x, "offset": offset, "mask": mask, "weight": weight, "bias": bias}
        forward: dict[str, Callable[[], torch.Tensor]] = {
            "plain": lambda: F.conv2d(x, weight, bias, padding=1),
            "torchvision": lambda: deform_conv2d(x, offset, weight, bias, padding=1, mask=mask),
            "ours": lambda: deform_conv_sampled(x, offset, mask, weight, bias),
        }

        def forward_backward(call: Callable[[], torch.Tensor], wrt: tuple) -> Callable[[], tuple]:
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
        row = {"bench": "dcn", "level": level, "channels": channels, "height": height, "width": width,
               "device": device.type, "threads": threads, "repeats": args.repeats,
               **timing_fields({name: median_ms(values) for name, values in times.items()}, ""),
               "max_abs_difference": difference}
        if not args.skip_backward:
            gradients = {name: train[name]() for name in ("ours", "torchvision")}
            row["max_abs_grad_difference"] = {
                name: (ours - theirs).abs().max().item()
                for name, ours, theirs in zip(inputs, gradients["ours"], gradients["torchvision"])
            }
            times = time_variants(train, (), args.repeats, args.warmup, device, inference=False)
            row.update(timing_fields({name: median_ms(values) for name, values in times.items()}, "_train"))
        emit(row)
