"""Dataset loaders of the coarse models' formats (fiber_d2.data.datasets): COCO captions, image-text pairs (Karpathy
splits, JSONL) and VQAv2, on tiny files written in the real formats."""
import json
import logging
import os

import pytest
from dataset_files import write_json, write_text

from fiber_d2.data.datasets import (
    DatasetFormatError,
    load_coco_captions_json,
    load_jsonl_pairs,
    load_karpathy_json,
    load_vqa_json,
)


# ---------------------------------------------------------------- COCO captions
def test_coco_captions_grouped_per_image(tmp_path, caplog):
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 10, "width": 20},
                   {"id": 2, "file_name": "000000000002.jpg", "height": 30, "width": 40},
                   {"id": 3, "file_name": "000000000003.jpg", "height": 30, "width": 40}],
        "annotations": [{"id": 5, "image_id": 2, "caption": "A red circle."},
                        {"id": 6, "image_id": 1, "caption": "Two squares."},
                        {"id": 7, "image_id": 2, "caption": "A circle that is red."}],
    }
    json_file = write_json(tmp_path / "captions_val2017.json", data)
    os.makedirs(tmp_path / "val2017")
    dicts = load_coco_captions_json(json_file, str(tmp_path / "val2017"))
    assert [(d["image_id"], d["captions"]) for d in dicts] == [
        (1, ["Two squares."]), (2, ["A red circle.", "A circle that is red."])
    ]  # image 3 has no caption
    assert dicts[1]["file_name"] == str(tmp_path / "val2017" / "000000000002.jpg")
    assert (dicts[1]["height"], dicts[1]["width"]) == (30, 40)
    data["annotations"].append({"id": 8, "image_id": 42, "caption": "orphan"})
    write_json(json_file, data)
    with pytest.raises(DatasetFormatError, match="image id 42, annotation id 8: the image id is not among"):
        load_coco_captions_json(json_file, str(tmp_path / "val2017"))
    with caplog.at_level(logging.WARNING):
        assert len(load_coco_captions_json(json_file, str(tmp_path / "val2017"), on_bad_record="skip")) == 2
    assert any("annotation id 8" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- image-text pairs
def karpathy():
    def image(imgid, split, filename, **extra):
        return {"imgid": imgid, "split": split, "filename": filename, **extra,
                "sentences": [{"raw": f"caption {imgid}a. ", "tokens": ["caption"], "imgid": imgid, "sentid": 0},
                              {"raw": f"caption {imgid}b", "tokens": ["caption"], "imgid": imgid, "sentid": 1}]}
    return {"images": [
        image(0, "train", "COCO_train2014_000000000009.jpg", filepath="train2014", cocoid=9),
        image(1, "restval", "COCO_val2014_000000000042.jpg", filepath="val2014", cocoid=42),
        image(2, "test", "COCO_val2014_000000000073.jpg", filepath="val2014", cocoid=73),
        image(3, "val", "1000092795.jpg"),
    ], "dataset": "coco"}


def test_karpathy_splits_paths_and_captions(tmp_path):
    json_file = write_json(tmp_path / "karpathy" / "dataset_coco.json", karpathy())
    train = load_karpathy_json(json_file, str(tmp_path), ("train", "restval"))
    assert [(d["image_id"], d["split"]) for d in train] == [(9, "train"), (42, "restval")]
    assert train[1]["file_name"] == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert train[0]["captions"] == ["caption 0a.", "caption 0b"]
    (val,) = load_karpathy_json(json_file, str(tmp_path), ("val",))
    assert val["image_id"] == 3 and val["file_name"] == str(tmp_path / "1000092795.jpg")  # imgid, no filepath
    with pytest.raises(DatasetFormatError, match=r"no image in split\(s\) \['novel'\].*'train': 1"):
        load_karpathy_json(json_file, str(tmp_path), ("novel",))
    data = karpathy()
    del data["images"][2]["sentences"]
    write_json(json_file, data)
    with pytest.raises(DatasetFormatError, match="image imgid 2 has no key 'sentences'"):
        load_karpathy_json(json_file, str(tmp_path), ("test",))


def test_jsonl_pairs(tmp_path):
    path = write_text(tmp_path / "cc3m_val.jsonl", "\n".join([
        json.dumps({"image": "images/0001.jpg", "caption": "a dog on a beach"}),
        "",
        json.dumps({"image": "images/0002.jpg", "captions": ["a red car", "a car"]}),
    ]) + "\n")
    dicts = load_jsonl_pairs(path, str(tmp_path))
    assert dicts == [
        {"file_name": str(tmp_path / "images" / "0001.jpg"), "image_id": 0, "captions": ["a dog on a beach"]},
        {"file_name": str(tmp_path / "images" / "0002.jpg"), "image_id": 1, "captions": ["a red car", "a car"]},
    ]
    write_text(path, json.dumps({"image": "a.jpg", "caption": "x"}) + "\n{oops\n")
    with pytest.raises(DatasetFormatError, match=r"cc3m_val\.jsonl, line 2: not valid JSON"):
        load_jsonl_pairs(path, str(tmp_path))
    write_text(path, json.dumps({"caption": "x"}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"line 1: no key 'image'"):
        load_jsonl_pairs(path, str(tmp_path))


# ---------------------------------------------------------------- VQAv2
def vqa_files(tmp_path, questions=None, annotations=None):
    questions = questions or [{"image_id": 9, "question": "What color is the circle?", "question_id": 9001},
                              {"image_id": 42, "question": "How many squares?", "question_id": 42002}]
    annotations = annotations or [
        {"question_id": 42002, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                                    for i, a in enumerate(["2"] * 9 + ["3"])]},
        {"question_id": 9001, "image_id": 9, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i + 1}
                                                      for i in range(10)]},
    ]
    os.makedirs(tmp_path / "val2014", exist_ok=True)
    return (write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions}),
            write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": annotations}))


def test_vqa_questions_joined_with_answers(tmp_path):
    questions_file, annotations_file = vqa_files(tmp_path)
    dicts = load_vqa_json(questions_file, annotations_file, str(tmp_path / "val2014"),
                          "COCO_val2014_{image_id:012d}.jpg")
    assert dicts[0] == {
        "file_name": str(tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"), "image_id": 9,
        "question_id": 9001, "question": "What color is the circle?", "answers": ["red"] * 10,
        "multiple_choice_answer": "red", "answer_type": "other",
    }
    assert dicts[1]["answers"] == ["2"] * 9 + ["3"] and dicts[1]["answer_type"] == "number"


def test_vqa_errors_name_the_question(tmp_path):
    questions_file, annotations_file = vqa_files(
        tmp_path, questions=[{"image_id": 1, "question": "Is it?", "question_id": 77}])
    with pytest.raises(DatasetFormatError, match=r"questions\.json: question #0 \(question id 77\) has no annotation"):
        load_vqa_json(questions_file, annotations_file, str(tmp_path / "val2014"), "{image_id}.jpg")
    questions_file, annotations_file = vqa_files(tmp_path, questions=[{"image_id": 1, "question_id": 9001}])
    with pytest.raises(DatasetFormatError, match=r"question id 9001\) has no key 'question'"):
        load_vqa_json(questions_file, annotations_file, str(tmp_path / "val2014"), "{image_id}.jpg")
