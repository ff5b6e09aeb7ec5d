"""Training/inference helpers: multi-process launch and the prompt predictor."""
from .launch import launch

__all__ = ["FiberPredictor", "launch"]


def __getattr__(name: str):
    if name == "FiberPredictor":  # imported on first use: it pulls in the model code
        from .predictor import FiberPredictor

        return FiberPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
