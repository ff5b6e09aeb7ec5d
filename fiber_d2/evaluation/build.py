"""Choose the evaluator for a dataset from its metadata's `evaluator_type`, as Detectron2's projects do."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ..data.coarse_mapper import CoarseDatasetMapper
from .caption import CaptionEvaluator
from .flickr30k import FlickrGroundingEvaluator
from .itm_scorer import DatasetItmScorer
from .lvis_compat import StandardLVISEvaluator
from .lvis_fixed_ap import LVISFixedAPEvaluator
from .refexp import RefExpEvaluator
from .retrieval import RetrievalEvaluator
from .vqa import VQAEvaluator

# INPUT.DATASET_MAPPER_NAME values whose test outputs one evaluator scores on any dataset: a caption model is evaluated
# by CIDEr-D on any image-caption set, whatever that set's own evaluator_type (e.g. "retrieval").
_MAPPER_EVALUATOR_TYPES = {"coarse_caption": "caption"}


def evaluator_type(cfg: CfgNode, dataset_name: str) -> str | None:
    """The task's evaluator type (`_MAPPER_EVALUATOR_TYPES`), else the dataset metadata's `evaluator_type`."""
    task_type = _MAPPER_EVALUATOR_TYPES.get(cfg.INPUT.DATASET_MAPPER_NAME)
    return task_type or MetadataCatalog.get(dataset_name).get("evaluator_type")


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None, model: torch.nn.Module | None = None
) -> DatasetEvaluator:
    """The evaluator for `dataset_name` (by `evaluator_type`); COCO uses the pure-Python COCOeval (detectron2 here has
    no compiled ops). `model`: the model under test, needed only for retrieval's ITM re-ranking.

    "lvis": Detectron2's LVISEvaluator (top 300 per image), or Fixed AP (top 10,000 per category, MDETR's/FIBER's
    protocol) when `cfg.TEST.LVIS_FIXED_AP`;
    "flickr30k": phrase-grounding Recall@k (protocol from the metadata's `merged_gt`); "refexp": Precision@k with
    boxes matched per `cfg.TEST.REFEXP_BOX_MATCH`; "retrieval": image-text Recall@k both ways, with ITM re-ranking of
    the top `cfg.TEST.RETRIEVAL_ITM_TOP_K` by `model`'s ITM probability (`DatasetItmScorer`) when that is > 0;
    "vqa": VQA accuracy; "caption": CIDEr-D.
    """
    kind = evaluator_type(cfg, dataset_name)
    if kind == "coco":
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False)
    if kind == "lvis":
        if cfg.TEST.LVIS_FIXED_AP:
            return LVISFixedAPEvaluator(dataset_name, output_dir=output_folder)
        return StandardLVISEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)
    if kind == "flickr30k":
        return FlickrGroundingEvaluator(dataset_name, output_dir=output_folder)
    if kind == "refexp":
        return RefExpEvaluator(dataset_name, match=cfg.TEST.REFEXP_BOX_MATCH, output_dir=output_folder)
    if kind == "retrieval":
        top_k = cfg.TEST.RETRIEVAL_ITM_TOP_K
        if top_k <= 0:
            return RetrievalEvaluator(dataset_name, output_dir=output_folder)
        model = getattr(model, "module", model)  # DistributedDataParallel
        if not hasattr(model, "match_probability"):
            raise ValueError(
                f"TEST.RETRIEVAL_ITM_TOP_K = {top_k} needs a model with an ITM head (FiberCoarseModel) to re-rank "
                f"{dataset_name!r}, got {type(model).__name__}"
            )
        scorer = DatasetItmScorer(model, dataset_name, CoarseDatasetMapper(cfg, False, task="retrieval"))
        return RetrievalEvaluator(dataset_name, output_dir=output_folder, itm_top_k=top_k, itm_scorer=scorer)
    if kind == "vqa":
        return VQAEvaluator(dataset_name, output_dir=output_folder)
    if kind == "caption":
        return CaptionEvaluator(dataset_name, output_dir=output_folder)
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}); "
        "supported evaluator types: 'coco', 'lvis', 'flickr30k', 'refexp', 'retrieval', 'vqa', 'caption'"
    )
