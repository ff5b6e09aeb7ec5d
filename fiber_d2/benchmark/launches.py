"""`launches`: what one forward of our detector (random weights) dispatches, under `torch.profiler`: aten operators
called from Python, device events (kernels, copies, fills; CUDA only), reads of device values by the host (each
one waits for the GPU), and the operators that take the most time, in fp32 and under bf16 autocast. A GPU forward
of many small kernels is bound by their launches and by the host's waits rather than by its arithmetic; these counts
show where they come from (docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .common import (
    Emit,
    add_run_options,
    code_version,
    host_load,
    load_config,
    parse_size,
    positive_int,
    rounded,
    set_threads,
    synchronize,
)
from .latency import DEFAULT_CONFIG, detector_inputs, parse_dtypes, under_autocast
from .vocabularies import shapes_predictor

HELP = "operators, device kernels and host reads per detector forward (torch.profiler), fp32 and bf16"
# Operators that copy a device value to the host (`.item()`, `bool(tensor)`, `int(tensor)`; nonzero's output size).
HOST_READS = ("aten::_local_scalar_dense", "aten::nonzero")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `launches`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"detector config (default {DEFAULT_CONFIG}); "
                        "random weights (MODEL.WEIGHTS is not loaded)")
    parser.add_argument("--size", type=parse_size, default=(256, 320), help="image HEIGHTxWIDTH (default 256x320)")
    parser.add_argument("--dtypes", type=parse_dtypes, default=["fp32", "bf16"],
                        help="comma-separated: fp32 and/or bf16 (autocast) (default fp32,bf16)")
    parser.add_argument("--top", type=positive_int, default=15, help="operators listed by self time (default 15)")
    add_run_options(parser, "profiled per dtype", "image")


def nested_in_aten(event) -> bool:
    """Whether a profiler event runs inside an aten operator (one that a kernel of its caller may contain)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def launch_counts(events: Sequence, forwards: int) -> dict:
    """Per forward, from `torch.profiler.profile().events()` over `forwards` forwards: `ops_per_forward`, the aten
    operators called from outside any aten operator; `host_reads_per_forward`, the HOST_READS operators at any depth;
    `device_events_per_forward`, the events that ran on a CUDA device (None when there are none, as on CPU)."""
    ops = sum(1 for event in events if event.name.startswith("aten::") and not nested_in_aten(event))
    reads = sum(1 for event in events if event.name in HOST_READS)
    device = sum(1 for event in events if event.device_type == DeviceType.CUDA)
    return {"ops_per_forward": rounded(ops / forwards, 1), "host_reads_per_forward": rounded(reads / forwards, 1),
            "device_events_per_forward": rounded(device / forwards, 1) if device else None}


def top_operators(prof: profile, forwards: int, count: int, device: torch.device) -> list[list]:
    """The `count` operators with the most self time (device time on CUDA, CPU time on CPU): [name, ms per forward,
    calls per forward], most first."""
    on_device = device.type == "cuda"

    def self_us(average) -> float:
        return average.self_device_time_total if on_device else average.self_cpu_time_total

    averages = [average for average in prof.key_averages() if self_us(average) > 0]
    averages.sort(key=self_us, reverse=True)
    return [[average.key, rounded(self_us(average) / 1e3 / forwards, 3), rounded(average.count / forwards, 1)]
            for average in averages[:count]]


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One row per dtype: the counts of `launch_counts` and the top operators over `--repeats` profiled forwards."""
    torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config_file, args.opts, args.device)
    predictor, names, _ = shapes_predictor(cfg, False)
    model = predictor.model
    height, width = args.size
    chunks, inputs = detector_inputs(predictor, names, args.size, 1, torch.Generator().manual_seed(args.seed))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    common = {"bench": "launches", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "device": device.type, "threads": threads, "forwards": args.repeats, "chunks": len(chunks),
              "tokens": [len(chunk.input_ids) for chunk in chunks], **code_version(), **host_load()}
    for dtype_name in args.dtypes:
        forward = under_autocast(device, dtype_name, lambda: model(inputs))
        with torch.inference_mode():
            for _ in range(args.warmup):
                forward()
            synchronize(device)
            with profile(activities=activities) as prof:
                for _ in range(args.repeats):
                    forward()
                synchronize(device)
        emit({**common, "dtype": dtype_name, **launch_counts(prof.events(), args.repeats),
              "top": top_operators(prof, args.repeats, args.top, device)})
