"""FIBER-Shapes caption correctness: the colour-shape pairs a caption names against the image's objects."""
import json

import pytest

from fiber_d2.evaluation.shapes_captions import caption_pairs, load_colorshape_objects, shapes_caption_scores


def test_caption_pairs_reads_singular_and_plural_shapes():
    caption = "an image of a hexagon , an orange square , a white cross and three purple crosses ."
    assert caption_pairs(caption) == {("orange", "square"), ("white", "cross"), ("purple", "cross")}
    assert caption_pairs("Two RED Circles left of a green star") == {("red", "circle"), ("green", "star")}
    assert caption_pairs("a large red circle") == {("red", "circle")}
    assert caption_pairs("a hexagon on a striped background") == set()
    assert caption_pairs("a reddish circle") == set()  # whole words only


def test_scores_count_captions_whose_pairs_are_all_in_the_image():
    objects = {1: {("red", "circle"), ("blue", "star")}, 2: {("white", "cross")}, 3: {("green", "square")}}
    captions = {
        1: "a red circle and a blue star",  # both present
        2: "a white cross and a black cross",  # one of two present
        3: "a square",  # names no pair
    }
    scores = shapes_caption_scores(captions, objects)
    assert scores["pairs_all_present"] == pytest.approx(100 / 3)
    assert scores["pair_precision"] == pytest.approx(75.0)
    assert scores["names_no_pair"] == pytest.approx(100 / 3)


def test_load_colorshape_objects(tmp_path):
    coco = {
        "images": [{"id": 5}, {"id": 6}],
        "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue star"}],
        "annotations": [{"image_id": 5, "category_id": 1}, {"image_id": 5, "category_id": 2},
                        {"image_id": 5, "category_id": 1}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    assert load_colorshape_objects(str(path)) == {5: {("red", "circle"), ("blue", "star")}, 6: set()}


def test_caption_evaluator_adds_the_shapes_scores(register, tmp_path):
    from fiber_d2.evaluation import CaptionEvaluator

    coco = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "red circle"}],
            "annotations": [{"image_id": 1, "category_id": 1}]}
    objects = tmp_path / "instances.json"
    objects.write_text(json.dumps(coco))
    records = [{"file_name": "1.jpg", "image_id": 1, "captions": ["a red circle ."]},
               {"file_name": "2.jpg", "image_id": 2, "captions": ["a blue star ."]}]
    evaluator = CaptionEvaluator(register(records, evaluator_type="retrieval", colorshape_json=str(objects)))
    for image_id in (1, 2):  # image 2 has no red circle
        evaluator.process([{}], [{"image_id": image_id, "caption": "a red circle ."}])
    metrics = evaluator.evaluate()["caption"]
    assert metrics["pairs_all_present"] == 50.0 and metrics["pair_precision"] == 50.0
    assert metrics["names_no_pair"] == 0.0 and metrics["CIDEr"] > 0
