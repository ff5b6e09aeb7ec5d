"""Dataset loaders of the grounding detector's formats (fiber_d2.data.datasets): COCO / Objects365 / LVIS detection,
MDETR grounding and raw Flickr30k Entities, on tiny files written in the real formats."""
import logging
import os

import pytest
from dataset_files import write_json, write_text
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from fiber_d2.data.datasets import (
    DatasetFormatError,
    load_coco_captions_json,
    load_coco_detection_json,
    load_flickr30k_entities,
    load_lvis_detection_json,
    load_mdetr_json,
    parse_entities_sentence,
    register_flickr30k_entities,
)
from fiber_d2.data.datasets.flickr30k_entities import entities_grounding_records


# ---------------------------------------------------------------- COCO / Objects365 / LVIS detection
def coco_instances(bbox=(10, 20, 30, 40)):
    return {
        "images": [
            {"id": 1, "file_name": "000001.jpg", "height": 100, "width": 200},
            {"id": 2, "file_name": "000002.jpg", "height": 50, "width": 60},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": list(bbox), "area": 1200, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 200, 100], "area": 20000, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [5.5, 6.5, 10.25, 3.0], "area": 30.75, "iscrowd": 0},
        ],
        # not sorted and not contiguous: 3 -> 0, 7 -> 1
        "categories": [{"id": 7, "name": "square", "supercategory": "shape"},
                       {"id": 3, "name": "circle", "supercategory": "shape"}],
    }


def test_coco_detection_boxes_and_contiguous_categories(tmp_path, catalog_names):
    json_file = write_json(tmp_path / "instances.json", coco_instances())
    os.makedirs(tmp_path / "images")
    catalog_names.append("test_coco_detection")
    dicts = load_coco_detection_json(json_file, str(tmp_path / "images"), "test_coco_detection")
    assert [d["image_id"] for d in dicts] == [1, 2]
    first, second = dicts
    assert first["file_name"] == str(tmp_path / "images" / "000001.jpg")
    assert (first["height"], first["width"]) == (100, 200)
    assert [a["category_id"] for a in first["annotations"]] == [1, 0]
    assert first["annotations"][0]["bbox"] == [10, 20, 30, 40]
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for d in dicts for a in d["annotations"])
    assert "id" not in first["annotations"][0]  # the annotation id is only used for messages
    assert second["annotations"][0]["bbox"] == [5.5, 6.5, 10.25, 3.0]
    meta = MetadataCatalog.get("test_coco_detection")
    assert meta.thing_classes == ["circle", "square"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}


@pytest.mark.parametrize(
    "bbox, problem",
    [
        ((10, 20, 0, 40), "non-positive"),
        ((10, 20, 30, -1), "non-positive"),
        ((10, float("nan"), 30, 40), "NaN"),
        ((180, 20, 22, 40), "outside"),  # right edge 202 > 200 + 1
        ((-1.5, 20, 30, 40), "outside"),
    ],
)
def test_coco_detection_bad_box_is_named_or_skipped(tmp_path, bbox, problem, caplog):
    json_file = write_json(tmp_path / "instances.json", coco_instances(bbox))
    os.makedirs(tmp_path / "images")
    with pytest.raises(DatasetFormatError) as info:
        load_coco_detection_json(json_file, str(tmp_path / "images"))
    message = str(info.value)
    for part in (json_file, "image id 1", "annotation id 11", problem, "set DATASETS.ON_BAD_RECORD skip"):
        assert part in message
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_detection_json(json_file, str(tmp_path / "images"), on_bad_record="skip")
    assert [len(d["annotations"]) for d in dicts] == [1, 1]
    assert any("annotation id 11" in r.getMessage() for r in caplog.records)


def test_box_within_one_pixel_of_the_border_is_accepted(tmp_path):
    json_file = write_json(tmp_path / "instances.json", coco_instances((-0.9, 0, 200.8, 100.9)))
    os.makedirs(tmp_path / "images")
    assert len(load_coco_detection_json(json_file, str(tmp_path / "images"))[0]["annotations"]) == 2


def test_coco_detection_missing_key_and_unknown_category_are_named(tmp_path):
    os.makedirs(tmp_path / "images")
    data = coco_instances()
    del data["images"][1]["height"]
    json_file = write_json(tmp_path / "a.json", data)
    with pytest.raises(DatasetFormatError, match=r"a\.json: image id 2 has no key 'height'"):
        load_coco_detection_json(json_file, str(tmp_path / "images"), "test_missing_key")
    data = coco_instances()
    del data["annotations"][2]["category_id"]
    json_file = write_json(tmp_path / "b.json", data)
    with pytest.raises(DatasetFormatError, match=r"b\.json: annotation id 13 has no key 'category_id'"):
        load_coco_detection_json(json_file, str(tmp_path / "images"))
    data = coco_instances()
    data["annotations"][1]["category_id"] = 99
    json_file = write_json(tmp_path / "c.json", data)
    with pytest.raises(DatasetFormatError, match=r"annotation id 12: category_id 99 is not among the 'categories'"):
        load_coco_detection_json(json_file, str(tmp_path / "images"), "test_unknown_category")
    MetadataCatalog.pop("test_missing_key", None)
    MetadataCatalog.pop("test_unknown_category", None)


def test_missing_root_file_and_folder_are_named(tmp_path):
    missing_root = tmp_path / "no_such_root"
    json_file = str(missing_root / "objects365" / "zhiyuan_objv2_val.json")
    with pytest.raises(FileNotFoundError) as info:
        load_coco_detection_json(json_file, str(missing_root / "objects365" / "val"), "objects365_v2_val")
    message = str(info.value)
    assert "objects365_v2_val" in message and json_file in message and f"{missing_root} does not exist" in message
    json_file = write_json(tmp_path / "instances.json", coco_instances())
    with pytest.raises(FileNotFoundError, match="image folder not found: .*no_images"):
        load_coco_detection_json(json_file, str(tmp_path / "no_images"))


def test_invalid_json_is_named_with_its_position(tmp_path):
    path = write_text(tmp_path / "broken.json", '{"images": [}')
    os.makedirs(tmp_path / "images")
    for load in (load_coco_detection_json, load_mdetr_json, load_coco_captions_json):
        with pytest.raises(DatasetFormatError, match=r"broken\.json: not valid JSON .* line 1, column 13"):
            load(path, str(tmp_path / "images"))


def test_lvis_minival_file_names_from_coco_url_and_category_ids(tmp_path, catalog_names):
    data = {
        "images": [{"id": 397133, "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg",
                    "file_name": "val2017/000000397133.jpg", "height": 427, "width": 640,
                    "not_exhaustive_category_ids": [5], "neg_category_ids": [9]}],
        "annotations": [{"id": 1, "image_id": 397133, "category_id": 5, "bbox": [1, 2, 3, 4], "area": 12,
                         "segmentation": [[1, 2, 4, 2, 4, 6]]}],
        "categories": [{"id": 5, "name": "apple", "synonyms": ["apple"], "frequency": "f"}],
    }
    json_file = write_json(tmp_path / "coco" / "annotations" / "lvis_v1_minival_inserted_image_name.json", data)
    image_root = str(tmp_path / "coco") + "/"
    catalog_names.append("lvis_v1_minival_test")
    (record,) = load_lvis_detection_json(json_file, image_root, "lvis_v1_minival_test")
    assert record["file_name"] == os.path.join(str(tmp_path / "coco"), "val2017", "000000397133.jpg")
    assert record["annotations"][0]["category_id"] == 4
    assert record["annotations"][0]["bbox"] == [1, 2, 3, 4]
    assert record["not_exhaustive_category_ids"] == [5]
    assert len(MetadataCatalog.get("lvis_v1_minival_test").thing_classes) == 1203
    del data["images"][0]["coco_url"]
    write_json(json_file, data)
    with pytest.raises(DatasetFormatError, match="image id 397133 has no key 'coco_url'"):
        load_lvis_detection_json(json_file, image_root, "lvis_v1_minival_test")


# ---------------------------------------------------------------- MDETR grounding
FLICKR_CAPTION = "A man in a red shirt holds a dog ."


def mdetr_flickr():
    return {
        "images": [{
            "id": 0, "file_name": "1000092795.jpg", "height": 300, "width": 400, "caption": FLICKR_CAPTION,
            "dataset_name": "flickr", "tokens_negative": [[0, 5]], "sentence_id": 2, "original_img_id": 1000092795,
            "tokens_positive_eval": [[[0, 5]], [[9, 20]], [[27, 32]]],
        }],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [10, 20, 100, 200], "area": 20000, "iscrowd": 0,
             "tokens_positive": [[0, 5]], "phrase_ids": 100},
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [50, 60, 30, 40], "area": 1200, "iscrowd": 0,
             "tokens_positive": [[9, 20]], "phrase_ids": 101},
            {"id": 2, "image_id": 0, "category_id": 1, "bbox": [200, 100, 50, 50], "area": 2500, "iscrowd": 0,
             "tokens_positive": [[27, 32]], "phrase_ids": 102},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }


def test_mdetr_flickr_record(tmp_path):
    json_file = write_json(tmp_path / "final_flickr_separateGT_val.json", mdetr_flickr())
    os.makedirs(tmp_path / "flickr30k_images")
    (record,) = load_mdetr_json(json_file, str(tmp_path / "flickr30k_images"))
    assert record["file_name"] == str(tmp_path / "flickr30k_images" / "1000092795.jpg")
    assert (record["height"], record["width"], record["image_id"]) == (300, 400, 0)
    assert record["caption"] == FLICKR_CAPTION
    assert (record["dataset_name"], record["sentence_id"], record["original_img_id"]) == ("flickr", 2, 1000092795)
    assert record["tokens_positive_eval"] == [[[0, 5]], [[9, 20]], [[27, 32]]]
    assert "tokens_negative" not in record
    phrases = [FLICKR_CAPTION[s:e] for a in record["annotations"] for s, e in a["tokens_positive"]]
    assert phrases == ["A man", "a red shirt", "a dog"]
    assert [a["phrase_ids"] for a in record["annotations"]] == [100, 101, 102]
    assert record["annotations"][1]["bbox"] == [50, 60, 30, 40]
    assert {a["bbox_mode"] for a in record["annotations"]} == {BoxMode.XYWH_ABS}


def test_mdetr_mixed_image_roots_by_source(tmp_path):
    images = [
        {"id": 0, "file_name": "2405052.jpg", "height": 100, "width": 100, "caption": "a cat", "data_source": "vg",
         "dataset_name": "mixed"},
        {"id": 1, "file_name": "COCO_train2014_000000000009.jpg", "height": 100, "width": 100, "caption": "a bowl",
         "data_source": "coco", "dataset_name": "mixed"},
        {"id": 2, "file_name": "3359636318.jpg", "height": 100, "width": 100, "caption": "a dog",
         "dataset_name": "flickr"},
    ]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10], "tokens_positive": [[2, 5]]}
                   for i in range(3)]
    json_file = write_json(tmp_path / "final_mixed_train_no_coco.json", {"images": images,
                                                                          "annotations": annotations})
    roots = {name: str(tmp_path / name) for name in ("vg", "coco", "flickr")}
    for root in roots.values():
        os.makedirs(root)
    dicts = load_mdetr_json(json_file, roots)
    assert [d["file_name"] for d in dicts] == [
        os.path.join(roots["vg"], "2405052.jpg"),
        os.path.join(roots["coco"], "COCO_train2014_000000000009.jpg"),
        os.path.join(roots["flickr"], "3359636318.jpg"),
    ]
    unused = {**roots, "gqa": str(tmp_path / "not_downloaded")}  # a folder no record uses may be missing
    assert len(load_mdetr_json(json_file, unused)) == 3
    os.rmdir(roots["coco"])
    with pytest.raises(FileNotFoundError, match="image folder of source 'coco'"):
        load_mdetr_json(json_file, roots)
    os.makedirs(roots["coco"])
    del roots["flickr"]
    with pytest.raises(DatasetFormatError, match="image id 2: dataset_name 'flickr' has no image folder"):
        load_mdetr_json(json_file, roots)


@pytest.mark.parametrize("span", [[27, 35], [20, 20], [-1, 3], [5, 2]])
def test_mdetr_span_outside_caption_is_named_or_skipped(tmp_path, span, caplog):
    data = mdetr_flickr()
    data["annotations"][2]["tokens_positive"] = [span]
    json_file = write_json(tmp_path / "final_flickr_separateGT_val.json", data)
    os.makedirs(tmp_path / "images")
    with pytest.raises(DatasetFormatError) as info:
        load_mdetr_json(json_file, str(tmp_path / "images"), "test_flickr")
    message = str(info.value)
    for part in ("test_flickr", json_file, "image id 0, annotation id 2", "tokens_positive", str(span)):
        assert part in message
    with caplog.at_level(logging.WARNING):
        assert load_mdetr_json(json_file, str(tmp_path / "images"), on_bad_record="skip") == []
    assert any("annotation id 2" in r.getMessage() for r in caplog.records)


def test_mdetr_bad_box_and_bad_eval_span_are_named(tmp_path):
    os.makedirs(tmp_path / "images")
    data = mdetr_flickr()
    data["annotations"][1]["bbox"] = [350, 60, 80, 40]  # right edge 430 > width 400
    json_file = write_json(tmp_path / "a.json", data)
    with pytest.raises(DatasetFormatError, match=r"a\.json: image id 0, annotation id 1: bbox .* outside"):
        load_mdetr_json(json_file, str(tmp_path / "images"))
    data = mdetr_flickr()
    data["images"][0]["tokens_positive_eval"][1] = [[9, 99]]
    json_file = write_json(tmp_path / "b.json", data)
    with pytest.raises(DatasetFormatError, match=r"b\.json: image id 0: tokens_positive_eval\[1\]: span \[9, 99\]"):
        load_mdetr_json(json_file, str(tmp_path / "images"))


def test_mdetr_missing_keys_are_named(tmp_path):
    os.makedirs(tmp_path / "images")
    data = mdetr_flickr()
    del data["annotations"][1]["tokens_positive"]
    json_file = write_json(tmp_path / "a.json", data)
    with pytest.raises(DatasetFormatError, match=r"a\.json: image id 0, annotation id 1 has no key 'tokens_positive'"):
        load_mdetr_json(json_file, str(tmp_path / "images"), "test_refcoco")
    data = mdetr_flickr()
    del data["images"][0]["caption"]
    json_file = write_json(tmp_path / "b.json", data)
    with pytest.raises(DatasetFormatError, match=r"b\.json: image id 0 has no key 'caption'"):
        load_mdetr_json(json_file, str(tmp_path / "images"))
    json_file = write_json(tmp_path / "c.json", {"images": []})
    with pytest.raises(DatasetFormatError, match=r"c\.json: missing top-level key 'annotations'"):
        load_mdetr_json(json_file, str(tmp_path / "images"))



def test_mdetr_image_size_as_numeric_strings(tmp_path):
    # MDETR's own conversion scripts write "height"/"width" as strings.
    os.makedirs(tmp_path / "images")
    data = mdetr_flickr()
    data["images"][0].update(height="300", width="400.0")
    (record,) = load_mdetr_json(write_json(tmp_path / "a.json", data), str(tmp_path / "images"))
    assert (record["height"], record["width"]) == (300, 400)
    assert isinstance(record["height"], int) and isinstance(record["width"], int)
    data["images"][0]["width"] = "wide"
    json_file = write_json(tmp_path / "b.json", data)
    with pytest.raises(DatasetFormatError, match=r"b\.json: image id 0: width 'wide' is not a positive whole number"):
        load_mdetr_json(json_file, str(tmp_path / "images"))
    assert load_mdetr_json(json_file, str(tmp_path / "images"), on_bad_record="skip") == []

# ---------------------------------------------------------------- Flickr30k Entities (raw)
SENTENCES = (
    "[/EN#18/people A child] in [/EN#19/clothing a pink dress] is climbing up [/EN#20/other a set of stairs] .\n"
    "[/EN#18/people A little girl] [/EN#21/bodyparts/clothing her hands] up\n"
)
ANNOTATION_XML = """<annotation>
  <filename>1000092795.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
  <object><name>18</name><name>19</name>
    <bndbox><xmin>30</xmin><ymin>40</ymin><xmax>60</xmax><ymax>90</ymax></bndbox></object>
  <object><name>20</name><nobndbox>1</nobndbox><scene>0</scene></object>
  <object><name>21</name><nobndbox>0</nobndbox><scene>1</scene></object>
</annotation>
"""


def write_entities(root, xml=ANNOTATION_XML, sentences=SENTENCES):
    write_text(root / "test.txt", "1000092795\n")
    write_text(root / "Sentences" / "1000092795.txt", sentences)
    write_text(root / "Annotations" / "1000092795.xml", xml)
    os.makedirs(root / "images", exist_ok=True)


def test_parse_entities_sentence_spans():
    parsed = parse_entities_sentence(SENTENCES.splitlines()[1])
    assert parsed["sentence"] == "A little girl her hands up"
    assert parsed["phrases"] == [
        {"phrase_id": "18", "phrase_type": "people", "span": [0, 13], "phrase": "A little girl"},
        {"phrase_id": "21", "phrase_type": "bodyparts/clothing", "span": [14, 23], "phrase": "her hands"},
    ]
    with pytest.raises(ValueError, match="not closed"):
        parse_entities_sentence("[/EN#1/people a man")


def test_flickr30k_entities_raw(tmp_path):
    write_entities(tmp_path)
    (record,) = load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test")
    assert record["image_id"] == 1000092795
    assert record["file_name"] == str(tmp_path / "images" / "1000092795.jpg")
    assert (record["height"], record["width"]) == (375, 500)
    first = record["sentences"][0]
    assert first["sentence"] == "A child in a pink dress is climbing up a set of stairs ."
    assert [(p["phrase_id"], p["phrase_type"], p["phrase"]) for p in first["phrases"]] == [
        ("18", "people", "A child"), ("19", "clothing", "a pink dress"), ("20", "other", "a set of stairs")
    ]
    assert all(first["sentence"][slice(*p["span"])] == p["phrase"] for p in first["phrases"])
    assert record["boxes"] == {"18": [[10, 20, 110, 220], [30, 40, 60, 90]], "19": [[30, 40, 60, 90]]}
    assert record["nobox_phrase_ids"] == ["20"] and record["scene_phrase_ids"] == ["21"]


def test_flickr30k_entities_errors_name_the_file(tmp_path, caplog):
    write_entities(tmp_path, xml="<annotation><size><width>5</width>")
    with pytest.raises(DatasetFormatError, match=r"1000092795\.xml: not valid XML"):
        load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test")
    write_entities(tmp_path, sentences="fine line\n[/EN#3/people a man [/EN#4/other hat]\n")
    with pytest.raises(DatasetFormatError, match=r"1000092795\.txt, line 2: phrase marker"):
        load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test")
    write_entities(tmp_path, xml=ANNOTATION_XML.replace("<xmax>60</xmax>", "<xmax>20</xmax>"))
    with pytest.raises(DatasetFormatError, match=r"1000092795\.xml: image id 1000092795, phrase id\(s\) 18, 19: box"):
        load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test", "flickr30k_entities_test")
    with caplog.at_level(logging.WARNING):
        (record,) = load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test", on_bad_record="skip")
    assert record["boxes"] == {"18": [[10, 20, 110, 220]]}
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*val\.txt"):
        load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "val")


def test_flickr30k_entities_grounding_records(tmp_path):
    # A third sentence whose only phrase (20) has no box is left out, as MDETR's Flickr30k evaluator does.
    write_entities(tmp_path, sentences=SENTENCES + "[/EN#20/other Stairs] here\n")
    first, second = entities_grounding_records(load_flickr30k_entities(str(tmp_path), str(tmp_path / "images"), "test"))
    assert first["caption"] == "A child in a pink dress is climbing up a set of stairs ."
    assert (first["image_id"], first["original_img_id"], first["sentence_id"]) == (0, 1000092795, 0)
    assert (first["height"], first["width"]) == (375, 500)
    assert first["file_name"] == str(tmp_path / "images" / "1000092795.jpg")
    # phrases 18 ("A child") and 19 ("a pink dress") have boxes; 20 has none and is not a phrase of the record
    assert first["tokens_positive_eval"] == [[[0, 7]], [[11, 23]]]
    assert [(a["bbox"], a["bbox_mode"], a["tokens_positive"], a["phrase_ids"]) for a in first["annotations"]] == [
        ([10, 20, 110, 220], BoxMode.XYXY_ABS, [[0, 7]], "18"),
        ([30, 40, 60, 90], BoxMode.XYXY_ABS, [[0, 7]], "18"),
        ([30, 40, 60, 90], BoxMode.XYXY_ABS, [[11, 23]], "19"),
    ]
    # sentence 1: "A little girl" (18) has boxes, "her hands" (21, scene) has none
    assert (second["image_id"], second["sentence_id"], second["tokens_positive_eval"]) == (1, 1, [[[0, 13]]])
    assert [a["bbox"] for a in second["annotations"]] == [[10, 20, 110, 220], [30, 40, 60, 90]]


def test_raw_flickr30k_entities_are_evaluable(tmp_path, catalog_names):
    import torch
    from detectron2.structures import Boxes, Instances

    from fiber_d2.evaluation import FlickrGroundingEvaluator

    write_entities(tmp_path)
    for name, merged in (("t_entities_any", False), ("t_entities_merged", True)):
        register_flickr30k_entities(name, str(tmp_path), str(tmp_path / "images"), "test", merged_gt=merged)
        catalog_names.append(name)

    def instances(predictions):
        out = Instances((375, 500))
        out.pred_boxes = Boxes(torch.tensor([b for b, _, _ in predictions], dtype=torch.float32).reshape(-1, 4))
        out.scores = torch.tensor([s for _, s, _ in predictions])
        out.pred_classes = torch.tensor([c for _, _, c in predictions], dtype=torch.int64)
        return out

    outputs = {
        # "A child": exactly its 2nd box first (ANY-box hit at rank 1; IoU 0.075 with the merged box), then exactly
        # its 1st box, which is also the merged box (rank 2); "a pink dress": a miss, then its box (rank 2).
        0: instances([([30, 40, 60, 90], 0.9, 0), ([10, 20, 110, 220], 0.5, 0), ([0, 0, 5, 5], 0.8, 1),
                       ([30, 40, 60, 90], 0.7, 1)]),
        1: instances([]),  # "A little girl": no prediction
    }
    results = {}
    for name in ("t_entities_any", "t_entities_merged"):
        evaluator = FlickrGroundingEvaluator(name)
        evaluator.reset()
        for image_id, output in outputs.items():
            evaluator.process([{"image_id": image_id}], [{"instances": output}])
        results[name] = evaluator.evaluate()["grounding"]
    assert results["t_entities_any"] == pytest.approx({"R@1": 100 / 3, "R@5": 200 / 3, "R@10": 200 / 3})  # 1, 2, -
    assert results["t_entities_merged"] == pytest.approx({"R@1": 0.0, "R@5": 200 / 3, "R@10": 200 / 3})  # 2, 2, -
