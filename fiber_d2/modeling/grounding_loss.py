"""FIBER's fine-stage losses (GLIP's ATSS loss with dot-product token alignment; docs/FIBER_DETAILS.md).

Follows GLIP `maskrcnn_benchmark/modeling/rpn/loss.py::ATSSLossComputation.__call__` and
`layers/sigmoid_focal_loss.py::token_sigmoid_binary_focal_loss`:

- loss_align: sigmoid focal loss over anchors x prompt tokens. A positive anchor's target is the positive-map row of
  its box (the tokens of its phrase); negative anchors target no token. Padding tokens (text_mask False) contribute
  nothing: their terms are multiplied by 0 (the official `masked_select` gives the same sum; the head clamps logits
  to +-50000, so those terms are finite). Sum / #pos.
  Departure: the official code makes negatives target the last of its 256 token slots (a "no object" token). That
  slot is masked unless a prompt fills all 256 tokens, and we pad to the longest prompt, so it is left out here.
- loss_box_giou: GIoU loss of the decoded boxes of positive anchors, weighted by their centerness targets, divided
  by the sum of those targets, times `reg_loss_weight` (FIBER: 2).
- loss_centerness: BCE against sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) (anchor centre to box sides),
  over positives, / #pos.

#pos and the centerness sum are summed over processes and divided by the number of processes, as GLIP does
(`reduce_sum(...) / num_gpus`); #pos is guarded by max(., 1), the centerness sum (unguarded officially, and > 0
whenever there is a positive) only against 0. Inputs are cast to float32 (the official `custom_fwd(cast_inputs=...)`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def centerness_targets(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """anchors, boxes [N, 4] (XYXY, paired) -> centerness of each anchor centre inside its box [N], in [0, 1]."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top = centres - boxes[:, :2]
    right_bottom = boxes[:, 2:] - centres
    horizontal = torch.stack([left_top[:, 0], right_bottom[:, 0]], dim=1)
    vertical = torch.stack([left_top[:, 1], right_bottom[:, 1]], dim=1)
    ratio = (horizontal.min(1).values / horizontal.max(1).values) * (vertical.min(1).values / vertical.max(1).values)
    return ratio.clamp(min=0).sqrt()


def _mean_over_processes(value: float, device: torch.device) -> float:
    """Sum of `value` over all processes / world size (every process must call it, positives or not)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float32, device=device)
    torch.distributed.all_reduce(total)
    return total.item() / world_size


def grounding_losses(
    anchors: torch.Tensor,
    matched_idxs: list[torch.Tensor],
    gt_boxes: list[torch.Tensor],
    gt_positive_maps: list[torch.Tensor],
    token_logits: torch.Tensor,
    text_mask: torch.Tensor,
    box_deltas: torch.Tensor,
    centerness_logits: torch.Tensor,
    box2box_transform: Box2BoxTransform,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    reg_loss_weight: float = 2.0,
) -> dict[str, torch.Tensor]:
    """The three losses of a batch: {"loss_align", "loss_box_giou", "loss_centerness"} (scalars).

    anchors [A, 4] (XYXY px, all levels, shared by the padded batch); per image: matched gt index [A] (-1 negative),
    gt boxes [G_i, 4] (XYXY px), positive maps [G_i, T] (bool); token_logits [B, A, T]; text_mask [B, T] (True on
    real tokens); box_deltas [B, A, 4] (Box2BoxTransform deltas); centerness_logits [B, A].
    """
    token_logits, box_deltas, centerness_logits = token_logits.float(), box_deltas.float(), centerness_logits.float()
    anchors = anchors.float()
    targets = torch.zeros_like(token_logits)
    positive_anchors, positive_boxes, positive_images = [], [], []
    for image, (matched, boxes, positive_map) in enumerate(zip(matched_idxs, gt_boxes, gt_positive_maps)):
        positive = torch.nonzero(matched >= 0).squeeze(1)
        targets[image, positive] = positive_map[matched[positive]].to(targets.dtype)
        positive_anchors.append(positive)
        positive_boxes.append(boxes[matched[positive]].float())
        positive_images.append(torch.full_like(positive, image))
    positive_anchors = torch.cat(positive_anchors)
    positive_images = torch.cat(positive_images)
    positive_boxes = torch.cat(positive_boxes)
    num_positive = max(_mean_over_processes(float(positive_anchors.numel()), token_logits.device), 1.0)

    focal = sigmoid_focal_loss(token_logits, targets, alpha=focal_alpha, gamma=focal_gamma, reduction="none")
    loss_align = (focal * text_mask.unsqueeze(1).to(focal.dtype)).sum() / num_positive

    if positive_anchors.numel() == 0:
        _mean_over_processes(0.0, token_logits.device)  # match the other processes' centerness-sum all-reduce
        # Zero losses that still reach every output, so DDP sees a gradient for every parameter.
        zero = box_deltas.sum() * 0 + centerness_logits.sum() * 0
        return {"loss_align": loss_align, "loss_box_giou": zero, "loss_centerness": zero}

    matched_anchors = anchors[positive_anchors]
    predicted_boxes = box2box_transform.apply_deltas(box_deltas[positive_images, positive_anchors], matched_anchors)
    centerness = centerness_targets(matched_anchors, positive_boxes)
    centerness_sum = max(_mean_over_processes(centerness.sum().item(), token_logits.device), 1e-6)
    giou = generalized_box_iou_loss(predicted_boxes, positive_boxes, reduction="none")
    loss_box = reg_loss_weight * (giou * centerness).sum() / centerness_sum
    loss_centerness = (
        F.binary_cross_entropy_with_logits(
            centerness_logits[positive_images, positive_anchors], centerness, reduction="sum"
        )
        / num_positive
    )
    return {"loss_align": loss_align, "loss_box_giou": loss_box, "loss_centerness": loss_centerness}
