"""CoarseStageHook: FIBER's coarse stage (ITC/ITM/MLM on image-text pairs) inside a detector's train_net.py run.

The hook wraps the trainer's detector backbone in a FiberCoarseModel (the weights are shared, not copied), with its
own loader (CoarseDatasetMapper), AdamW optimizer and warmup-cosine schedule (COARSE_STAGE.*):
  "before"      all coarse iterations run in `before_train`, as FIBER's recipe (coarse, then fine from its weights).
                A checkpoint `model_coarse_<iter>.pth` is saved every CHECKPOINT_PERIOD iterations and at the end
                (`model_coarse_final.pth`); it holds the detector (with the coarse-trained backbone) and the hook's
                state, so `--resume` continues an interrupted coarse stage.
  "interleave"  one coarse iteration after every PERIOD fine iterations, until MAX_ITER coarse iterations ran.
The hook's state (heads, queue, optimizer, schedule, iteration, the ITM negatives' generator) goes into the trainer's
checkpoints through Detectron2's hook state (`HookBase.state_dict`), and `--resume` restores it.
Losses go to the metrics as `coarse/loss_*`, `coarse/total_loss`, `coarse/lr`: in "interleave" mode into the trainer's
EventStorage at the fine iteration; in "before" mode into an EventStorage of the coarse iterations (with
`coarse/time`, seconds per iteration), written to the same metrics.json and TensorBoard directory and printed by
CoarseMetricPrinter.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, EventWriter, JSONWriter, TensorboardXWriter, get_event_storage
from torch.nn.parallel import DistributedDataParallel

from ..data import build_coarse_train_loader
from ..modeling.coarse.model import FiberCoarseModel

logger = logging.getLogger(__name__)

MODES = ("before", "interleave")


def coarse_solver_cfg(cfg: CfgNode) -> CfgNode:
    """A copy of `cfg` whose SOLVER holds the coarse schedule (for Detectron2's `build_lr_scheduler`)."""
    coarse = cfg.COARSE_STAGE
    solver_cfg = cfg.clone()
    solver_cfg.defrost()
    solver_cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    solver_cfg.SOLVER.MAX_ITER = coarse.MAX_ITER
    solver_cfg.SOLVER.BASE_LR = coarse.BASE_LR
    solver_cfg.SOLVER.WARMUP_ITERS = coarse.WARMUP_ITERS
    solver_cfg.SOLVER.WARMUP_FACTOR = 0.001
    solver_cfg.SOLVER.WARMUP_METHOD = "linear"
    solver_cfg.SOLVER.STEPS = ()
    solver_cfg.freeze()
    return solver_cfg


class CoarseStageHook(HookBase):
    """Runs FiberCoarseModel on the detector's backbone before or between the fine iterations (module docstring)."""

    def __init__(self, cfg: CfgNode, model: torch.nn.Module) -> None:
        coarse = cfg.COARSE_STAGE
        if coarse.MODE not in MODES:
            raise ValueError(f"COARSE_STAGE.MODE must be one of {MODES}, got {coarse.MODE!r}")
        if coarse.MAX_ITER <= 0 or not coarse.DATASETS:
            raise ValueError("COARSE_STAGE.ENABLED needs COARSE_STAGE.MAX_ITER > 0 and COARSE_STAGE.DATASETS")
        if coarse.MODE == "interleave" and coarse.PERIOD < 1:
            raise ValueError(f"COARSE_STAGE.PERIOD must be >= 1, got {coarse.PERIOD}")
        world_size = comm.get_world_size()
        if coarse.IMS_PER_BATCH % world_size:
            raise ValueError(f"COARSE_STAGE.IMS_PER_BATCH ({coarse.IMS_PER_BATCH}) must divide by the {world_size} processes")
        detector = model.module if isinstance(model, DistributedDataParallel) else model
        self.cfg = cfg
        self.mode = coarse.MODE
        self.period = coarse.PERIOD
        self.max_iter = coarse.MAX_ITER
        self.log_period = coarse.LOG_PERIOD
        self.checkpoint_period = coarse.CHECKPOINT_PERIOD
        self.model = FiberCoarseModel(cfg, backbone=detector.backbone).to(detector.device)
        self.model.train()
        self.model.itm_generator = torch.Generator(device=detector.device).manual_seed(max(cfg.SEED, 0))
        params = get_default_optimizer_params(
            self.model, base_lr=coarse.BASE_LR, weight_decay=coarse.WEIGHT_DECAY, weight_decay_norm=0.0,
            weight_decay_bias=0.0,
        )
        self.optimizer = torch.optim.AdamW(params, lr=coarse.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))
        self.scheduler = build_lr_scheduler(coarse_solver_cfg(cfg), self.optimizer)
        self.iter = 0
        self._data = None

    # ----- checkpointing -----

    def state_dict(self) -> dict[str, Any]:
        """Everything of the coarse stage that is not the shared backbone."""
        own = {k: v for k, v in self.model.state_dict().items() if not k.startswith("backbone.")}
        return {
            "model": own,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iter,
            "itm_generator": self.model.itm_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        incompatible = self.model.load_state_dict(state["model"], strict=False)
        missing = [k for k in incompatible.missing_keys if not k.startswith("backbone.")]
        if missing or incompatible.unexpected_keys:
            raise KeyError(
                f"coarse-stage state does not match the model: missing {missing[:5]}, "
                f"unexpected {incompatible.unexpected_keys[:5]}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iter = int(state["iteration"])
        self.model.itm_generator.set_state(state["itm_generator"])
        logger.info("Coarse stage resumed at iteration %d of %d", self.iter, self.max_iter)

    # ----- the hook -----

    def before_train(self) -> None:
        if self.iter < self.max_iter and self.cfg.MODEL.WEIGHTS:  # e.g. a demo config reused to fine-tune
            logger.warning(
                "COARSE_STAGE.ENABLED: coarse iterations %d to %d will run %s the fine-tuning of MODEL.WEIGHTS %s; "
                "pass COARSE_STAGE.ENABLED False to fine-tune only",
                self.iter, self.max_iter, "before" if self.mode == "before" else "interleaved with",
                self.cfg.MODEL.WEIGHTS,
            )
        if self.mode != "before" or self.iter >= self.max_iter:
            return
        first = self.iter
        logger.info("Coarse stage: iterations %d to %d before the fine stage", first, self.max_iter)
        writers = self._writers()
        start = time.perf_counter()
        with EventStorage(self.iter) as storage:
            while self.iter < self.max_iter:
                storage.iter = self.iter  # the coarse iteration being run (0-based)
                step_start = time.perf_counter()
                metrics = self.run_step()
                _record(storage, {**metrics, "coarse/time": time.perf_counter() - step_start})
                if self.iter % self.log_period == 0 or self.iter == self.max_iter:
                    for writer in writers:
                        writer.write()
                if self.iter % self.checkpoint_period == 0 and self.iter < self.max_iter:
                    self._save(f"model_coarse_{self.iter:07d}")  # named by the coarse iterations done
        for writer in writers:
            writer.close()
        self._save("model_coarse_final")
        logger.info("Coarse stage done: iterations %d to %d in %.1f s", first, self.max_iter, time.perf_counter() - start)

    def after_step(self) -> None:
        if self.mode != "interleave" or self.iter >= self.max_iter or (self.trainer.iter + 1) % self.period:
            return
        _record(self.trainer.storage, self.run_step())

    def run_step(self) -> dict[str, float]:
        """One coarse iteration: forward, backward, gradient average over processes, AdamW step, schedule step."""
        if self._data is None:
            self._data = iter(
                build_coarse_train_loader(self.cfg, self.cfg.COARSE_STAGE.DATASETS, self.cfg.COARSE_STAGE.IMS_PER_BATCH)
            )
        batch = next(self._data)
        losses = self.model(batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"coarse stage: loss became {total.item()} at coarse iteration {self.iter}: {losses}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._average_gradients()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.iter += 1
        metrics = {f"coarse/{name}": value.item() for name, value in losses.items()}
        metrics.update({"coarse/total_loss": total.item(), "coarse/lr": lr})
        return metrics

    def _average_gradients(self) -> None:
        """Average the gradients over processes (the coarse model is not wrapped in DDP: its backbone is shared)."""
        world_size = comm.get_world_size()
        if world_size == 1:
            return
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad.div_(world_size)

    def _save(self, name: str) -> None:
        """Save the trainer's checkpoint (detector + hooks) so that a resume restarts the fine stage at its start.

        The trainer records its iteration as the last one finished; none of the fine stage has run yet.
        """
        fine_iter = self.trainer.iter
        self.trainer.iter = self.trainer.start_iter - 1
        try:
            self.trainer.checkpointer.save(name)
        finally:
            self.trainer.iter = fine_iter

    def _writers(self) -> list:
        if not comm.is_main_process():
            return []
        output_dir = self.cfg.OUTPUT_DIR
        return [
            CoarseMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(output_dir, "metrics.json")),
            TensorboardXWriter(output_dir),
        ]


def _record(storage: EventStorage, metrics: dict[str, float]) -> None:
    """Put a coarse iteration's scalars; the lr unsmoothed (as Detectron2 records `lr`), so metrics.json holds the
    lr of that step."""
    storage.put_scalars(**{name: value for name, value in metrics.items() if name != "coarse/lr"})
    storage.put_scalar("coarse/lr", metrics["coarse/lr"], smoothing_hint=False)


class CoarseMetricPrinter(EventWriter):
    """The console line of the "before" mode's coarse iterations: ETA, iteration, the median of each coarse loss over
    the last `window_size` iterations, seconds per iteration and the coarse lr (`coarse/*` scalars; Detectron2's
    CommonMetricPrinter reads the fine stage's `lr` and `time`, which the coarse storage does not have)."""

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self.max_iter = max_iter
        self.window_size = window_size

    def write(self) -> None:
        storage = get_event_storage()
        histories = storage.histories()
        if "coarse/time" not in histories:
            return
        seconds_per_iter = histories["coarse/time"].median(self.window_size)
        eta = datetime.timedelta(seconds=int(seconds_per_iter * (self.max_iter - storage.iter - 1)))
        losses = "  ".join(
            f"{name}: {history.median(self.window_size):.4g}" for name, history in histories.items() if "loss" in name
        )
        logger.info(
            " eta: %s  coarse iter: %d/%d  %s  time: %.4f  lr: %.5g",
            eta, storage.iter + 1, self.max_iter, losses, seconds_per_iter, histories["coarse/lr"].latest(),
        )
