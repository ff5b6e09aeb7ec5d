from .build import build_evaluator
from .results import save_results_json

__all__ = ["build_evaluator", "save_results_json"]
