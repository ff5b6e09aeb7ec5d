"""Collect per-record evaluator state from every process onto the main process."""
from __future__ import annotations

from typing import Any

from detectron2.utils import comm


def gather_unique(per_record: dict[Any, Any]) -> dict[Any, Any] | None:
    """Merge each process's `{record key: value}` on the main process; None on the others.

    A key seen by several processes (Detectron2's inference sampler pads the last batch) keeps the value of the
    lowest-ranked process that has it, so every record counts once.
    """
    gathered = comm.gather(per_record, dst=0)
    if not comm.is_main_process():
        return None
    merged: dict[Any, Any] = {}
    for part in gathered:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged
