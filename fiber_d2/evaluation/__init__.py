from .build import build_evaluator
from .caption import CaptionEvaluator
from .flickr30k import FlickrGroundingEvaluator
from .lvis_fixed_ap import LVISFixedAPEvaluator, fixed_ap_top_k
from .refexp import RefExpEvaluator
from .results import save_results_json
from .retrieval import RetrievalEvaluator
from .vqa import VQAEvaluator

__all__ = [
    "CaptionEvaluator",
    "FlickrGroundingEvaluator",
    "LVISFixedAPEvaluator",
    "RefExpEvaluator",
    "RetrievalEvaluator",
    "VQAEvaluator",
    "build_evaluator",
    "fixed_ap_top_k",
    "save_results_json",
]
