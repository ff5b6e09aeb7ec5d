"""`train`: step time and images/s of the training loop (`Trainer.run_step`: next batch, forward, backward, metrics,
optimizer step), the data loading included and excluded.

Two phases. `loader`: steps read the config's real training loader (its workers included), and the batches they get
are kept. `fixed`: the same batches replayed from memory in the same order, so both phases do the same work and their
difference is the wait for data. With `--baseline-opts`, a baseline model (the same config plus those overrides, e.g.
an optimisation switched off) replays the same batches too, its steps alternating with ours, so that drifts of a
shared machine hit both alike."""
from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage

from ..engine.allocator import keep_freed_cpu_memory
from ..engine.trainer import Trainer
from .common import (
    Emit,
    code_version,
    host_load,
    default_device,
    load_config,
    logger,
    non_negative_int,
    positive_int,
    rounded,
    set_threads,
    timed_call,
)

HELP = "training step time and images/s, data loading included and excluded"
DEFAULT_CONFIG = "configs/fiber_shapes/fiber_tiny_grounding_stage1.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `train`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG,
                        help=f"training config (default {DEFAULT_CONFIG}); random init (MODEL.WEIGHTS is not loaded)")
    parser.add_argument("--iters", type=positive_int, default=20, help="timed steps per phase and model (default 20)")
    parser.add_argument("--warmup", type=non_negative_int, default=10,
                        help="untimed steps before them (default 10)")
    parser.add_argument("--amp", action="store_true",
                        help="SOLVER.AMP.ENABLED True (the trainer's mixed precision); without it False, whatever the "
                             "config says")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch threads (default 0: the CPUs available)")
    parser.add_argument("--device", default=default_device(), choices=["cpu", "cuda"],
                        help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (each model gets the same)")
    parser.add_argument("--baseline-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides of a baseline model timed against ours on the same batches")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... of both models (must come last)")


def recording_trainer(kept: list) -> type[Trainer]:
    """Trainer reading the config's training loader, appending every batch it gets to `kept`."""

    class RecordingTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg: CfgNode) -> Iterator:
            return recording(super().build_train_loader(cfg), kept)

    return RecordingTrainer


def replaying_trainer(batches: list) -> type[Trainer]:
    """Trainer reading `batches` from memory, in order, in a loop."""

    class ReplayingTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg: CfgNode) -> Iterator:
            return itertools.cycle(batches)

    return ReplayingTrainer


def recording(loader: Iterable, kept: list) -> Iterator:
    """Yield the loader's batches, appending each to `kept`."""
    for batch in loader:
        kept.append(batch)
        yield batch


def build_trainer(trainer_class: type[Trainer], cfg: CfgNode, seed: int) -> Trainer:
    """A trainer whose model starts from the weights every model of this run starts from (`seed`)."""
    torch.manual_seed(seed)
    return trainer_class(cfg)


def time_steps(trainers: dict[str, Trainer], steps: int, warmup: int, device: torch.device,
               storage: EventStorage) -> dict[str, dict]:
    """Run warmup + steps training steps of each trainer, alternating; per trainer the timed steps' wall seconds
    ("step"), this process's CPU seconds in them ("cpu": all its threads, not the loader's worker processes), and
    the loader waits the step measured and put in `storage` ("data"); on CUDA also the peak of the device memory
    allocated during each step, in bytes ("peak": every tensor of this process, the other trainers' included)."""
    cuda = device.type == "cuda"
    times = {name: {"step": [], "cpu": [], "data": [], "peak": []} for name in trainers}
    for step in range(warmup + steps):
        for name, trainer in trainers.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            cpu = time.process_time()
            seconds = timed_call(device, trainer.run_step)[1]
            cpu = time.process_time() - cpu
            trainer.iter += 1
            if step >= warmup:
                times[name]["step"].append(seconds)
                times[name]["cpu"].append(cpu)
                times[name]["data"].append(storage.history("data_time").latest())
                if cuda:
                    times[name]["peak"].append(torch.cuda.max_memory_allocated(device))
            logger.info("  %s %s %d/%d: %.1f ms", name, "step" if step >= warmup else "warmup",
                        step + 1 - warmup * (step >= warmup), steps if step >= warmup else warmup, 1e3 * seconds)
    return times


def step_row(common: dict, variant: str, mode: str, times: dict, batch: int, params: int) -> dict:
    """One model and phase: median and fastest step, median data wait, images/s at the median step, and the largest
    per-step peak of CUDA memory in MiB (None on the CPU)."""
    step = statistics.median(times["step"])
    peak = rounded(max(times["peak"]) / 2**20, 1) if times["peak"] else None
    return {**common, "metric": "step", "variant": variant, "mode": mode, "params": params,
            "step_ms": rounded(1e3 * step, 2), "step_ms_min": rounded(1e3 * min(times["step"]), 2),
            "cpu_ms": rounded(1e3 * statistics.median(times["cpu"]), 2),
            "data_ms": rounded(1e3 * statistics.median(times["data"]), 2),
            "images_per_s": rounded(batch / step, 3), "peak_memory_mib": peak}


def batch_pixels(batches: list[list[dict]]) -> float:
    """Mean pixels per image (H x W of the mapped images) over the batches."""
    sizes = [x["image"].shape[-2] * x["image"].shape[-1] for batch in batches for x in batch]
    return statistics.mean(sizes)


def model_configs(args: argparse.Namespace) -> tuple[CfgNode, CfgNode]:
    """Ours: the config + `--opts` + `--amp`; the baseline's: the same + `--baseline-opts`, which may override
    `--amp` (`--amp --baseline-opts SOLVER.AMP.ENABLED False`: mixed precision against float32)."""
    opts = [*args.opts, "SOLVER.AMP.ENABLED", str(args.amp)]
    return (load_config(args.config_file, opts, args.device),
            load_config(args.config_file, [*opts, *args.baseline_opts], args.device))


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One `step` row per model and phase, then one `summary` row with the ratios."""
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg, baseline_cfg = model_configs(args)
    if cfg.KEEP_FREED_CPU_MEMORY:  # as train_net.py does; for the whole process, the baseline model's steps too
        keep_freed_cpu_memory()
    batch = cfg.SOLVER.IMS_PER_BATCH
    kept: list = []
    with tempfile.TemporaryDirectory() as output_dir, EventStorage(0) as storage:
        for config in (cfg, baseline_cfg):
            config.OUTPUT_DIR = output_dir  # the trainer's writers open files there; nothing is kept
        logger.info("%s: %d warmup + %d timed steps at batch %d on %s, %d threads%s", args.config_file, args.warmup,
                    args.iters, batch, device, threads, ", AMP" if args.amp else "")
        trainer = build_trainer(recording_trainer(kept), cfg, args.seed)
        loader_times = time_steps({"ours": trainer}, args.iters, args.warmup, device, storage)["ours"]
        del trainer
        gc.collect()  # the trainer's hooks hold it in reference cycles; its loader workers end with it
        trainers = {"ours": build_trainer(replaying_trainer(kept), cfg, args.seed)}
        if args.baseline_opts:
            trainers["baseline"] = build_trainer(replaying_trainer(kept), baseline_cfg, args.seed)
        fixed_times = time_steps(trainers, args.iters, args.warmup, device, storage)
        params = {name: sum(p.numel() for p in trainer.model.parameters()) for name, trainer in trainers.items()}
    common = {"bench": "train", "model": Path(args.config_file).stem, "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
              "device": device.type, "amp": args.amp, "threads": threads, "batch": batch,
              "workers": cfg.DATALOADER.NUM_WORKERS, "warmup": args.warmup, "iters": args.iters,
              "pixels_per_image": rounded(batch_pixels(kept[args.warmup:]), 1), **code_version(), **host_load(),
              "opts": list(args.opts), "baseline_opts": list(args.baseline_opts)}
    emit(step_row(common, "ours", "loader", loader_times, batch, params["ours"]))
    for name, times in fixed_times.items():
        emit(step_row(common, name, "fixed", times, batch, params[name]))
    ours_loader, ours_fixed = (statistics.median(times["step"]) for times in (loader_times, fixed_times["ours"]))
    summary = {**common, "metric": "summary", "loader_over_fixed": rounded(ours_loader / ours_fixed)}
    if "baseline" in fixed_times:
        for key, suffix in (("step", ""), ("cpu", "_cpu")):
            ours, baseline = fixed_times["ours"][key], fixed_times["baseline"][key]
            summary[f"ours_over_baseline{suffix}"] = rounded(statistics.median(ours) / statistics.median(baseline))
            summary[f"ours_over_baseline{suffix}_paired"] = rounded(
                statistics.median(a / b for a, b in zip(ours, baseline)))
    emit(summary)
