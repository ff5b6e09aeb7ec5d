"""Training/inference helpers: multi-process launch, the trainer and the prompt predictor."""
from .launch import launch

__all__ = ["FiberPredictor", "Trainer", "launch"]


def __getattr__(name: str):
    if name == "FiberPredictor":  # imported on first use: it pulls in the model code
        from .predictor import FiberPredictor

        return FiberPredictor
    if name == "Trainer":  # imported on first use: it pulls in the model, data and evaluation code
        from .trainer import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
