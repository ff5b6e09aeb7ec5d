"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020), the anchor assignment of GLIP and FIBER.

Follows GLIP `maskrcnn_benchmark/modeling/rpn/loss.py::ATSSLossComputation.prepare_targets`. For each ground-truth
box: per FPN level, the `topk` anchors whose centres are closest to the box centre are the candidates; the IoU
threshold is the mean + standard deviation (unbiased, torch's default, as the official code) of the candidates' IoUs;
a candidate is positive when its IoU reaches the threshold and its centre lies inside the box by more than 0.01 px on
every side. An anchor positive for several boxes goes to the one it overlaps most.

Departure: IoUs use the modern continuous convention (area = w * h, torchvision `box_iou`), not maskrcnn_benchmark's
`+1` pixel convention, matching detectron2's `Box2BoxTransform`. With a single candidate per box (one level of one
anchor), the unbiased std is NaN and no anchor is positive, as in the official code.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

INSIDE_MARGIN = 0.01


class ATSSMatcher:
    """anchors per level [A_l, 4] (XYXY) + gt boxes [G, 4] -> matched gt index per anchor [sum A_l] (-1: negative)."""

    def __init__(self, topk: int = 9) -> None:
        if topk < 1:
            raise ValueError(f"ATSS topk must be >= 1, got {topk}")
        self.topk = topk

    def __call__(self, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor) -> torch.Tensor:
        anchors = torch.cat(anchors_per_level)
        matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        if gt_boxes.numel() == 0:
            return matched
        gt_boxes = gt_boxes.to(anchors.dtype)
        ious = box_iou(anchors, gt_boxes)  # [A, G]
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        # Direct formula (not cdist's matmul path): anchors on a grid tie exactly, as in the official code.
        distances = (anchor_centres[:, None] - gt_centres[None]).pow(2).sum(-1).sqrt()  # [A, G]

        candidates = []
        start = 0
        for level_anchors in anchors_per_level:
            end = start + level_anchors.shape[0]
            k = min(self.topk, end - start)
            candidates.append(distances[start:end].topk(k, dim=0, largest=False).indices + start)  # [k, G]
            start = end
        candidates = torch.cat(candidates)  # [K, G]
        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [G]
        is_positive = candidate_ious >= threshold

        centres = anchor_centres[candidates]  # [K, G, 2]
        left_top = centres - gt_boxes[None, :, :2]
        right_bottom = gt_boxes[None, :, 2:] - centres
        inside = torch.cat([left_top, right_bottom], dim=-1).min(dim=-1).values > INSIDE_MARGIN
        is_positive &= inside

        # Positive (anchor, gt) pairs keep their IoU, the rest -1: the max over gts picks the best-overlapping gt.
        gt_index = torch.arange(gt_boxes.shape[0], device=anchors.device).expand_as(candidates)
        positive_anchor, positive_gt = candidates[is_positive], gt_index[is_positive]
        scores = torch.full_like(ious, -1.0)
        scores[positive_anchor, positive_gt] = ious[positive_anchor, positive_gt]
        best_score, best_gt = scores.max(dim=1)
        return torch.where(best_score >= 0, best_gt, matched)
