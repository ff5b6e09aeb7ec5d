"""`checkouts`: the CPU training step of this checkout against another one (an older commit's worktree, say), each
in processes of its own, alternating (baseline, ours, baseline, ours, ...), so that a drift of the machine's speed
hits both. Each process (`tools/checkout_step.py`) imports its checkout's fiber_d2 and builds that checkout's trainer,
optimizer and loader from the same config file name inside it, so changes of the loader (e.g. how batches are padded)
count too, which `train --baseline-opts` (one loader for both models) cannot show."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from .common import BenchmarkError, Emit, PACKAGE_ROOT, host_load, logger, non_negative_int, positive_int, rounded

HELP = "CPU training step of this checkout against another checkout's, processes alternating"
DEFAULT_CONFIG = "configs/fiber_shapes/fiber_tiny_grounding_stage1.yaml"
STEP_SCRIPT = PACKAGE_ROOT.parent / "tools" / "checkout_step.py"  # PACKAGE_ROOT: fiber_d2/


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `checkouts`."""
    parser.add_argument("--baseline", required=True, type=Path,
                        help="the other checkout's root (e.g. `git worktree add /tmp/base COMMIT`)")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG,
                        help=f"config path inside each checkout (default {DEFAULT_CONFIG}); random init")
    parser.add_argument("--processes", type=positive_int, default=3, help="processes per checkout (default 3)")
    parser.add_argument("--iters", type=positive_int, default=20, help="timed steps per process (default 20)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps before them (default 3)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--ours-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides KEY VALUE ... of this checkout only (e.g. SOLVER.AMP.ENABLED True)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... of both checkouts (must come last)")


def commit_of(root: Path) -> str | None:
    """The short commit hash of the checkout at `root` (None outside git)."""
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def process_steps(root: Path, args: argparse.Namespace, opts: list[str]) -> dict:
    """One process of the checkout at `root` with config overrides `opts`: {"cpu_ms": [per timed step],
    "pixels_per_image", "batch"}."""
    command = [sys.executable, str(STEP_SCRIPT), str(root), args.config_file, str(args.iters), str(args.warmup),
               str(args.threads), *opts]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkError(f"checkouts: the training step of {root} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One `process` row per process, then a `summary` row: ours over the baseline, medians of the processes'
    median CPU ms per step."""
    roots = {"baseline": args.baseline.resolve(), "ours": PACKAGE_ROOT.parent.resolve()}
    for name, root in roots.items():
        if not (root / args.config_file).is_file():
            raise BenchmarkError(f"checkouts: {name} checkout {root} has no config {args.config_file}")
    common = {"bench": "checkouts", "model": Path(args.config_file).stem, "device": "cpu", "threads": args.threads,
              "warmup": args.warmup, "iters": args.iters, "opts": list(args.opts), "ours_opts": list(args.ours_opts)}
    commits = {name: commit_of(root) for name, root in roots.items()}
    medians: dict[str, list[float]] = {"baseline": [], "ours": []}
    for index in range(args.processes):
        for name, root in roots.items():
            steps = process_steps(root, args, args.opts + (args.ours_opts if name == "ours" else []))
            medians[name].append(statistics.median(steps["cpu_ms"]))
            logger.info("checkouts: %s process %d: %.1f CPU ms per step", name, index + 1, medians[name][-1])
            emit({**common, "metric": "process", "variant": name, "commit": commits[name], "process": index,
                  "batch": steps["batch"], "pixels_per_image": rounded(steps["pixels_per_image"], 1),
                  "cpu_ms": rounded(medians[name][-1], 2), **host_load()})
    ours, baseline = (statistics.median(medians[name]) for name in ("ours", "baseline"))
    emit({**common, "metric": "summary", "commits": commits, "cpu_ms_ours": rounded(ours, 2),
          "cpu_ms_baseline": rounded(baseline, 2), "ours_over_baseline_cpu": rounded(ours / baseline), **host_load()})
