"""FlickrGroundingEvaluator and RefExpEvaluator on hand-made records whose metrics are worked out by hand."""
import json
import logging

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, BoxMode, Instances

from fiber_d2.config import add_fiber_config
from fiber_d2.evaluation import FlickrGroundingEvaluator, RefExpEvaluator, build_evaluator


def _span(caption, text):
    start = caption.index(text)
    return [[start, start + len(text)]]


def _annotation(caption, text, xywh):
    return {"bbox": xywh, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "tokens_positive": _span(caption, text)}


def _record(image_id, caption, annotations, phrases=None):
    record = {"file_name": f"{image_id}.jpg", "image_id": image_id, "height": 200, "width": 200, "caption": caption,
              "annotations": annotations}
    if phrases is not None:
        record["tokens_positive_eval"] = [_span(caption, phrase) for phrase in phrases]
    return record


def _instances(predictions):
    """predictions: (xyxy box, score, phrase index) triples, in any order."""
    instances = Instances((200, 200))
    instances.pred_boxes = Boxes(torch.tensor([box for box, _, _ in predictions], dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([score for _, score, _ in predictions], dtype=torch.float32)
    instances.pred_classes = torch.tensor([label for _, _, label in predictions], dtype=torch.int64)
    return instances


CAPTION_A = "a red square and two blue circles and the sky"
FLICKR_RECORDS = [
    _record(1, CAPTION_A, [
        _annotation(CAPTION_A, "a red square", [0, 0, 20, 20]),
        _annotation(CAPTION_A, "two blue circles", [60, 0, 20, 20]),
        _annotation(CAPTION_A, "two blue circles", [60, 60, 20, 20]),
    ], phrases=["a red square", "two blue circles", "the sky"]),  # "the sky" has no box: not scored
    _record(2, "a green triangle", [_annotation("a green triangle", "a green triangle", [10, 10, 30, 30])],
            phrases=["a green triangle"]),
    _record(3, "a yellow star", [_annotation("a yellow star", "a yellow star", [50, 50, 20, 20])],
            phrases=["a yellow star"]),
]
FLICKR_PREDICTIONS = {
    1: _instances([
        ([0, 0, 20, 20], 0.7, 0),  # phrase 0: the square, ranked 3rd behind two misses
        ([40, 40, 50, 50], 0.9, 0),
        ([80, 80, 90, 90], 0.8, 0),
        ([60, 0, 80, 20], 0.95, 1),  # phrase 1: exactly the first circle; IoU 0.25 with the merged box
        ([0, 0, 20, 20], 0.5, 1),  # the square, but predicted for phrase 1: a miss for both phrases' purposes
        ([60, 0, 80, 80], 0.1, 1),  # the merged box of the circles; IoU 0.25 with each circle
        ([0, 0, 100, 100], 0.99, 2),  # "the sky" is not scored
    ]),
    2: _instances([]),  # no prediction: a miss
    3: _instances([([0, 0, 10, 10], 0.9 - 0.05 * i, 0) for i in range(6)] + [([50, 50, 70, 70], 0.3, 0)]),  # 7th
}
# Scored phrases (1, 0), (1, 1), (2, 0), (3, 0); first-hit ranks "any": 3, 1, -, 7; "merged": 3, 3, -, 7.
FLICKR_ANY = {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}
FLICKR_MERGED = {"R@1": 0.0, "R@5": 50.0, "R@10": 75.0}

REFEXP_RECORDS = [
    _record(10, "the big square", [_annotation("the big square", "the big square", [0, 0, 100, 100])]),
    _record(11, "the circle", [_annotation("the circle", "the circle", [100, 100, 50, 50])]),
    _record(12, "the star", [_annotation("the star", "the star", [0, 0, 10, 10])]),
    _record(13, "the cross", [_annotation("the cross", "the cross", [0, 0, 10, 10]),
                              _annotation("the cross", "the cross", [50, 50, 10, 10])]),
]
REFEXP_PREDICTIONS = {
    # IoU = 82^2 / (2 * 100^2 - 82^2) = 0.506; GIoU = 0.506 - (118^2 - 13276) / 118^2 = 0.460.
    10: _instances([([18, 18, 118, 118], 0.9, 0)]),
    11: _instances([([100, 100, 150, 150], 0.7, 0), ([0, 0, 10, 10], 0.9, 0), ([0, 0, 20, 20], 0.8, 0)]),  # 3rd
    12: _instances([([0, 0, 10, 10], 0.2, 0)] + [([100, 100, 110, 110], 0.9 - 0.1 * i, 0) for i in range(6)]),  # 7th
    13: _instances([([50, 50, 60, 60], 0.9, 0)]),  # on the second GT box; only the first one is scored
}
# First-hit ranks "iou": 1, 3, 7, -; "giou": -, 3, 7, -.
REFEXP_IOU = {"P@1": 25.0, "P@5": 50.0, "P@10": 75.0}
REFEXP_GIOU = {"P@1": 0.0, "P@5": 25.0, "P@10": 50.0}


def _evaluate(evaluator, predictions, image_ids=None):
    evaluator.reset()
    for image_id in predictions if image_ids is None else image_ids:
        evaluator.process([{"image_id": image_id}], [{"instances": predictions[image_id]}])
    return evaluator.evaluate()


def test_flickr_any_box_and_merged_protocols(register):
    separate = register(FLICKR_RECORDS, evaluator_type="flickr30k", merged_gt=False)
    merged = register(FLICKR_RECORDS, evaluator_type="flickr30k", merged_gt=True)
    assert FlickrGroundingEvaluator(separate).protocol == "any"
    assert FlickrGroundingEvaluator(merged).protocol == "merged"
    assert _evaluate(FlickrGroundingEvaluator(separate), FLICKR_PREDICTIONS) == {"grounding": FLICKR_ANY}
    assert _evaluate(FlickrGroundingEvaluator(merged), FLICKR_PREDICTIONS) == {"grounding": FLICKR_MERGED}
    assert _evaluate(FlickrGroundingEvaluator(merged, protocol="any"), FLICKR_PREDICTIONS) == {"grounding": FLICKR_ANY}
    with pytest.raises(ValueError, match="'union'"):
        FlickrGroundingEvaluator(separate, protocol="union")


def test_flickr_unseen_records_warn_and_per_phrase_dump(register, tmp_path, caplog):
    name = register(FLICKR_RECORDS, evaluator_type="flickr30k")
    evaluator = FlickrGroundingEvaluator(name, output_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="fiber_d2.evaluation"):
        results = _evaluate(evaluator, FLICKR_PREDICTIONS, image_ids=[1])
    assert results == {"grounding": {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0}}  # ranks 3 and 1
    assert "2 of 3 records" in caplog.text
    assert "1 records; box hit at IoU >= 0.5 with ANY of the phrase's GT boxes)" in caplog.text
    rows = json.loads((tmp_path / "flickr30k_phrase_ranks.json").read_text())
    assert rows == [{"image_id": 1, "phrase_index": 0, "rank": 3}, {"image_id": 1, "phrase_index": 1, "rank": 1}]
    with pytest.raises(KeyError, match="99"):
        evaluator.process([{"image_id": 99}], [{"instances": _instances([])}])


def test_refexp_iou_and_giou_precision(register, caplog):
    name = register(REFEXP_RECORDS, evaluator_type="refexp")
    with caplog.at_level(logging.INFO, logger="fiber_d2.evaluation"):
        assert _evaluate(RefExpEvaluator(name), REFEXP_PREDICTIONS) == {"refexp": REFEXP_GIOU}  # official default
    assert "4 records; box hit at GIoU (MDETR/FIBER protocol) >= 0.5)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fiber_d2.evaluation"):
        assert _evaluate(RefExpEvaluator(name, match="iou"), REFEXP_PREDICTIONS) == {"refexp": REFEXP_IOU}
    assert "4 records; box hit at IoU >= 0.5)" in caplog.text
    with pytest.raises(ValueError, match="'diou'"):
        RefExpEvaluator(name, match="diou")


def test_records_seen_by_two_processes_count_once(register, two_processes):
    name = register(FLICKR_RECORDS, evaluator_type="flickr30k")
    two_processes.as_rank1()
    assert _evaluate(FlickrGroundingEvaluator(name), FLICKR_PREDICTIONS, image_ids=[2, 3]) == {}

    two_processes.as_rank0()
    # Record 1 twice on rank 0 and record 2 on both ranks: 4 scored phrases, not 5 or 7.
    results = _evaluate(FlickrGroundingEvaluator(name), FLICKR_PREDICTIONS, image_ids=[1, 1, 2])
    assert results == {"grounding": FLICKR_ANY}


def test_build_evaluator_from_metadata(register):
    cfg = get_cfg()
    add_fiber_config(cfg)
    flickr = build_evaluator(cfg, register(FLICKR_RECORDS, evaluator_type="flickr30k", merged_gt=True))
    assert isinstance(flickr, FlickrGroundingEvaluator) and flickr.protocol == "merged"
    refexp_name = register(REFEXP_RECORDS, evaluator_type="refexp")
    assert build_evaluator(cfg, refexp_name).match == "giou"  # TEST.REFEXP_BOX_MATCH's default: the official protocol
    cfg.TEST.REFEXP_BOX_MATCH = "iou"
    refexp = build_evaluator(cfg, refexp_name)
    assert isinstance(refexp, RefExpEvaluator) and refexp.match == "iou"
    with pytest.raises(NotImplementedError, match="'flickr30k', 'refexp'"):
        build_evaluator(cfg, register([], evaluator_type="nonexistent"))
