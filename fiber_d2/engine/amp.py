"""Mixed-precision training on any device: Detectron2's AMPTrainer with a chosen autocast dtype.

Detectron2 0.6's AMPTrainer (what DefaultTrainer builds when SOLVER.AMP.ENABLED) asserts CUDA and always autocasts
to float16 with `torch.cuda.amp`; on a CPU it stops at its first step. FiberAMPTrainer runs the same step (forward
under autocast, scaled backward, scaler step and update, metrics) under `torch.autocast(device_type, dtype)` on the
model's device, with a gradient scaler only for float16 (bfloat16 has float32's exponent range and needs none),
unscaled before the optimizer step so that SOLVER.CLIP_GRADIENTS clips the true gradients.
SOLVER.AMP.PRECISION chooses the dtype (`amp_precision`).
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_precision(cfg: CfgNode) -> torch.dtype:
    """SOLVER.AMP.PRECISION as a dtype on MODEL.DEVICE: "auto" is bfloat16 on CPUs and on GPUs that support it
    (compute capability >= 8.0), float16 on older GPUs."""
    name = cfg.SOLVER.AMP.PRECISION
    if name == "auto":
        device = torch.device(cfg.MODEL.DEVICE)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name not in PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be 'auto', 'bfloat16' or 'float16', got {name!r}")
    return PRECISIONS[name]


class FiberAMPTrainer(AMPTrainer):
    """AMPTrainer whose step autocasts to `precision` on the model's device (CPU or GPU); see the module doc."""

    def __init__(
        self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, precision: torch.dtype
    ) -> None:
        if precision not in PRECISIONS.values():
            raise ValueError(f"FiberAMPTrainer precision must be torch.bfloat16 or torch.float16, got {precision}")
        self.device_type = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler)
        self.precision = precision

    def run_step(self) -> None:
        """AMPTrainer.run_step with `torch.autocast(device_type, precision)` instead of CUDA float16."""
        assert self.model.training, "[FiberAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        # Unscaled before the step, so that gradient clipping inside optimizer.step sees the true gradients (a fused
        # optimizer would otherwise get them still scaled).
        self.grad_scaler.unscale_(self.optimizer)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
