from .build import build_evaluator
from .flickr30k import FlickrGroundingEvaluator
from .refexp import RefExpEvaluator
from .results import save_results_json

__all__ = ["FlickrGroundingEvaluator", "RefExpEvaluator", "build_evaluator", "save_results_json"]
