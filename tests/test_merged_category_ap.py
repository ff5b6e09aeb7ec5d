"""Merged-category AP50 (fiber_d2/evaluation/merged_category_ap.py) and tools/shapes_ap_breakdown.py, on hand-made
detections whose APs are computed by hand."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from fiber_d2.evaluation.merged_category_ap import colour_shape_breakdown, merged_category_ap50

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}, {"id": 3, "name": "blue circle"},
              {"id": 4, "name": "red square"}]
BOX_A, BOX_B = [10.0, 10.0, 20.0, 20.0], [40.0, 40.0, 20.0, 20.0]


def _coco_gt() -> dict:
    """Image 1: a red circle at A; image 2: a blue square at B."""
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX_A, "area": 400.0, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": BOX_B, "area": 400.0, "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }


# The red circle found (score 0.6); the blue square's box found with the right colour, the wrong shape (0.9).
DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": BOX_A, "score": 0.6},
    {"image_id": 2, "category_id": 3, "bbox": BOX_B, "score": 0.9},
]


def test_breakdown_on_hand_computed_detections():
    result = colour_shape_breakdown(_coco_gt(), DETECTIONS)
    # Categories: red circle 100, blue square 0 (missed), the two without boxes left out -> 50.
    # Colours: red 100, blue 100 -> 100. Class-agnostic: both boxes found -> 100.
    # Shapes: "circle" ranks the blue square's box (a false positive, 0.9) above the red circle (0.6): precision 1/2
    # at recall 1 -> 50; "square" 0 -> 25.
    assert result == pytest.approx({"AP50": 50.0, "AP50_colour": 100.0, "AP50_shape": 25.0,
                                    "AP50_class_agnostic": 100.0})


def test_merging_leaves_the_inputs_unchanged_and_handles_edge_cases():
    gt = _coco_gt()
    detections = [dict(d) for d in DETECTIONS]
    merged_category_ap50(gt, detections, lambda name: name.split()[-1])
    assert gt == _coco_gt() and detections == DETECTIONS
    assert merged_category_ap50(gt, [], lambda name: name) == 0.0
    assert math.isnan(merged_category_ap50({**gt, "annotations": []}, [], lambda name: name))
    with pytest.raises(KeyError, match=r"category ids \[9\]"):
        merged_category_ap50(gt, [{**DETECTIONS[0], "category_id": 9}], lambda name: name)


def _tool():
    spec = importlib.util.spec_from_file_location("shapes_ap_breakdown", REPO / "tools" / "shapes_ap_breakdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_prints_the_breakdown_and_names_bad_inputs(tmp_path, capsys):
    annotations, predictions = tmp_path / "gt.json", tmp_path / "dt.json"
    annotations.write_text(json.dumps(_coco_gt()))
    predictions.write_text(json.dumps(DETECTIONS))
    tool = _tool()
    tool.main(["--annotations", str(annotations), "--predictions", str(predictions)])
    assert json.loads(capsys.readouterr().out) == {"AP50": 50.0, "AP50_colour": 100.0, "AP50_shape": 25.0,
                                                   "AP50_class_agnostic": 100.0}
    with pytest.raises(SystemExit, match="predictions file not found: .*missing.json"):
        tool.main(["--annotations", str(annotations), "--predictions", str(tmp_path / "missing.json")])
    predictions.write_text(json.dumps([{**DETECTIONS[0], "category_id": 9}]))
    with pytest.raises(SystemExit, match=r"dt.json: detections name category ids \[9\]"):
        tool.main(["--annotations", str(annotations), "--predictions", str(predictions)])
