"""lvis 0.5.3 (the only release) with NumPy >= 1.24, and Detectron2's standard LVISEvaluator on top of it."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lvis.eval
import numpy as np
from detectron2.evaluation import LVISEvaluator


class _NumpyWithFloat:
    """numpy plus the `np.float` alias (removed in NumPy 1.24) that `LVISEval.accumulate` still uses."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@contextlib.contextmanager
def numpy_float_for_lvis() -> Iterator[None]:
    """Let `lvis.eval` (only it) see `np.float` while LVISEval runs, when the installed NumPy no longer has it."""
    original = lvis.eval.np
    if hasattr(original, "float"):
        yield
        return
    lvis.eval.np = _NumpyWithFloat()
    try:
        yield
    finally:
        lvis.eval.np = original


class StandardLVISEvaluator(LVISEvaluator):
    """Detectron2's LVISEvaluator (top DETECTIONS_PER_IMAGE per image), runnable with the installed NumPy."""

    def evaluate(self):
        with numpy_float_for_lvis():
            return super().evaluate()
