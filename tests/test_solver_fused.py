"""build_optimizer takes PyTorch's fused optimizer step where it can, with the results of the per-parameter loop."""
from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg

from fiber_d2.config import add_fiber_config
from fiber_d2.solver import build_optimizer
from fiber_d2.solver.build import fused_supported


def _cfg(**solver):
    cfg = get_cfg()
    add_fiber_config(cfg)
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _train(optimizer_cfg, fused: bool | None, steps: int = 4) -> list[torch.Tensor]:
    """`steps` optimizer steps on a fixed regression batch; fused None: build_optimizer's choice."""
    model = _model()
    optimizer = build_optimizer(optimizer_cfg, model)
    if fused is not None:
        for group in optimizer.param_groups:
            group["fused"] = fused
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)
    for _ in range(steps):
        optimizer.zero_grad()
        (10 * (model(inputs) - targets).pow(2).mean()).backward()  # gradients large enough to be clipped
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "solver",
    [
        dict(OPTIMIZER="ADAMW", BASE_LR=1e-2, WEIGHT_DECAY=0.05),
        dict(OPTIMIZER="SGD", BASE_LR=1e-2, MOMENTUM=0.9, WEIGHT_DECAY=1e-4),
    ],
    ids=["adamw", "sgd"],
)
@pytest.mark.parametrize("clip", ["none", "full_model", "value"])
def test_fused_step_on_cpu_equals_the_per_parameter_loop(solver, clip):
    cfg = _cfg(**solver)
    if clip != "none":
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.05
    optimizer = build_optimizer(cfg, _model())
    assert all(group["fused"] for group in optimizer.param_groups)
    ours, loop = _train(cfg, None), _train(cfg, False)
    initial = [p.detach() for p in _model().parameters()]
    for a, b, start in zip(ours, loop, initial):
        assert (b - start).abs().max() > 1e-4  # the parameters moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_only_when_every_trainable_parameter_supports_it():
    model = _model()
    assert fused_supported(model)
    model[0].weight = torch.nn.Parameter(model[0].weight.detach().to("meta"))
    assert not fused_supported(model)  # a device without fused kernels here
    model[0].weight = torch.nn.Parameter(torch.ones(5, 6, dtype=torch.float64))
    assert fused_supported(model)
    model[0].weight = torch.nn.Parameter(torch.ones(5, 6, dtype=torch.complex64))
    assert not fused_supported(model)  # not floating point
    frozen = _model()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    assert not fused_supported(frozen)  # nothing to optimise
