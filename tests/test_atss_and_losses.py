"""ATSS assignment, the three grounding losses and the detection post-processing, on hand-computed cases; the batched
assignment and losses against the image-by-image loop versions they replaced, on random inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from fiber_d2.modeling.grounding import loss as grounding_loss
from fiber_d2.modeling.grounding.atss import ATSSMatcher
from fiber_d2.modeling.grounding.inference import label_scores, merge_chunk_detections, postprocess_detections
from fiber_d2.modeling.grounding.loss import centerness_targets, grounding_losses, pad_targets


pytestmark = pytest.mark.usefixtures("one_thread")


TRANSFORM = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
LN2 = math.log(2.0)


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _match(matcher: ATSSMatcher, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor) -> torch.Tensor:
    """One image's assignment [A] through the batched matcher."""
    return matcher(anchors_per_level, gt_boxes[None], torch.ones(1, len(gt_boxes), dtype=torch.bool))[0]


def _losses(matched_idxs, gt_boxes, gt_positive_maps, token_logits, **kwargs) -> dict[str, torch.Tensor]:
    """grounding_losses on per-image lists (matched [A], boxes [G_i, 4], positive maps [G_i, T]), padded."""
    boxes, _, maps = pad_targets(gt_boxes, gt_positive_maps, token_logits.shape[-1])
    return grounding_losses(
        matched_idxs=torch.stack(matched_idxs), gt_boxes=boxes, gt_positive_maps=maps, token_logits=token_logits,
        **kwargs,
    )


# ---------------------------------------------------------------- ATSS


def test_atss_two_levels_hand_computed():
    # Level 0: 10x10 anchors a0..a3 (centres x = 5, 15, 25, 35; y = 5). Level 1: 20x20 anchors b0, b1 (x = 10, 30).
    level0 = _boxes([0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10])
    level1 = _boxes([0, -5, 20, 15], [20, -5, 40, 15])
    # g0 = [11, 0, 21, 10], centre (16, 5). topk 3: level 0 -> a1 (d 1), a2 (9), a0 (11); level 1 has 2 anchors, so
    # k = 2 -> b0, b1. IoUs: a1 90/110 = 9/11, a2 10/190 = 1/19, a0 0, b0 90/410 = 9/41, b1 10/490 = 1/49.
    # mean 0.22215 + unbiased std 0.34426 = 0.56640 -> only a1 passes; its centre (15, 5) is inside g0.
    # g1 = [0, -5, 20, 15] (= b0), centre (10, 5). Candidates a0, a1 (d 5), a2 (15), b0 (0), b1 (20).
    # IoUs 1/4, 1/4, 0, 1, 0: mean 0.3 + std 0.41079 = 0.71079 -> only b0 (centre (10, 5) inside g1).
    gt = _boxes([11, 0, 21, 10], [0, -5, 20, 15])
    matched = _match(ATSSMatcher(topk=3), [level0, level1], gt)
    assert matched.tolist() == [-1, 0, -1, -1, 1, -1]


def test_atss_threshold_uses_unbiased_std():
    # 10x10 anchors at stride 5 (centres x = 5, 10, 15, 20). gt [1, 0, 12, 10], centre (6.5, 5); topk 3 ->
    # a0 (d 1.5, IoU 90/120 = 3/4), a1 (d 3.5, IoU 70/140 = 1/2), a2 (d 8.5, IoU 20/190 = 2/19).
    # mean 0.45175 + unbiased std 0.32507 = 0.77682 > 3/4: no positive (official, torch.std default).
    # The biased std (0.26542) would give 0.71717 and make a0 positive.
    anchors = _boxes([0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [15, 0, 25, 10])
    assert _match(ATSSMatcher(topk=3), [anchors], _boxes([1, 0, 12, 10])).tolist() == [-1, -1, -1, -1]


def test_atss_centre_must_be_inside_by_the_margin():
    # One level, topk 3 = all of a0 [0, 0, 10, 10], a1, a2 (to its right). gt [0, 0, 10, h]: IoUs (h / 10, 0, 0),
    # threshold = (1/3 + 1/sqrt(3)) * h / 10 = 0.911 * IoU(a0): a0 always passes the IoU test. Its centre (5, 5)
    # is h - 5 above the gt's bottom edge, which must exceed 0.01.
    anchors = [_boxes([0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10])]
    matcher = ATSSMatcher(topk=3)
    assert _match(matcher, anchors, _boxes([0, 0, 10, 5.02])).tolist() == [0, -1, -1]
    assert _match(matcher, anchors, _boxes([0, 0, 10, 5.005])).tolist() == [-1, -1, -1]
    # Centre outside: a0 has the highest IoU (0.49) yet is negative.
    assert _match(matcher, anchors, _boxes([0, 0, 10, 4.9])).tolist() == [-1, -1, -1]


def test_atss_anchor_positive_for_two_gts_goes_to_higher_iou():
    # a0 = [0, 0, 10, 10] (centre (5, 5)), a1..a3 to its right; topk 3.
    # gA = [2, 0, 12, 10]: candidates a0, a1, a2 with IoUs 80/120, 20/180, 0 -> threshold 0.2593 + 0.3572 = 0.6164:
    #   a0 (2/3) positive, centre inside (l 3, r 7, t 5, b 5).
    # gB = [0, 0, 10, 10]: IoUs 1, 0, 0 -> threshold 1/3 + 1/sqrt(3) = 0.911: a0 positive.
    # a0 goes to gB (IoU 1 > 2/3), whichever order the gts come in.
    anchors = [_boxes([0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10])]
    matcher = ATSSMatcher(topk=3)
    assert _match(matcher, anchors, _boxes([2, 0, 12, 10], [0, 0, 10, 10])).tolist() == [1, -1, -1, -1]
    assert _match(matcher, anchors, _boxes([0, 0, 10, 10], [2, 0, 12, 10])).tolist() == [0, -1, -1, -1]


def test_atss_without_gts_is_all_negative():
    anchors = [_boxes([0, 0, 10, 10], [10, 0, 20, 10]), _boxes([0, 0, 20, 20])]
    matched = _match(ATSSMatcher(), anchors, torch.zeros(0, 4))
    assert matched.dtype == torch.long and matched.tolist() == [-1, -1, -1]


def test_atss_rejects_bad_topk():
    with pytest.raises(ValueError, match="topk"):
        ATSSMatcher(topk=0)


# ---------------------------------------------------------------- losses


def _one_anchor_case(deltas: list[float], token_logits: list[float], centerness_logit: float):
    """1 image, 1 anchor [0, 0, 10, 10] matched to gt [2, 2, 12, 12] whose positive map is tokens {0, 2} of 3."""
    return dict(
        anchors=_boxes([0, 0, 10, 10]),
        matched_idxs=[torch.tensor([0])],
        gt_boxes=[_boxes([2, 2, 12, 12])],
        gt_positive_maps=[torch.tensor([[True, False, True]])],
        token_logits=torch.tensor([[token_logits]]),
        text_mask=torch.ones(1, 3, dtype=torch.bool),
        box_deltas=torch.tensor([[deltas]]),
        centerness_logits=torch.tensor([[centerness_logit]]),
        box2box_transform=TRANSFORM,
    )


def test_losses_one_anchor_hand_computed():
    losses = _losses(**_one_anchor_case([1.0, 1.0, 0.0, 0.0], [0.0, 0.0, math.log(3.0)], math.log(3.0)))
    # Focal (alpha 0.25, gamma 2), #pos = 1:
    #   token 0, target 1, p = 1/2: 0.25 * (1/2)^2 * ln 2;  token 1, target 0, p = 1/2: 0.75 * (1/2)^2 * ln 2;
    #   token 2, target 1, p = 3/4: 0.25 * (1/4)^2 * ln(4/3).
    expected_align = 0.25 * LN2 + 0.015625 * math.log(4 / 3)
    # Deltas (1, 1, 0, 0) with weights (10, 10, 5, 5) shift the 10 px anchor by 1 px: prediction [1, 1, 11, 11].
    # vs gt [2, 2, 12, 12]: intersection 81, union 119, enclosing 121 -> GIoU = 81/119 - 2/121.
    # One positive: the centerness weight cancels; x reg_loss_weight 2.
    expected_box = 2.0 * (1 - 81 / 119 + 2 / 121)
    # Anchor centre (5, 5) in [2, 2, 12, 12]: l = t = 3, r = b = 7 -> target sqrt(3/7 * 3/7) = 3/7.
    # BCE with p = sigmoid(ln 3) = 3/4: -(3/7 ln(3/4) + 4/7 ln(1/4)).
    expected_centerness = 3 / 7 * math.log(4 / 3) + 4 / 7 * math.log(4.0)
    assert losses["loss_align"].item() == pytest.approx(expected_align, rel=1e-5)
    assert losses["loss_box_giou"].item() == pytest.approx(expected_box, rel=1e-5)
    assert losses["loss_centerness"].item() == pytest.approx(expected_centerness, rel=1e-5)


def test_centerness_targets_hand_computed():
    anchors = _boxes([0, 0, 10, 10], [0, 0, 10, 10])
    boxes = _boxes([2, 2, 12, 12], [0, 0, 10, 10])
    torch.testing.assert_close(centerness_targets(anchors, boxes), torch.tensor([3 / 7, 1.0]))


def test_box_loss_is_centerness_weighted_mean():
    # Two positives of one image with the same gt: anchor A centred (ctr 3/7), anchor B exactly on the gt (ctr 1).
    # Zero deltas: A's prediction is itself (GIoU loss 179/306, as hand-computed), B's is the gt (loss 0).
    case = dict(
        anchors=_boxes([0, 0, 10, 10], [2, 2, 12, 12]),
        matched_idxs=[torch.tensor([0, 0])],
        gt_boxes=[_boxes([2, 2, 12, 12])],
        gt_positive_maps=[torch.tensor([[True]])],
        token_logits=torch.zeros(1, 2, 1),
        text_mask=torch.ones(1, 1, dtype=torch.bool),
        box_deltas=torch.zeros(1, 2, 4),
        centerness_logits=torch.zeros(1, 2),
        box2box_transform=TRANSFORM,
    )
    losses = _losses(**case)
    # IoU 64/136 = 8/17, enclosing 144 -> GIoU 8/17 - 8/144; weighted by 3/7, / (3/7 + 1), x 2.
    expected = 2.0 * (1 - 8 / 17 + 8 / 144) * (3 / 7) / (3 / 7 + 1)
    assert losses["loss_box_giou"].item() == pytest.approx(expected, rel=1e-5)
    # BCE at logit 0 is ln 2 whatever the target; summed over 2 positives / 2.
    assert losses["loss_centerness"].item() == pytest.approx(LN2, rel=1e-5)


def _random_batch(num_tokens: int = 7, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    anchors = _boxes([0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16], [0, 0, 16, 16])
    text_mask = torch.zeros(2, num_tokens, dtype=torch.bool)
    text_mask[0, :7] = True
    text_mask[1, :5] = True
    positive_maps = [torch.zeros(2, num_tokens, dtype=torch.bool), torch.zeros(1, num_tokens, dtype=torch.bool)]
    positive_maps[0][0, [1, 2]] = True
    positive_maps[0][1, 5] = True
    positive_maps[1][0, [0, 3]] = True
    return dict(
        anchors=anchors,
        matched_idxs=[torch.tensor([0, -1, 1, -1, 0]), torch.tensor([-1, 0, -1, -1, 0])],
        gt_boxes=[_boxes([1, 1, 9, 14], [0, 6, 10, 16]), _boxes([5, 0, 16, 12])],
        gt_positive_maps=positive_maps,
        token_logits=torch.randn(2, 5, num_tokens, generator=generator) * 2,
        text_mask=text_mask,
        box_deltas=torch.randn(2, 5, 4, generator=generator) * 0.5,
        centerness_logits=torch.randn(2, 5, generator=generator),
        box2box_transform=TRANSFORM,
    )


def test_losses_invariant_to_text_padding():
    batch = _random_batch()
    padded = dict(batch)
    extra = 5
    padded["token_logits"] = torch.cat([batch["token_logits"], torch.randn(2, 5, extra) * 10], dim=2)
    padded["text_mask"] = F.pad(batch["text_mask"], (0, extra), value=False)
    padded["gt_positive_maps"] = [F.pad(m, (0, extra), value=False) for m in batch["gt_positive_maps"]]
    # Random junk on image 1's own padding columns (5, 6) must not matter either.
    junk = dict(batch)
    junk["token_logits"] = batch["token_logits"].clone()
    junk["token_logits"][1, :, 5:] = 30.0
    reference = _losses(**batch)
    for other in (_losses(**padded), _losses(**junk)):
        for name, value in reference.items():
            torch.testing.assert_close(other[name], value, rtol=0, atol=1e-6)


def test_zero_positive_batch_is_finite_and_connected():
    token_logits = torch.zeros(2, 3, 4, requires_grad=True)
    box_deltas = torch.randn(2, 3, 4, requires_grad=True)
    centerness_logits = torch.randn(2, 3, requires_grad=True)
    text_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    losses = _losses(
        anchors=_boxes([0, 0, 8, 8], [8, 0, 16, 8], [0, 0, 16, 16]),
        matched_idxs=[torch.full((3,), -1), torch.full((3,), -1)],
        gt_boxes=[torch.zeros(0, 4), torch.zeros(0, 4)],
        gt_positive_maps=[torch.zeros(0, 4, dtype=torch.bool)] * 2,
        token_logits=token_logits,
        text_mask=text_mask,
        box_deltas=box_deltas,
        centerness_logits=centerness_logits,
        box2box_transform=TRANSFORM,
    )
    # Every real (anchor, token) is a negative at p = 1/2: 0.75 * (1/2)^2 * ln 2 each; 3 anchors x 5 real tokens; / 1.
    assert losses["loss_align"].item() == pytest.approx(15 * 0.1875 * LN2, rel=1e-6)
    assert losses["loss_box_giou"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    sum(losses.values()).backward()
    for tensor in (token_logits, box_deltas, centerness_logits):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert not box_deltas.grad.any() and not centerness_logits.grad.any()
    assert not token_logits.grad[1, :, 2:].any()  # padding tokens get no gradient


def test_losses_average_counts_over_processes(monkeypatch):
    """2 simulated processes with identical batches: the all-reduced, world-size-averaged counts equal the local
    ones. A process without positives still joins both all-reduces (else its peers would hang)."""
    calls = []

    def fake_all_reduce(tensor):
        calls.append(tensor.item())
        tensor.mul_(2)

    monkeypatch.setattr(grounding_loss.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    batch = _random_batch()
    local = {name: value.item() for name, value in _losses(**batch).items()}
    assert len(calls) == 2 and calls[0] == 5.0  # #pos, then the centerness sum
    monkeypatch.undo()
    for name, value in _losses(**batch).items():
        assert local[name] == pytest.approx(value.item(), rel=1e-6)

    monkeypatch.setattr(grounding_loss.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    calls.clear()
    batch["matched_idxs"] = [torch.full((5,), -1), torch.full((5,), -1)]
    _losses(**batch)
    assert calls == [0.0, 0.0]


def test_losses_decrease_under_sgd():
    torch.manual_seed(0)
    level0 = torch.tensor([[x, y, x + 16.0, y + 16.0] for y in range(-4, 28, 8) for x in range(-4, 28, 8)])
    level1 = torch.tensor([[x, y, x + 32.0, y + 32.0] for y in range(-8, 24, 16) for x in range(-8, 24, 16)])
    gt_boxes = [_boxes([2, 3, 14, 20], [14, 12, 30, 30]), _boxes([0, 0, 24, 16])]
    matcher = ATSSMatcher(topk=4)
    matched = [_match(matcher, [level0, level1], boxes) for boxes in gt_boxes]
    assert all((m >= 0).any() for m in matched)
    num_anchors, num_tokens = level0.shape[0] + level1.shape[0], 6
    positive_maps = [torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]), torch.tensor([[0, 0, 1, 0, 1, 0]])]
    token_logits = torch.full((2, num_anchors, num_tokens), -2.0, requires_grad=True)
    box_deltas = torch.zeros(2, num_anchors, 4, requires_grad=True)
    centerness_logits = torch.zeros(2, num_anchors, requires_grad=True)
    parameters = [token_logits, box_deltas, centerness_logits]
    optimizer = torch.optim.SGD(parameters, lr=0.5)

    def losses() -> dict[str, torch.Tensor]:
        return _losses(
            anchors=torch.cat([level0, level1]),
            matched_idxs=matched,
            gt_boxes=gt_boxes,
            gt_positive_maps=[m.bool() for m in positive_maps],
            token_logits=token_logits,
            text_mask=torch.ones(2, num_tokens, dtype=torch.bool),
            box_deltas=box_deltas,
            centerness_logits=centerness_logits,
            box2box_transform=TRANSFORM,
        )

    initial = {name: value.item() for name, value in losses().items()}
    for _ in range(50):
        optimizer.zero_grad()
        sum(losses().values()).backward()
        optimizer.step()
    final = {name: value.item() for name, value in losses().items()}
    # The centerness BCE cannot go below the entropy of its targets; the other two can reach 0.
    anchors = torch.cat([level0, level1])
    targets = torch.cat([centerness_targets(anchors[m >= 0], b[m[m >= 0]]) for m, b in zip(matched, gt_boxes)])
    floor = {"loss_align": 0.0, "loss_box_giou": 0.0}
    floor["loss_centerness"] = F.binary_cross_entropy(targets, targets, reduction="sum").item() / targets.numel()
    for name in initial:
        assert final[name] - floor[name] < 0.7 * (initial[name] - floor[name]), (name, initial[name], final[name])


# ---------------------------------------------------------------- inference


def test_label_scores_mean_of_token_sigmoids():
    token_logits = torch.tensor([[0.0, math.log(3.0), math.log(4.0), -1.0]])  # sigmoids 1/2, 3/4, 4/5, ...
    label_token_map = torch.tensor([[True, True, False, False], [False, False, True, False]])
    torch.testing.assert_close(label_scores(token_logits, label_token_map), torch.tensor([[0.625, 0.8]]))


def test_label_scores_rejects_label_without_tokens():
    label_token_map = torch.tensor([[True, False], [False, False], [False, True]])
    with pytest.raises(ValueError, match=r"labels \[1\]"):
        label_scores(torch.zeros(3, 2), label_token_map)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


LOW = -20.0  # sigmoid ~ 2e-9
LABEL_TOKEN_MAP = torch.tensor([[True, False], [False, True]])  # label 0 -> token 0, label 1 -> token 1
LABEL_IDS = torch.tensor([7, 3])


def _postprocess(anchors, token_logits, centerness, image_size=(300, 300), **kwargs) -> Instances:
    """One level, zero deltas (boxes = anchors)."""
    anchors = torch.tensor(anchors, dtype=torch.float32)
    return postprocess_detections(
        [anchors],
        [torch.tensor(token_logits)],
        [torch.zeros_like(anchors)],
        [torch.tensor(centerness)],
        LABEL_TOKEN_MAP,
        LABEL_IDS,
        image_size,
        TRANSFORM,
        **kwargs,
    )


def test_postprocess_same_label_nms_different_labels_survive():
    overlapping = [[0, 0, 10, 10], [1, 0, 11, 10]]  # IoU 90/110 = 0.82 > 0.6
    # Same label 0: scores sqrt(0.8 * 0.5) and sqrt(0.6 * 0.5): NMS keeps the first.
    same = _postprocess(overlapping, [[_logit(0.8), LOW], [_logit(0.6), LOW]], [0.0, 0.0])
    assert same.pred_boxes.tensor.tolist() == [[0, 0, 10, 10]]
    assert same.pred_classes.tolist() == [7]
    assert same.scores.tolist() == pytest.approx([math.sqrt(0.4)], rel=1e-5)
    # Second box under label 1: both survive, sorted by score, classes mapped through label_ids.
    different = _postprocess(overlapping, [[_logit(0.8), LOW], [LOW, _logit(0.6)]], [0.0, 0.0])
    assert different.pred_boxes.tensor.tolist() == overlapping
    assert different.pred_classes.tolist() == [7, 3]
    assert different.scores.tolist() == pytest.approx([math.sqrt(0.4), math.sqrt(0.3)], rel=1e-5)


def test_postprocess_threshold_is_on_label_score_before_centerness():
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
    token_logits = [
        [_logit(0.06), LOW],  # above 0.05; with centerness 0.01 its final score^2 is 0.0006: kept
        [_logit(0.04), LOW],  # below 0.05 though centerness ~1: dropped
        [_logit(0.9), LOW],
    ]
    centerness = [_logit(0.01), 20.0, _logit(0.5)]
    result = _postprocess(anchors, token_logits, centerness)
    assert result.pred_boxes.tensor.tolist() == [[40, 0, 50, 10], [0, 0, 10, 10]]
    assert result.scores.tolist() == pytest.approx([math.sqrt(0.45), math.sqrt(0.0006)], rel=1e-4)


def test_postprocess_clips_caps_and_keeps_top_per_level():
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10], [90, 50, 110, 60], [40, 200, 50, 210]]
    token_logits = [[_logit(p), LOW] for p in (0.9, 0.8, 0.7, 0.95)]
    result = _postprocess(anchors, token_logits, [0.0] * 4, image_size=(55, 100))
    # Clipped to (h, w) = (55, 100); the last box lies below the image: empty after clipping, dropped.
    assert result.pred_boxes.tensor.tolist() == [[0, 0, 10, 10], [20, 0, 30, 10], [90, 50, 100, 55]]
    assert result.image_size == (55, 100)
    capped = _postprocess(anchors, token_logits, [0.0] * 4, max_detections=2)
    assert capped.scores.tolist() == pytest.approx([math.sqrt(0.95 / 2), math.sqrt(0.9 / 2)], rel=1e-5)
    top1 = _postprocess(anchors, token_logits, [0.0] * 4, pre_nms_topk=1)
    assert top1.pred_boxes.tensor.tolist() == [[40, 200, 50, 210]]


def test_postprocess_levels_each_keep_pre_nms_topk_and_decode_deltas():
    levels = [_boxes([0, 0, 10, 10], [20, 0, 30, 10]), _boxes([0, 40, 20, 60], [40, 40, 60, 60])]
    # Level 0: label 0 at 0.9 and 0.5; level 1: label 1 at 0.3 and 0.7. pre_nms_topk 1 keeps the best of each level.
    logits = [
        torch.tensor([[_logit(0.9), LOW], [_logit(0.5), LOW]]),
        torch.tensor([[LOW, _logit(0.3)], [LOW, _logit(0.7)]]),
    ]
    # dx = 10 with weight 10 moves the 20 px anchor [40, 40, 60, 60] by one width: [60, 40, 80, 60].
    deltas = [torch.zeros(2, 4), torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])]
    result = postprocess_detections(
        levels, logits, deltas, [torch.zeros(2)] * 2, LABEL_TOKEN_MAP, LABEL_IDS, (100, 100), TRANSFORM, pre_nms_topk=1
    )
    assert result.pred_boxes.tensor.tolist() == [[0, 0, 10, 10], [60, 40, 80, 60]]
    assert result.pred_classes.tolist() == [7, 3]


def test_merge_chunk_detections_keeps_top_by_score():
    def chunk(scores: list[float], classes: list[int]) -> Instances:
        instances = Instances((50, 50))
        instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * len(scores)))
        instances.scores = torch.tensor(scores)
        instances.pred_classes = torch.tensor(classes)
        return instances

    merged = merge_chunk_detections([chunk([0.9, 0.3], [0, 1]), chunk([0.95, 0.5], [40, 41])], max_detections=3)
    assert merged.scores.tolist() == pytest.approx([0.95, 0.9, 0.5])
    assert merged.pred_classes.tolist() == [40, 0, 41]
    assert len(merge_chunk_detections([chunk([0.2], [5])], max_detections=3)) == 1
    with pytest.raises(ValueError):
        merge_chunk_detections([], max_detections=3)
