"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020), the anchor assignment of GLIP and FIBER.

Follows GLIP `maskrcnn_benchmark/modeling/rpn/loss.py::ATSSLossComputation.prepare_targets`. For each ground-truth
box: per FPN level, the `topk` anchors whose centres are closest to the box centre are the candidates; the IoU
threshold is the mean + standard deviation (unbiased, torch's default, as the official code) of the candidates' IoUs;
a candidate is positive when its IoU reaches the threshold and its centre lies inside the box by more than 0.01 px on
every side. An anchor positive for several boxes goes to the one it overlaps most.

The whole batch is assigned at once: the images' boxes are padded to the most boxes of an image, every (image, box)
pair is one column of the anchor x box matrices, and padding columns are never positive. Columns are independent, so
this equals assigning image by image (no per-image loop, no host synchronisation).

Departure: IoUs use the modern continuous convention (area = w * h, torchvision `box_iou`), not maskrcnn_benchmark's
`+1` pixel convention, matching detectron2's `Box2BoxTransform`. With a single candidate per box (one level of one
anchor), the unbiased std is NaN and no anchor is positive, as in the official code.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

INSIDE_MARGIN = 0.01


class ATSSMatcher:
    """anchors per level [A_l, 4] (XYXY) + padded gt boxes [B, G, 4] and their validity [B, G] -> matched gt index per
    image and anchor [B, sum A_l] (-1: negative)."""

    def __init__(self, topk: int = 9) -> None:
        if topk < 1:
            raise ValueError(f"ATSS topk must be >= 1, got {topk}")
        self.topk = topk

    def __call__(
        self, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor, gt_valid: torch.Tensor
    ) -> torch.Tensor:
        anchors = torch.cat(anchors_per_level)
        batch, num_gt = gt_valid.shape
        if num_gt == 0:
            return torch.full((batch, anchors.shape[0]), -1, dtype=torch.long, device=anchors.device)
        boxes = gt_boxes.to(anchors.dtype).reshape(batch * num_gt, 4)  # column j = (image j // G, box j % G)
        ious = box_iou(anchors, boxes)  # [A, B*G]
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        # Direct formula (not cdist's matmul path): anchors on a grid tie exactly, as in the official code.
        distances = (anchor_centres[:, None] - gt_centres[None]).pow(2).sum(-1).sqrt()  # [A, B*G]

        candidates = []
        start = 0
        for level_anchors in anchors_per_level:
            end = start + level_anchors.shape[0]
            k = min(self.topk, end - start)
            candidates.append(distances[start:end].topk(k, dim=0, largest=False).indices + start)  # [k, B*G]
            start = end
        candidates = torch.cat(candidates)  # [K, B*G]
        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [B*G]
        is_positive = (candidate_ious >= threshold) & gt_valid.reshape(1, -1)

        centres = anchor_centres[candidates]  # [K, B*G, 2]
        left_top = centres - boxes[None, :, :2]
        right_bottom = boxes[None, :, 2:] - centres
        is_positive &= torch.cat([left_top, right_bottom], dim=-1).min(dim=-1).values > INSIDE_MARGIN

        # Positive (anchor, box) pairs keep their IoU, the rest -1: per image, the max over its boxes picks the
        # best-overlapping one (the first of equals, as image by image).
        scores = torch.full_like(ious, -1.0).scatter_(0, candidates, torch.where(is_positive, candidate_ious, -1.0))
        best_score, best_gt = scores.view(-1, batch, num_gt).max(dim=2)  # [A, B]
        return torch.where(best_score >= 0, best_gt, -1).t()
