"""The batched ATSS assignment and grounding losses equal the image-by-image loop versions they replaced, and the
token focal loss equals torchvision's.

The references below are the previous implementations (one image at a time, positives gathered with nonzero), kept
here only as the yardstick: assignments must be identical, losses and their gradients equal to float rounding, on
random batches with grid anchors (exact distance ties), images without boxes, duplicate boxes and boxes past the image.
"""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from fiber_d2.modeling.grounding.atss import INSIDE_MARGIN, ATSSMatcher
from fiber_d2.modeling.grounding.loss import centerness_targets, grounding_losses, pad_targets, token_focal_loss

TRANSFORM = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_atss(topk: int, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor) -> torch.Tensor:
    """The previous image-by-image ATSSMatcher.__call__: gt boxes [G, 4] of one image -> matched [A]."""
    anchors = torch.cat(anchors_per_level)
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long)
    if gt_boxes.numel() == 0:
        return matched
    ious = box_iou(anchors, gt_boxes)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distances = (anchor_centres[:, None] - gt_centres[None]).pow(2).sum(-1).sqrt()
    candidates, start = [], 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        candidates.append(distances[start:end].topk(min(topk, end - start), dim=0, largest=False).indices + start)
        start = end
    candidates = torch.cat(candidates)
    candidate_ious = ious.gather(0, candidates)
    is_positive = candidate_ious >= candidate_ious.mean(0) + candidate_ious.std(0)
    centres = anchor_centres[candidates]
    inside = torch.cat([centres - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centres], dim=-1)
    is_positive &= inside.min(dim=-1).values > INSIDE_MARGIN
    gt_index = torch.arange(gt_boxes.shape[0]).expand_as(candidates)
    positive_anchor, positive_gt = candidates[is_positive], gt_index[is_positive]
    scores = torch.full_like(ious, -1.0)
    scores[positive_anchor, positive_gt] = ious[positive_anchor, positive_gt]
    best_score, best_gt = scores.max(dim=1)
    return torch.where(best_score >= 0, best_gt, matched)


def reference_losses(anchors, matched_idxs, gt_boxes, gt_positive_maps, token_logits, text_mask, box_deltas,
                     centerness_logits, focal_alpha=0.25, focal_gamma=2.0, reg_loss_weight=2.0):
    """The previous grounding_losses (one process): per-image lists, positives gathered with nonzero."""
    targets = torch.zeros_like(token_logits)
    positive_anchors, positive_boxes, positive_images = [], [], []
    for image, (matched, boxes, positive_map) in enumerate(zip(matched_idxs, gt_boxes, gt_positive_maps)):
        positive = torch.nonzero(matched >= 0).squeeze(1)
        targets[image, positive] = positive_map[matched[positive]].to(targets.dtype)
        positive_anchors.append(positive)
        positive_boxes.append(boxes[matched[positive]])
        positive_images.append(torch.full_like(positive, image))
    positive_anchors, positive_images = torch.cat(positive_anchors), torch.cat(positive_images)
    positive_boxes = torch.cat(positive_boxes)
    num_positive = max(float(positive_anchors.numel()), 1.0)
    focal = sigmoid_focal_loss(token_logits, targets, alpha=focal_alpha, gamma=focal_gamma, reduction="none")
    loss_align = (focal * text_mask.unsqueeze(1).to(focal.dtype)).sum() / num_positive
    if positive_anchors.numel() == 0:
        zero = box_deltas.sum() * 0 + centerness_logits.sum() * 0
        return {"loss_align": loss_align, "loss_box_giou": zero, "loss_centerness": zero}
    matched_anchors = anchors[positive_anchors]
    predicted = TRANSFORM.apply_deltas(box_deltas[positive_images, positive_anchors], matched_anchors)
    centerness = centerness_targets(matched_anchors, positive_boxes)
    centerness_sum = max(centerness.sum().item(), 1e-6)
    giou = generalized_box_iou_loss(predicted, positive_boxes, reduction="none")
    loss_centerness = torch.nn.functional.binary_cross_entropy_with_logits(
        centerness_logits[positive_images, positive_anchors], centerness, reduction="sum"
    )
    return {"loss_align": loss_align, "loss_box_giou": reg_loss_weight * (giou * centerness).sum() / centerness_sum,
            "loss_centerness": loss_centerness / num_positive}


def _anchors(height: int, width: int) -> list[torch.Tensor]:
    """Detectron2's grid anchors of an FPN P3-P7 at a height x width input (one 4x-stride square per location)."""
    strides = [8, 16, 32, 64, 128]
    generator = DefaultAnchorGenerator(sizes=[[4 * s] for s in strides], aspect_ratios=[[1.0]], strides=strides,
                                       offset=0.5)
    shapes = [torch.zeros(1, 1, -(-height // s), -(-width // s)) for s in strides]
    return [boxes.tensor for boxes in generator(shapes)]


def _random_boxes(generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """`count` boxes of 4 px to the whole image, some past its border, the first one repeated when count >= 3."""
    centres = torch.rand(count, 2, generator=generator) * torch.tensor([width, height])
    sizes = 4 + torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.6
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    if count >= 3:
        boxes[2] = boxes[0]  # equal IoUs: the first of equals wins, image by image
    return boxes


def _random_batch(seed: int, height: int = 150, width: int = 230, num_tokens: int = 9):
    generator = torch.Generator().manual_seed(seed)
    counts = [[0, 4], [1, 4, 7], [3, 0, 7, 2]][seed % 3]
    gt_boxes = [_random_boxes(generator, count, height, width) for count in counts]
    positive_maps = [torch.rand(count, num_tokens, generator=generator) < 0.3 for count in counts]
    anchors = _anchors(height, width)
    num_anchors = sum(len(level) for level in anchors)
    batch = len(counts)
    text_mask = torch.arange(num_tokens)[None] < torch.randint(3, num_tokens + 1, (batch, 1), generator=generator)
    outputs = {
        "token_logits": torch.randn(batch, num_anchors, num_tokens, generator=generator) * 3,
        "box_deltas": torch.randn(batch, num_anchors, 4, generator=generator) * 0.3,
        "centerness_logits": torch.randn(batch, num_anchors, generator=generator),
    }
    return anchors, gt_boxes, positive_maps, text_mask, outputs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [1, 4, 9])
def test_batched_atss_equals_image_by_image(seed, topk):
    anchors, gt_boxes, *_ = _random_batch(seed)
    boxes, valid, _ = pad_targets(gt_boxes, [torch.zeros(len(b), 1, dtype=torch.bool) for b in gt_boxes], 1)
    matched = ATSSMatcher(topk)(anchors, boxes, valid)
    expected = torch.stack([reference_atss(topk, anchors, image_boxes) for image_boxes in gt_boxes])
    assert matched.dtype == torch.long and torch.equal(matched, expected)
    if topk > 1:
        assert (matched >= 0).sum() >= 5  # the comparison covers positives, not only negatives


def test_batched_atss_of_a_batch_without_boxes():
    anchors = _anchors(64, 64)
    num_anchors = sum(len(level) for level in anchors)
    matched = ATSSMatcher()(anchors, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool))
    assert matched.shape == (3, num_anchors) and (matched == -1).all()


@pytest.mark.parametrize("seed", range(6))
def test_batched_losses_and_gradients_equal_image_by_image(seed):
    anchors, gt_boxes, positive_maps, text_mask, outputs = _random_batch(seed)
    boxes, valid, maps = pad_targets(gt_boxes, positive_maps, text_mask.shape[1])
    matched = ATSSMatcher(9)(anchors, boxes, valid)
    assert (matched >= 0).sum() >= 5
    anchors = torch.cat(anchors)
    ours_inputs = {name: value.clone().requires_grad_() for name, value in outputs.items()}
    reference_inputs = {name: value.clone().requires_grad_() for name, value in outputs.items()}
    ours = grounding_losses(anchors, matched, boxes, maps, text_mask=text_mask, box2box_transform=TRANSFORM,
                            **ours_inputs)
    expected = reference_losses(anchors, list(matched), gt_boxes, positive_maps, text_mask=text_mask,
                                **reference_inputs)
    for name, value in expected.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6, msg=name)
    sum(ours.values()).backward()
    sum(expected.values()).backward()
    for name in outputs:
        torch.testing.assert_close(ours_inputs[name].grad, reference_inputs[name].grad, rtol=1e-4, atol=1e-7,
                                   msg=name)


def test_batched_losses_without_positives_equal_the_reference():
    anchors, gt_boxes, positive_maps, text_mask, outputs = _random_batch(0)
    anchors = torch.cat(anchors)
    matched = torch.full((len(gt_boxes), anchors.shape[0]), -1)
    boxes, _, maps = pad_targets(gt_boxes, positive_maps, text_mask.shape[1])
    ours = grounding_losses(anchors, matched, boxes, maps, text_mask=text_mask, box2box_transform=TRANSFORM,
                            **outputs)
    expected = reference_losses(anchors, list(matched), gt_boxes, positive_maps, text_mask=text_mask, **outputs)
    assert ours["loss_box_giou"].item() == 0.0 and ours["loss_centerness"].item() == 0.0
    torch.testing.assert_close(ours["loss_align"], expected["loss_align"], rtol=1e-6, atol=0)


def test_pad_targets_layout():
    boxes, valid, maps = pad_targets(
        [torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(0, 4)], [torch.tensor([[True, False]]),
                                                                     torch.zeros(0, 2, dtype=torch.bool)], 3
    )
    assert boxes.tolist() == [[[1.0, 2.0, 3.0, 4.0]], [[0.0, 0.0, 0.0, 0.0]]]
    assert valid.tolist() == [[True], [False]]
    assert maps.tolist() == [[[True, False, False]], [[False, False, False]]]


@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_token_focal_loss_equals_torchvision_with_its_gradient(alpha):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 50, 7, generator=generator, dtype=torch.float64) * 4
    logits[0, 0, :4] = torch.tensor([50000.0, -50000.0, 30.0, -30.0])  # the head's clamp and beyond softplus's switch
    targets = torch.rand(2, 50, 7, generator=generator) < 0.2
    targets[0, 0, :4] = torch.tensor([False, True, False, True])
    text_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    ours_logits, reference_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = token_focal_loss(ours_logits, targets, text_mask, alpha, 2.0)
    reference = (sigmoid_focal_loss(reference_logits, targets.double(), alpha=alpha, gamma=2.0, reduction="none")
                 * text_mask[:, None].double()).sum()
    assert ours.item() > 4e4  # the two saturated wrong logits: 50000 x (0.75 + 0.25), or x 2 without alpha
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours_logits.grad, reference_logits.grad, rtol=1e-10, atol=1e-12)
    assert not ours_logits.grad[1, :, 4:].any()  # padding tokens
