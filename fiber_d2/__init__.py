"""fiber_d2: FIBER (Fusion-In-the-Backbone transformER, Dou et al., NeurIPS 2022) for Detectron2."""
__version__ = "0.1.0"

__all__ = ["FiberPredictor", "__version__"]


def __getattr__(name: str):
    if name == "FiberPredictor":  # `fiber_d2.FiberPredictor`, imported on first use (it pulls in torch and detectron2)
        from .engine.predictor import FiberPredictor

        return FiberPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
