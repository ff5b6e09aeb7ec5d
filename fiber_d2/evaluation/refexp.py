"""Referring expressions (RefCOCO/+/g style): Precision@1/5/10 of the expression's box at overlap >= 0.5.

MDETR and FIBER count a box as correct at generalized IoU >= 0.5 (FIBER's `data/datasets/refexp.py`), the default here.
"""
from __future__ import annotations

import torch
from detectron2.structures import BoxMode
from torchvision.ops import box_iou, generalized_box_iou

from .ranking import MATCH_THRESHOLD, RankEvaluator, first_hit_rank

REFEXP_MATCHES = {"iou": box_iou, "giou": generalized_box_iou}
REFEXP_MATCH_NAMES = {"iou": "IoU", "giou": "GIoU (MDETR/FIBER protocol)"}


class RefExpEvaluator(RankEvaluator):
    """Precision@k (k = 1, 5, 10; percent) of the records: one expression each, ground truth = its first annotation box.

    Every predicted box is a candidate for the expression (its `pred_classes` is not looked at), ranked by score; P@k
    counts a record when one of its top-k boxes overlaps the GT box by >= 0.5, measured by `match`: "giou"
    (generalized IoU, MDETR's/FIBER's official protocol, the default) or "iou" (laxer: GIoU <= IoU). A record with
    several annotations is scored on its first box only (RefCOCO-style files have exactly one); a record without any
    is not scored.
    `evaluate()` returns `{"refexp": {"P@1", "P@5", "P@10"}}`.
    """

    task = "refexp"
    metric_prefix = "P"
    results_file = "refexp_ranks.json"

    def __init__(self, dataset_name: str, match: str = "giou", output_dir: str | None = None) -> None:
        super().__init__(dataset_name, output_dir)
        if match not in REFEXP_MATCHES:
            raise ValueError(f"Unknown RefExp box match {match!r}; expected one of {tuple(REFEXP_MATCHES)}")
        self.match = match

    def protocol_description(self) -> str:
        return f"box hit at {REFEXP_MATCH_NAMES[self.match]} >= {MATCH_THRESHOLD}"

    def _record_ranks(
        self, record: dict, pred_boxes: torch.Tensor, scores: torch.Tensor, pred_classes: torch.Tensor
    ) -> list[tuple[int, int | None]]:
        if not record["annotations"]:
            return []
        annotation = record["annotations"][0]
        gt_box = torch.tensor(
            [BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)], dtype=torch.float32
        )
        return [(0, first_hit_rank(pred_boxes, scores, gt_box, REFEXP_MATCHES[self.match]))]
