"""FLOP counting with fvcore, including `aten::scaled_dot_product_attention` (fvcore has no handle for it)."""
from __future__ import annotations

import math

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

SDPA_OP = "aten::scaled_dot_product_attention"


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: MACs = batch * Lq * Lk * (Dqk + Dv).

    query [..., Lq, Dqk], key [..., Lk, Dqk], value [..., Lk, Dv]; the leading dims (batch, windows, heads)
    broadcast. Q K^T costs Lq*Lk*Dqk multiply-adds and P V costs Lq*Lk*Dv; the softmax, scale and additive mask are
    elementwise and not counted (fvcore's convention for softmax).
    """
    query, key, value = (get_shape(value) for value in inputs[:3])
    if query is None or key is None or value is None:
        raise ValueError("scaled_dot_product_attention input shapes are unknown to the tracer")
    batch = torch.broadcast_shapes(tuple(query[:-2]), tuple(key[:-2]), tuple(value[:-2]))
    return math.prod(batch) * query[-2] * key[-2] * (query[-1] + value[-1])


def flop_analysis(model: nn.Module, inputs: tuple) -> FlopCountAnalysis:
    """An fvcore FlopCountAnalysis with the SDPA handle, quiet about skipped ops (`count_flops` reports them)."""
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
