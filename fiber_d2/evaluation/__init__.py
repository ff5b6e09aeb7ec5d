from .build import build_evaluator
from .caption import CaptionEvaluator
from .flickr30k import FlickrGroundingEvaluator
from .refexp import RefExpEvaluator
from .results import save_results_json
from .retrieval import RetrievalEvaluator
from .vqa import VQAEvaluator

__all__ = [
    "CaptionEvaluator",
    "FlickrGroundingEvaluator",
    "RefExpEvaluator",
    "RetrievalEvaluator",
    "VQAEvaluator",
    "build_evaluator",
    "save_results_json",
]
