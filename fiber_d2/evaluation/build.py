"""Choose the evaluator for a dataset from its metadata's `evaluator_type`, as Detectron2's projects do."""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from .caption import CaptionEvaluator
from .flickr30k import FlickrGroundingEvaluator
from .lvis_compat import StandardLVISEvaluator
from .lvis_fixed_ap import LVISFixedAPEvaluator
from .refexp import RefExpEvaluator
from .retrieval import ItmScorer, RetrievalEvaluator
from .vqa import VQAEvaluator


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None, itm_scorer: ItmScorer | None = None
) -> DatasetEvaluator:
    """The evaluator for `dataset_name`; COCO uses the pure-Python COCOeval (detectron2 here has no compiled ops).

    "lvis": Detectron2's LVISEvaluator (top 300 per image), or Fixed AP (top 10,000 per category, MDETR's/FIBER's
    protocol) when `cfg.TEST.LVIS_FIXED_AP`;
    "flickr30k": phrase-grounding Recall@k (protocol from the metadata's `merged_gt`); "refexp": Precision@k with
    boxes matched per `cfg.TEST.REFEXP_BOX_MATCH`; "retrieval": image-text Recall@k both ways, with ITM re-ranking of
    the top `cfg.TEST.RETRIEVAL_ITM_TOP_K` by `itm_scorer` (see `DatasetItmScorer`) when that is > 0;
    "vqa": VQA accuracy; "caption": CIDEr-D.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False)
    if evaluator_type == "lvis":
        if cfg.TEST.LVIS_FIXED_AP:
            return LVISFixedAPEvaluator(dataset_name, output_dir=output_folder)
        return StandardLVISEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)
    if evaluator_type == "flickr30k":
        return FlickrGroundingEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "refexp":
        return RefExpEvaluator(dataset_name, match=cfg.TEST.REFEXP_BOX_MATCH, output_dir=output_folder)
    if evaluator_type == "retrieval":
        top_k = cfg.TEST.RETRIEVAL_ITM_TOP_K
        if top_k > 0 and itm_scorer is None:
            raise ValueError(
                f"TEST.RETRIEVAL_ITM_TOP_K = {top_k} needs an ITM scorer for {dataset_name!r} (a FiberCoarseModel)"
            )
        if top_k > 0:
            return RetrievalEvaluator(dataset_name, output_dir=output_folder, itm_top_k=top_k, itm_scorer=itm_scorer)
        return RetrievalEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "vqa":
        return VQAEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "caption":
        return CaptionEvaluator(dataset_name, output_dir=output_folder)
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        "supported evaluator types: 'coco', 'lvis', 'flickr30k', 'refexp', 'retrieval', 'vqa', 'caption'"
    )
