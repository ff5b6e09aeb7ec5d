"""Collect per-record evaluator state from every process onto the main process (or onto every process)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from detectron2.utils import comm


def gather_unique(per_record: dict[Any, Any], everywhere: bool = False) -> dict[Any, Any] | None:
    """Merge each process's `{record key: value}` on the main process; None on the others (with `everywhere`, every
    process gets the merged dict, for evaluators whose last step runs on all processes).

    A key seen by several processes (Detectron2's inference sampler pads the last batch) keeps the value of the
    lowest-ranked process that has it, so every record counts once.
    """
    if everywhere:
        gathered = comm.all_gather(per_record)
    else:
        gathered = comm.gather(per_record, dst=0)
        if not comm.is_main_process():
            return None
    merged: dict[Any, Any] = {}
    for part in gathered:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def score_in_shares(scorer: Callable[[list, list], torch.Tensor], first: list, second: list) -> torch.Tensor:
    """`scorer(first, second) -> [P]` computed by all processes together: each scores one contiguous share of the P
    items (order kept, so items sorted by image stay together), and every process gets all P scores. Every process
    must call it with the same lists."""
    world, rank = comm.get_world_size(), comm.get_rank()
    begin, end = rank * len(first) // world, (rank + 1) * len(first) // world
    share = torch.as_tensor(scorer(first[begin:end], second[begin:end])).float().cpu()
    return torch.cat(comm.all_gather(share)) if world > 1 else share
