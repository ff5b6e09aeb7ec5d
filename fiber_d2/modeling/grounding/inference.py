"""From token alignment scores to detections (GLIP's ATSSPostProcessor with SCORE_AGG MEAN; docs/FIBER_DETAILS.md).

Follows GLIP `maskrcnn_benchmark/modeling/rpn/inference.py` (`ATSSPostProcessor`, `convert_grounding_to_od_logits`):
per FPN level, a label's score at an anchor is the mean sigmoid of its tokens' logits; (anchor, label) pairs whose
label score (before centerness) exceeds `score_thresh` are candidates; the top `pre_nms_topk` of them by
label score x sigmoid(centerness) are decoded. Over all levels: boxes clipped to the image, class-wise NMS, the best
`max_detections` kept. The reported score is sqrt(label score x sigmoid(centerness)), also the NMS score.

Departures: boxes are clipped to [0, w] x [0, h] (detectron2) instead of [0, w - 1] x [0, h - 1], and boxes left
empty by clipping are dropped (the official `remove_small_boxes(min_size=0)` keeps them; they match nothing).
The cap is an exact top-k; the official `kthvalue` threshold can keep more than `max_detections` on ties.
"""
from __future__ import annotations

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torchvision.ops import batched_nms


def label_scores(token_logits: torch.Tensor, label_token_map: torch.Tensor) -> torch.Tensor:
    """token_logits [..., T], label_token_map [L, T] (bool) -> mean sigmoid over each label's tokens [..., L]."""
    counts = label_token_map.sum(dim=1)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"labels {empty} of the prompt cover no token (check their character spans)")
    weights = label_token_map.to(token_logits.dtype) / counts.unsqueeze(1).to(token_logits.dtype)
    return token_logits.sigmoid() @ weights.T


def postprocess_detections(
    anchors_per_level: list[torch.Tensor],
    token_logits_per_level: list[torch.Tensor],
    box_deltas_per_level: list[torch.Tensor],
    centerness_per_level: list[torch.Tensor],
    label_token_map: torch.Tensor,
    label_ids: torch.Tensor,
    image_size: tuple[int, int],
    box2box_transform: Box2BoxTransform,
    score_thresh: float = 0.05,
    pre_nms_topk: int = 1000,
    nms_thresh: float = 0.6,
    max_detections: int = 100,
) -> Instances:
    """Detections of ONE image and one prompt.

    Per level: anchors [A_l, 4] (XYXY px), token logits [A_l, T], box deltas [A_l, 4], centerness logits [A_l];
    label_token_map [L, T] (bool); label_ids [L] (the global label id of each of the prompt's labels); image_size
    (h, w) of the resized, unpadded input. Returns Instances of at most `max_detections`, sorted by decreasing score:
    pred_boxes (Boxes, input px), scores [N] in [0, 1], pred_classes [N] (global label ids).
    """
    boxes_all, scores_all, labels_all = [], [], []
    for anchors, logits, deltas, centerness in zip(
        anchors_per_level, token_logits_per_level, box_deltas_per_level, centerness_per_level
    ):
        scores = label_scores(logits, label_token_map)  # [A_l, L]
        candidates = scores > score_thresh
        combined = (scores * centerness.sigmoid().unsqueeze(1))[candidates]
        anchor_index, label_index = torch.nonzero(candidates, as_tuple=True)
        if combined.numel() > pre_nms_topk:
            combined, keep = combined.topk(pre_nms_topk)
            anchor_index, label_index = anchor_index[keep], label_index[keep]
        boxes_all.append(box2box_transform.apply_deltas(deltas[anchor_index], anchors[anchor_index]))
        scores_all.append(combined.sqrt())
        labels_all.append(label_index)
    boxes = Boxes(torch.cat(boxes_all))
    scores = torch.cat(scores_all)
    labels = torch.cat(labels_all)
    boxes.clip(image_size)
    keep = boxes.nonempty()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes.tensor, scores, labels, nms_thresh)[:max_detections]
    result = Instances(image_size)
    result.pred_boxes = boxes[keep]
    result.scores = scores[keep]
    result.pred_classes = label_ids[labels[keep]]
    return result


def merge_chunk_detections(per_chunk: list[Instances], max_detections: int) -> Instances:
    """Detections of several prompts (chunks of one vocabulary) for one image -> the best `max_detections`, sorted by
    decreasing score. No NMS across chunks: their labels differ."""
    if not per_chunk:
        raise ValueError("merge_chunk_detections needs the detections of at least one chunk")
    merged = Instances.cat(per_chunk)
    return merged[merged.scores.argsort(descending=True, stable=True)[:max_detections]]
