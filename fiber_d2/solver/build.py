"""Optimizers selected by `SOLVER.OPTIMIZER`, with per-parameter lr factors from `SOLVER.LR_MULTIPLIERS`.

The optimizers use PyTorch's fused kernels (one kernel per parameter group instead of about ten per parameter) when
every trainable parameter is a floating-point tensor on the CPU or a CUDA device; the results equal the per-parameter
loop to float rounding. On a 2-core CPU the per-parameter loop was about a fifth of a FIBER-tiny training step's
operations."""
from __future__ import annotations

import re
from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

# Devices with fused optimizer kernels and foreach (multi-tensor) gradient norms.
FUSED_DEVICE_TYPES = ("cpu", "cuda")


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over Detectron2's parameter groups (norm/bias weight decay and lr factors)."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    apply_lr_multipliers(params, model, cfg.SOLVER.LR_MULTIPLIERS)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        optimizer_class = torch.optim.AdamW
        kwargs = {"betas": tuple(cfg.SOLVER.BETAS)}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = with_full_model_gradient_clipping(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
    return optimizer_class(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused_supported(model), **kwargs
    )


def fused_supported(model: torch.nn.Module) -> bool:
    """Whether every trainable parameter can take a fused optimizer step (floating point, on the CPU or CUDA)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICE_TYPES for p in parameters
    )


def with_full_model_gradient_clipping(
    optimizer_class: type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> type[torch.optim.Optimizer]:
    """An optimizer class whose step() first clips the norm of all gradients together (FIBER/GLIP: L2 norm 1.0).

    Detectron2's CLIP_TYPE "value" / "norm" clip each parameter separately; CLIP_TYPE "full_model" selects this.
    """

    class FullModelClippedOptimizer(optimizer_class):
        def step(self, closure=None):
            parameters = [p for group in self.param_groups for p in group["params"]]
            foreach = all(p.device.type in FUSED_DEVICE_TYPES for p in parameters)
            torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, foreach=foreach)
            return super().step(closure)

    FullModelClippedOptimizer.__name__ = f"{optimizer_class.__name__}WithFullModelClipping"
    return FullModelClippedOptimizer


def apply_lr_multipliers(
    param_groups: list[dict], model: torch.nn.Module, multipliers: Sequence[Sequence]
) -> None:
    """Multiply the lr of each group's parameters whose name matches a (regex, factor) pair; first match wins.

    Groups with several parameters are split so that each parameter gets its own factor. A regex that matches no
    trainable parameter is an error (a typo would otherwise silently train at the wrong rate).
    """
    if not multipliers:
        return
    rules = []
    for rule in multipliers:
        if len(rule) != 2:
            raise ValueError(f"SOLVER.LR_MULTIPLIERS entries are (regex, factor) pairs, got {rule!r}")
        rules.append((re.compile(rule[0]), float(rule[1])))
    names = {id(p): n for n, p in model.named_parameters()}
    used = set()
    split_groups = []
    for group in param_groups:
        for parameter in group["params"]:
            new_group = {**group, "params": [parameter]}
            for index, (pattern, factor) in enumerate(rules):
                if pattern.search(names[id(parameter)]):
                    new_group["lr"] = group["lr"] * factor
                    used.add(index)
                    break
            split_groups.append(new_group)
    unused = [multipliers[i][0] for i in range(len(rules)) if i not in used]
    if unused:
        raise ValueError(f"SOLVER.LR_MULTIPLIERS regexes {unused} match no trainable parameter of the model")
    param_groups[:] = split_groups
