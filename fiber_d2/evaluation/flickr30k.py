"""Flickr30k Entities phrase grounding: Recall@1/5/10 at IoU >= 0.5 per phrase, as in MDETR's Flickr30k protocol."""
from __future__ import annotations

import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode
from torchvision.ops import box_iou

from ..data.phrases import grounding_phrases, phrase_annotation_indices
from .ranking import MATCH_THRESHOLD, RankEvaluator, first_hit_rank

FLICKR_PROTOCOLS = ("any", "merged")


class FlickrGroundingEvaluator(RankEvaluator):
    """Recall@k (k = 1, 5, 10; percent) of the phrases of `grounding_phrases(record)` that have a GT box.

    A phrase's predictions are the boxes whose `pred_classes` is its index, ranked by score; R@k counts a phrase when
    one of its top-k boxes matches at IoU >= 0.5. `protocol`: "any" (MDETR's separate-GT / ANY-box protocol) matches
    any one of the phrase's GT boxes; "merged" matches the box enclosing all of them. By default "merged" when the
    dataset's metadata has `merged_gt=True`, else "any". `evaluate()` returns `{"grounding": {"R@1", "R@5", "R@10"}}`.
    """

    task = "grounding"
    metric_prefix = "R"
    results_file = "flickr30k_phrase_ranks.json"

    def __init__(self, dataset_name: str, output_dir: str | None = None, protocol: str | None = None) -> None:
        super().__init__(dataset_name, output_dir)
        if protocol is None:
            protocol = "merged" if MetadataCatalog.get(dataset_name).get("merged_gt", False) else "any"
        if protocol not in FLICKR_PROTOCOLS:
            raise ValueError(f"Unknown Flickr30k protocol {protocol!r}; expected one of {FLICKR_PROTOCOLS}")
        self.protocol = protocol

    def protocol_description(self) -> str:
        boxes = "ANY of the phrase's GT boxes" if self.protocol == "any" else "the merged box of the phrase's GT boxes"
        return f"box hit at IoU >= {MATCH_THRESHOLD} with {boxes}"

    def _record_ranks(
        self, record: dict, pred_boxes: torch.Tensor, scores: torch.Tensor, pred_classes: torch.Tensor
    ) -> list[tuple[int, int | None]]:
        annotations = record["annotations"]
        phrases = grounding_phrases(record)
        ranks = []
        for phrase_index, annotation_indices in enumerate(phrase_annotation_indices(record, phrases)):
            if not annotation_indices:  # a phrase without a box is not scored
                continue
            gt_boxes = torch.tensor(
                [BoxMode.convert(annotations[i]["bbox"], annotations[i]["bbox_mode"], BoxMode.XYXY_ABS)
                 for i in annotation_indices],
                dtype=torch.float32,
            )
            if self.protocol == "merged":
                gt_boxes = torch.cat([gt_boxes[:, :2].min(dim=0).values, gt_boxes[:, 2:].max(dim=0).values])[None]
            mine = pred_classes == phrase_index
            ranks.append((phrase_index, first_hit_rank(pred_boxes[mine], scores[mine], gt_boxes, box_iou)))
        return ranks
