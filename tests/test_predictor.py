"""FiberPredictor's options (score_threshold, one_label_per_box, text_labels), phrase grounding of a caption, checks of
its inputs, and find_phrases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import pairwise_iou
from PIL import Image
from test_grounding_detector import micro_cfg, micro_model, open_gates

from fiber_d2.data.grounding_mapper import GroundingDatasetMapper
from fiber_d2.data.image_io import ImageError
from fiber_d2.data.phrases import find_phrases
from fiber_d2.data.positive_map import PromptError
from fiber_d2.engine import predictor as predictor_module
from fiber_d2.engine.predictor import FiberPredictor

PROMPT = "red circle. blue star. green square"
CAPTION = "a red circle left of the blue star"
SPANS = [[2, 12], [25, 34]]  # "red circle", "blue star"


@pytest.fixture(scope="module")
def predictor_and_cfg(tokenizer_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("predictor")
    model = micro_model(tokenizer_dir, seed=3)
    open_gates(model, 0.25)
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    cfg = micro_cfg(tokenizer_dir, **{"MODEL.WEIGHTS": str(root / "model.pth"),
                                      "MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    return FiberPredictor(cfg), cfg


@pytest.fixture(scope="module")
def predictor(predictor_and_cfg):
    return predictor_and_cfg[0]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def test_score_threshold_keeps_the_detections_scoring_at_least_it(predictor, image):
    every = predictor(image, PROMPT)
    scores = every["instances"].scores
    threshold = float(scores.median())
    kept = predictor(image, PROMPT, score_threshold=threshold)
    assert 0 < len(kept["instances"]) < len(every["instances"])
    want = every["instances"][scores >= threshold]
    torch.testing.assert_close(kept["instances"].scores, want.scores)
    torch.testing.assert_close(kept["instances"].pred_boxes.tensor, want.pred_boxes.tensor)
    for output in (every, kept):
        names = ["red circle", "blue star", "green square"]
        assert output["label_names"] == names
        assert output["text_labels"] == [names[c] for c in output["instances"].pred_classes.tolist()]
    assert set(every["text_labels"]) == {"red circle", "blue star", "green square"}
    with pytest.raises(ValueError, match=r"^score_threshold must be in \[0, 1\] or None, got 1.5$"):
        predictor(image, PROMPT, score_threshold=1.5)


def test_one_label_per_box_leaves_no_stacked_boxes(predictor, image):
    threshold = predictor.model.nms_thresh_test
    every = predictor(image, PROMPT)["instances"]
    one = predictor(image, PROMPT, one_label_per_box=True)
    kept = one["instances"]
    iou = pairwise_iou(every.pred_boxes, every.pred_boxes).fill_diagonal_(0)
    assert (iou > threshold).any()  # per-label NMS leaves boxes of different labels on one object
    assert not (pairwise_iou(kept.pred_boxes, kept.pred_boxes).fill_diagonal_(0) > threshold).any()
    # Greedy NMS across labels: the kept detections are the full output's, and every dropped one overlaps a kept one
    # that scores at least as much.
    index = [int(torch.nonzero((every.pred_boxes.tensor == box).all(dim=1))[0]) for box in kept.pred_boxes.tensor]
    assert torch.equal(every.scores[index], kept.scores) and torch.equal(every.pred_classes[index], kept.pred_classes)
    assert kept.scores.tolist() == sorted(kept.scores.tolist(), reverse=True)
    dropped = [i for i in range(len(every)) if i not in index]
    assert dropped
    overlaps = pairwise_iou(every.pred_boxes[dropped], kept.pred_boxes) > threshold
    assert all((overlaps[row] & (kept.scores >= every.scores[i])).any() for row, i in enumerate(dropped))
    assert one["text_labels"] == [one["label_names"][c] for c in kept.pred_classes.tolist()]


def test_ground_with_spans_equals_the_grounding_mapper_and_model(predictor_and_cfg, image, tmp_path):
    predictor, cfg = predictor_and_cfg
    output = predictor.ground(image, CAPTION, SPANS)
    assert output["label_names"] == ["red circle", "blue star"]
    assert output["phrase_spans"] == [[[2, 12]], [[25, 34]]]
    instances = output["instances"]
    assert instances.image_size == (90, 120)
    assert set(instances.pred_classes.tolist()) == {0, 1}  # boxes for each phrase
    assert output["text_labels"] == [["red circle", "blue star"][c] for c in instances.pred_classes.tolist()]

    # The same caption and spans as a grounding record through the evaluation path.
    path = tmp_path / "image.png"
    Image.fromarray(image[:, :, ::-1]).save(path)
    record = {"file_name": str(path), "image_id": 1, "caption": CAPTION,
              "annotations": [{"bbox": [0, 0, 9, 9], "bbox_mode": 1, "tokens_positive": [span]} for span in SPANS]}
    inputs = GroundingDatasetMapper(cfg, False)(record)
    assert inputs["label_names"] == output["label_names"]
    with torch.no_grad():
        want = predictor.model([inputs])[0]["instances"]
    assert len(want) == len(instances)
    torch.testing.assert_close(instances.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(instances.scores, want.scores)
    assert torch.equal(instances.pred_classes, want.pred_classes)

    strict = predictor.ground(image, CAPTION, [[2, 12], [[25, 29], [30, 34]]], score_threshold=0.1,
                              one_label_per_box=True)
    assert strict["phrase_spans"] == [[[2, 12]], [[25, 29], [30, 34]]]
    assert strict["label_names"] == ["red circle", "blue star"]
    assert (strict["instances"].scores >= 0.1).all()


def test_ground_without_spans_grounds_the_phrases_it_finds(predictor, image):
    found = predictor.ground(image, CAPTION)
    given = predictor.ground(image, CAPTION, SPANS)
    assert found["phrase_spans"] == find_phrases(CAPTION) == [[[2, 12]], [[25, 34]]]
    assert found["label_names"] == given["label_names"]
    torch.testing.assert_close(found["instances"].scores, given["instances"].scores)


@pytest.mark.parametrize("caption, spans, message", [
    ("  ", None, "^the caption '  ' is empty: nothing to ground$"),
    ("of the, and it", None, "^found no phrase in the caption 'of the, and it': pass its phrases' spans$"),
    (CAPTION, [[2, 12], [30, 50]], r"^the caption, phrase 1: span \[30, 50\]"),
    (CAPTION, [[2, 12], "blue"], r"^spans\[1\] = 'blue': expected \[start, end\] or a list of \[start, end\]"),
])
def test_ground_refuses_bad_captions_and_spans(predictor, image, caption, spans, message):
    with pytest.raises(PromptError, match=message):
        predictor.ground(image, caption, spans)


@pytest.mark.parametrize("array, message", [
    (np.zeros((90, 120, 3), np.float32) + 0.5, r"got dtype float32 with values in \[0.5, 0.5\] \(a float image"),
    (np.zeros((90, 120, 3), np.uint16), r"got dtype uint16 with values in \[0, 0\]"),
    (np.zeros((90, 120, 3), bool), r"got dtype bool"),
    (np.zeros((0, 0, 3), np.uint8), r"got shape \(0, 0, 3\)$"),
    (np.zeros((1, 4000, 3), np.uint8), r"^image 1: a 1x4000 \(height x width\) image resized to at most "
                                       r"INPUT.MAX_SIZE_TEST = 128 pixels on its long side would be 0x128; expected a "
                                       r"long side at most 256 times the short side$"),
])
def test_bad_image_arrays_are_refused_with_what_is_expected(predictor, image, array, message):
    with pytest.raises(ImageError, match=message) as error:
        predictor.predict_batch([image, array], PROMPT)
    assert str(error.value).startswith("image 1: ")


def test_an_image_resized_to_one_row_is_detected_in(predictor):
    output = predictor(np.zeros((4, 1000, 3), np.uint8), PROMPT)  # resized to 1x128
    assert output["instances"].image_size == (4, 1000) and len(output["instances"]) > 0


def test_a_model_that_is_no_grounding_detector_is_refused(predictor_and_cfg, monkeypatch):
    monkeypatch.setattr(predictor_module, "build_model", lambda cfg: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"^FiberPredictor needs a FIBER grounding detector \(MODEL.META_ARCHITECTURE "
                                         r"FiberGroundingDetector\); the config builds Linear$"):
        FiberPredictor(predictor_and_cfg[1])


@pytest.mark.parametrize("caption, phrases", [
    ("a red circle left of two blue stars, and the sky.", ["red circle", "blue stars", "sky"]),
    ("A man riding a horse on the beach", ["man riding", "horse", "beach"]),
    ("red circle. blue star", ["red circle", "blue star"]),
    ("the cat's toy-box near it", ["cat's toy-box"]),
    ("the, of. and", []),
])
def test_find_phrases(caption, phrases):
    found = find_phrases(caption)
    assert all(len(spans) == 1 for spans in found)
    assert [caption[start:end] for ((start, end),) in found] == phrases
