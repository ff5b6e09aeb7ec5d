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

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm
from torchvision.ops import generalized_box_iou_loss


def centerness_targets(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """anchors, boxes [N, 4] (XYXY, paired) -> centerness of each anchor centre inside its box [N], in [0, 1]."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top = centres - boxes[:, :2]
    right_bottom = boxes[:, 2:] - centres
    horizontal = torch.stack([left_top[:, 0], right_bottom[:, 0]], dim=1)
    vertical = torch.stack([left_top[:, 1], right_bottom[:, 1]], dim=1)
    ratio = (horizontal.min(1).values / horizontal.max(1).values) * (vertical.min(1).values / vertical.max(1).values)
    return ratio.clamp(min=0).sqrt()


def _mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Sum of the scalar tensor `value` over all processes / world size (every process must call it)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    total = value.detach().clone().float().reshape(1)
    torch.distributed.all_reduce(total)
    return total[0] / world_size


class _TokenFocalLoss(torch.autograd.Function):
    """The summed focal loss and its gradient in one pass each over [B, A, T] (`token_focal_loss`): with z = logit
    (target 1) or -logit (target 0) and p = sigmoid(-z), the term is w p^gamma softplus(-z), and its derivative in z
    is -w p^gamma (gamma (1 - p) softplus(-z) + p). softplus(-z) = relu(-z) - log(max(p, 1 - p)), exact to float32
    round-off (about 6e-8 absolute) at any z, which PyTorch's CPU softplus computes several times slower."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, gamma: float) -> torch.Tensor:
        z = torch.where(targets, logits, -logits)
        p = torch.sigmoid(-z)
        softplus = torch.relu(-z).sub_(torch.maximum(p, 1 - p).log_())
        weighted = p.pow(gamma).mul_(weight)  # w p^gamma
        loss = (weighted * softplus).sum()
        # d/dz = -w p^gamma (gamma (1 - p) softplus + p); d/dlogit = d/dz (target 1) or -d/dz (target 0)
        grad = softplus.mul_(torch.sub(1, p).mul_(gamma)).add_(p).mul_(weighted)
        ctx.save_for_backward(torch.where(targets, grad.neg(), grad))
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def token_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, text_mask: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Sum of the sigmoid focal loss (torchvision's `sigmoid_focal_loss`; alpha < 0: no alpha weighting) over the real
    tokens. logits [B, A, T]; targets [B, A, T] (bool); text_mask [B, T] (True on real tokens). The same values and
    gradient as torchvision's form, in fewer passes over the [B, A, T] logits (`_TokenFocalLoss`)."""
    weight = text_mask.unsqueeze(1).to(logits.dtype)
    if alpha >= 0:
        weight = torch.where(targets, alpha, 1 - alpha) * weight
    return _TokenFocalLoss.apply(logits, targets, weight, gamma)


def pad_targets(
    gt_boxes: Sequence[torch.Tensor], gt_positive_maps: Sequence[torch.Tensor], num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image gt boxes [G_i, 4] and positive maps [G_i, T_i] (bool, T_i <= num_tokens) -> boxes [B, G, 4],
    validity [B, G] (bool) and positive maps [B, G, num_tokens], padded to G = max(max G_i, 1) with zeros / False."""
    device = gt_boxes[0].device
    num_gt = max(1, max(len(boxes) for boxes in gt_boxes))
    boxes = torch.zeros((len(gt_boxes), num_gt, 4), dtype=torch.float32, device=device)
    valid = torch.zeros((len(gt_boxes), num_gt), dtype=torch.bool, device=device)
    maps = torch.zeros((len(gt_boxes), num_gt, num_tokens), dtype=torch.bool, device=device)
    for image, (image_boxes, positive_map) in enumerate(zip(gt_boxes, gt_positive_maps)):
        boxes[image, : len(image_boxes)] = image_boxes
        valid[image, : len(image_boxes)] = True
        maps[image, : len(image_boxes), : positive_map.shape[1]] = positive_map
    return boxes, valid, maps


def grounding_losses(
    anchors: torch.Tensor,
    matched_idxs: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_positive_maps: torch.Tensor,
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

    anchors [A, 4] (XYXY px, all levels, shared by the padded batch); matched gt index [B, A] (-1 negative); gt boxes
    [B, G, 4] (XYXY px) and positive maps [B, G, T] (bool), padded (`pad_targets`); token_logits [B, A, T];
    text_mask [B, T] (True on real tokens); box_deltas [B, A, 4] (Box2BoxTransform deltas); centerness_logits [B, A].
    Computed over all anchors at once, negatives weighted 0 (no per-image loop, no host synchronisation).
    """
    token_logits, box_deltas, centerness_logits = token_logits.float(), box_deltas.float(), centerness_logits.float()
    anchors = anchors.float()
    positive = matched_idxs >= 0  # [B, A]
    images = torch.arange(matched_idxs.shape[0], device=matched_idxs.device)[:, None]
    gt_index = matched_idxs.clamp(min=0)
    targets = gt_positive_maps[images, gt_index] & positive[..., None]  # [B, A, T]
    num_positive = _mean_over_processes(positive.sum().float()).clamp(min=1.0)
    loss_align = token_focal_loss(token_logits, targets, text_mask, focal_alpha, focal_gamma) / num_positive

    # A negative decodes its anchor with zero deltas against the anchor itself: finite, weight 0, no gradient.
    batch_anchors = anchors.expand(positive.shape[0], -1, -1)
    matched_boxes = torch.where(positive[..., None], gt_boxes.float()[images, gt_index], batch_anchors)
    deltas = torch.where(positive[..., None], box_deltas, 0.0)
    predicted_boxes = box2box_transform.apply_deltas(deltas.reshape(-1, 4), batch_anchors.reshape(-1, 4))
    centerness = torch.where(
        positive.reshape(-1), centerness_targets(batch_anchors.reshape(-1, 4), matched_boxes.reshape(-1, 4)), 0.0
    )
    centerness_sum = _mean_over_processes(centerness.sum()).clamp(min=1e-6)
    giou = generalized_box_iou_loss(predicted_boxes, matched_boxes.reshape(-1, 4), reduction="none")
    loss_box = reg_loss_weight * (giou * centerness).sum() / centerness_sum
    loss_centerness = (
        F.binary_cross_entropy_with_logits(
            centerness_logits.reshape(-1), centerness, weight=positive.reshape(-1).float(), reduction="sum"
        )
        / num_positive
    )
    return {"loss_align": loss_align, "loss_box_giou": loss_box, "loss_centerness": loss_centerness}
