"""What every benchmark shares: argument types, the config of a random-weight model, timing, and the row fields
that say which code and machine measured (commit, threads)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from detectron2.config import CfgNode

from ..config import load_fiber_config

logger = logging.getLogger("fiber_d2.benchmark")

Emit = Callable[[dict], None]  # receives one row (a JSON-serialisable dict)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # fiber_d2/


class BenchmarkError(Exception):
    """Bad benchmark input (an option); the CLI prints its message as one line, as it does a ConfigError's."""


def load_config(config_file: str, opts: Sequence[str] = (), device: str | None = None) -> CfgNode:
    """`config_file` + `opts` over fiber_d2's defaults (`load_fiber_config`: ConfigError, one line, for a missing or
    broken file, an unknown key or a wrong type), with random weights (MODEL.WEIGHTS emptied) on `device`."""
    cfg = load_fiber_config(config_file, opts)
    if device is not None:
        cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    return cfg


def parse_size(text: str) -> tuple[int, int]:
    """'800x1333' -> (height 800, width 1333)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 800x1333)") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return height, width


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'384x384,800x1333' -> [(384, 384), (800, 1333)]."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def parse_positive_ints(text: str) -> list[int]:
    """'1,4' -> [1, 4]; every value must be positive."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: values must be positive")
    return values


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def default_device() -> str:
    """"cuda" when a GPU is available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_run_options(parser: argparse.ArgumentParser, timed: str, inputs: str, repeats: int = 3) -> None:
    """--repeats, --warmup, --threads, --device, --seed and --opts (last) of the benchmarks of a random model."""
    parser.add_argument("--repeats", type=positive_int, default=repeats, help=f"timed runs {timed} (default {repeats})")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help=f"untimed runs {timed} (default 1)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch threads (default 0: the CPUs available)")
    parser.add_argument("--device", default=default_device(), choices=["cpu", "cuda"],
                        help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the random weights and {inputs}")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (must come last)")


def available_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """torch threads: `threads`, or the CPUs available when 0; returns the number set."""
    torch.set_num_threads(threads or available_threads())
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(device: torch.device, function: Callable, *args) -> tuple[object, float]:
    """(function(*args), seconds), the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    output = function(*args)
    synchronize(device)
    return output, time.perf_counter() - start


def time_variants(variants: dict[str, Callable], inputs: tuple, repeats: int, warmup: int, device: torch.device,
                  inference: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each variant (under `torch.inference_mode` when `inference`, else with autograd on);
    repeats are interleaved across variants so that drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode() if inference else contextlib.nullcontext():
        for model in variants.values():
            for _ in range(warmup):
                model(*inputs)
        for repeat in range(repeats):
            for name, model in variants.items():
                times[name].append(timed_call(device, model, *inputs)[1])
                logger.info("  %s repeat %d/%d: %.1f ms", name, repeat + 1, repeats, 1e3 * times[name][-1])
    return times


def median_ms(seconds: Sequence[float]) -> float:
    """The median of times in seconds, in ms."""
    return 1e3 * statistics.median(seconds)


def rounded(value: float, digits: int = 4) -> float:
    """`value` rounded for a row (4 decimals unless told)."""
    return round(value, digits)


def code_version() -> dict:
    """{"commit": short hash of the checkout fiber_d2 runs from (None outside git), "modified": its tracked files
    under fiber_d2/ that differ from that commit}: a later row is compared with an earlier one by these."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".") or ""
    modified = sorted(line[3:] for line in status.splitlines())
    return {"commit": commit.strip() if commit else None, "modified": modified}


def host_load() -> dict:
    """{"load_1min": the host's 1-minute load average (runnable processes; None where unknown), "cpus": the CPUs
    this process may use}: a load above `cpus` means the run shared its CPUs."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"load_1min": load, "cpus": available_threads()}
