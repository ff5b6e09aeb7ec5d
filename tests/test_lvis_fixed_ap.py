"""LVIS Fixed AP (top k per category, no per-image cap) against the standard per-image cap, on hand-made LVIS data.

Every category has one GT box and every detection is an exact match (IoU 1) or a clear miss (IoU 0), so a
category's AP is the same at every IoU threshold: 1/n when its TP ranks n-th among the category's scored
detections (the interpolated precision is 1/n at every recall level up to 1), 0 when the TP is not kept.
"""
import json
import math
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from lvis import LVIS

from fiber_d2.config import add_fiber_config
from fiber_d2.evaluation import LVISFixedAPEvaluator, build_evaluator, fixed_ap_top_k
from fiber_d2.evaluation.lvis_compat import StandardLVISEvaluator
from fiber_d2.evaluation.lvis_fixed_ap import lvis_box_ap

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

APPLE, BALL, CUP = 0, 1, 2  # predicted class indices; LVIS category ids 1, 2, 3 (rare, common, frequent)


def _lvis_json(category_ids=(1, 2, 3)):
    apple, ball, cup = category_ids

    def image(image_id, neg_category_ids):
        return {"id": image_id, "width": 100, "height": 100, "file_name": f"{image_id}.jpg",
                "not_exhaustive_category_ids": [], "neg_category_ids": neg_category_ids}

    def annotation(annotation_id, image_id, category_id, xywh):
        return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": xywh,
                "area": xywh[2] * xywh[3], "segmentation": [], "iscrowd": 0}

    return {
        # Image 1 shows an apple and a ball and no cup; image 2 a cup and no apple or ball.
        "images": [image(1, [cup]), image(2, [apple, ball])],
        "categories": [{"id": apple, "name": "apple", "synonyms": ["apple"], "frequency": "r"},
                       {"id": ball, "name": "ball", "synonyms": ["ball"], "frequency": "c"},
                       {"id": cup, "name": "cup", "synonyms": ["cup"], "frequency": "f"}],
        "annotations": [annotation(1, 1, apple, [0, 0, 10, 10]), annotation(2, 1, ball, [20, 0, 10, 10]),
                        annotation(3, 2, cup, [0, 0, 10, 10])],
    }


def _instances(detections):
    """detections: (xyxy box, score, class index) triples."""
    instances = Instances((100, 100))
    instances.pred_boxes = Boxes(torch.tensor([box for box, _, _ in detections], dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([score for _, score, _ in detections], dtype=torch.float32)
    instances.pred_classes = torch.tensor([label for _, _, label in detections], dtype=torch.int64)
    return instances


PREDICTIONS = {
    1: [([20, 0, 30, 10], 0.875, BALL),  # TP
        ([40, 40, 50, 50], 0.75, CUP),  # FP (cup is a negative of image 1)
        ([0, 0, 10, 10], 0.25, APPLE)],  # TP, but 3rd in its image: a per-image cap of 2 drops it
    2: [([50, 50, 60, 60], 0.625, APPLE),  # FP (apple is a negative of image 2)
        ([60, 60, 70, 70], 0.5, CUP),  # FP
        ([0, 0, 10, 10], 0.375, CUP)],  # TP, 3rd of the cup detections: Fixed AP with top_k 2 drops it
}
NAN = float("nan")
# Per category (apple, ball, cup) in percent; AP = AP50 = AP75 = APs (all boxes are 10x10, "small"), no medium or
# large GT (NaN); APr/APc/APf = the apple's/ball's/cup's AP.
# Per-image cap 2: apple [FP], TP dropped: 0; ball [TP]: 100; cup [FP .75, FP .5], TP dropped: 0 -> AP 100/3.
# Fixed AP, top_k 2: apple [FP .625, TP .25]: 50; ball 100; cup [FP .75, FP .5], TP dropped: 0 -> AP 50.
# No cap binds (top_k 10000 or per-image cap 300): apple 50; ball 100; cup [FP, FP, TP]: 100/3 -> AP 550/9.
CAP_2 = {"AP": 100 / 3, "APr": 0.0, "APc": 100.0, "APf": 0.0}
FIXED_TOP_2 = {"AP": 50.0, "APr": 50.0, "APc": 100.0, "APf": 0.0}
UNCAPPED = {"AP": 550 / 9, "APr": 50.0, "APc": 100.0, "APf": 100 / 3}


def _full(metrics):
    return {**metrics, "AP50": metrics["AP"], "AP75": metrics["AP"], "APs": metrics["AP"], "APm": NAN, "APl": NAN}


def _assert_metrics(actual, expected):
    assert actual.keys() >= expected.keys()
    for metric, value in expected.items():
        assert actual[metric] == pytest.approx(value, nan_ok=True), metric


@pytest.fixture
def lvis_dataset(register, tmp_path):
    """lvis_dataset(category_ids, **metadata) -> the name of a registered "lvis" dataset whose json_file holds
    `_lvis_json(category_ids)` (registered through conftest's `register`, removed after the test)."""

    def _lvis_dataset(category_ids=(1, 2, 3), **metadata):
        json_file = tmp_path / f"lvis_{uuid.uuid4().hex[:8]}.json"
        json_file.write_text(json.dumps(_lvis_json(category_ids)))
        return register([], json_file=str(json_file), evaluator_type="lvis", **metadata)

    return _lvis_dataset


def _evaluate(evaluator, image_ids=(1, 2)):
    evaluator.reset()
    for image_id in image_ids:
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(PREDICTIONS[image_id])}])
    return evaluator.evaluate()


def _det(image_id, category_id, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": [0, 0, 1, 1], "score": score}


def test_fixed_ap_top_k_per_category_over_all_images_in_input_order():
    detections = [_det(1, 7, 0.1), _det(1, 8, 0.2), _det(2, 7, 0.9), _det(2, 7, 0.3), _det(3, 8, 0.05),
                  _det(3, 7, 0.5)]
    # Category 7: 0.9, 0.5 kept, 0.3 and 0.1 dropped; category 8 has only 2 detections: both kept, from images 1 and 3.
    assert fixed_ap_top_k(detections, top_k=2) == [detections[i] for i in (1, 2, 4, 5)]
    assert fixed_ap_top_k(detections, top_k=1) == [detections[1], detections[2]]
    assert fixed_ap_top_k(detections) == detections
    assert fixed_ap_top_k([], top_k=3) == []
    with pytest.raises(ValueError, match="top_k"):
        fixed_ap_top_k(detections, top_k=0)


def test_fixed_ap_top_k_ties_keep_the_earlier_detection():
    detections = [_det(1, 7, 0.5), _det(2, 7, 0.8), _det(3, 7, 0.5), _det(4, 7, 0.5)]
    assert fixed_ap_top_k(detections, top_k=2) == [detections[0], detections[1]]
    assert fixed_ap_top_k(detections, top_k=3) == [detections[0], detections[1], detections[2]]


def test_lvis_box_ap_per_image_cap_versus_fixed_ap(tmp_path):
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(_lvis_json()))
    lvis_api = LVIS(str(path))
    detections = [
        {"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
        for image_id, image_detections in PREDICTIONS.items() for (x0, y0, x1, y1), score, label in image_detections
    ]
    _assert_metrics(lvis_box_ap(lvis_api, detections, max_dets_per_image=2), _full(CAP_2))
    _assert_metrics(lvis_box_ap(lvis_api, detections, max_dets_per_image=300), _full(UNCAPPED))
    _assert_metrics(lvis_box_ap(lvis_api, fixed_ap_top_k(detections, top_k=2)), _full(FIXED_TOP_2))
    _assert_metrics(lvis_box_ap(lvis_api, detections), _full(UNCAPPED))
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in detections)  # not modified
    assert all(math.isnan(value) for value in lvis_box_ap(lvis_api, []).values())


@pytest.mark.parametrize("category_ids, mapped", [((1, 2, 3), False), ((10, 20, 30), True)])
def test_evaluator_end_to_end_next_to_detectron2(lvis_dataset, tmp_path, category_ids, mapped):
    metadata = {"thing_dataset_id_to_contiguous_id": {10: 0, 20: 1, 30: 2}} if mapped else {}
    name = lvis_dataset(category_ids, **metadata)
    output_dir = tmp_path / "out"
    results = _evaluate(LVISFixedAPEvaluator(name, output_dir=str(output_dir), top_k_per_category=2))
    assert results.keys() == {"bbox"}
    _assert_metrics(results["bbox"], _full(FIXED_TOP_2))
    _assert_metrics(_evaluate(LVISFixedAPEvaluator(name))["bbox"], _full(UNCAPPED))

    # Detectron2's evaluator on the same outputs, with its per-image cap at 2 (it gives -100 where we give NaN).
    standard = _evaluate(StandardLVISEvaluator(name, tasks=("bbox",), max_dets_per_image=2))
    _assert_metrics(standard["bbox"], CAP_2)

    apple, ball, cup = category_ids
    dumped = json.loads((output_dir / "lvis_fixed_ap_results.json").read_text())
    assert [(d["image_id"], d["category_id"], d["score"]) for d in dumped] == [
        (1, ball, 0.875), (1, cup, 0.75), (1, apple, 0.25), (2, apple, 0.625), (2, cup, 0.5)]
    assert dumped[0]["bbox"] == [20, 0, 10, 10]


def test_image_seen_twice_counts_once_and_errors_name_the_dataset(lvis_dataset, caplog):
    name = lvis_dataset()
    evaluator = LVISFixedAPEvaluator(name)
    # Counted twice, image 2's detections would put the apple's TP 3rd (AP 100/3) and the cup's 4th (AP 25).
    _assert_metrics(_evaluate(evaluator, image_ids=[2, 1, 2])["bbox"], UNCAPPED)
    _assert_metrics(_evaluate(evaluator, image_ids=[1])["bbox"], {"APr": 100.0, "APc": 100.0, "APf": 0.0})
    assert "1 of 2 images" in caplog.text
    with pytest.raises(KeyError, match=f"image_id 99 is not an image of dataset '{name}'"):
        evaluator.process([{"image_id": 99}], [{"instances": _instances([])}])
    with pytest.raises(KeyError, match=f"dataset '{name}', image_id 1: predicted class 3"):
        evaluator.process([{"image_id": 1}], [{"instances": _instances([([0, 0, 10, 10], 0.5, 3)])}])
    with pytest.raises(ValueError, match="top_k_per_category"):
        LVISFixedAPEvaluator(name, top_k_per_category=0)


def test_two_processes_gather_on_the_main_one(lvis_dataset, two_processes):
    name = lvis_dataset()
    two_processes.as_rank1()
    assert _evaluate(LVISFixedAPEvaluator(name, top_k_per_category=2), image_ids=[2]) == {}

    two_processes.as_rank0()
    # Image 2 on both ranks (the inference sampler pads the last batch): counted once.
    results = _evaluate(LVISFixedAPEvaluator(name, top_k_per_category=2), image_ids=[1, 2])
    _assert_metrics(results["bbox"], _full(FIXED_TOP_2))


def test_build_evaluator_picks_fixed_ap_by_config(lvis_dataset):
    cfg = get_cfg()
    add_fiber_config(cfg)
    name = lvis_dataset()
    assert cfg.TEST.LVIS_FIXED_AP is False
    assert type(build_evaluator(cfg, name)) is StandardLVISEvaluator
    cfg.TEST.LVIS_FIXED_AP = True
    assert isinstance(build_evaluator(cfg, name), LVISFixedAPEvaluator)
