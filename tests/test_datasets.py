"""Dataset loaders and registration (fiber_d2.data.datasets), on tiny files written in the real formats."""
import json
import logging
import math
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

import fiber_d2.data.datasets as datasets
from fiber_d2.data.datasets import (
    DatasetFormatError,
    load_coco_captions_json,
    load_coco_detection_json,
    load_flickr30k_entities,
    load_jsonl_pairs,
    load_karpathy_json,
    load_lvis_detection_json,
    load_mdetr_json,
    load_vqa_json,
    parse_entities_sentence,
    register_all_fiber_datasets,
    register_fiber_shapes,
    register_flickr30k_entities,
)
from fiber_d2.data.datasets.flickr30k_entities import entities_grounding_records


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def write_image(path, width, height):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), (40, 120, 200)).save(path)


@pytest.fixture
def catalog_names():
    """Names a test registers or loads with metadata; removed from Detectron2's catalogs afterwards."""
    names = []
    yield names
    for name in names:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


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


# ---------------------------------------------------------------- registration
@pytest.fixture
def registered_under(tmp_path):
    """Registers the builtin datasets under tmp_path/root; re-registers them under the import-time root after."""
    root = str(tmp_path / "root")
    register_all_fiber_datasets(root)
    yield root
    register_all_fiber_datasets(os.getenv("DETECTRON2_DATASETS", "datasets"))


def test_builtin_names_and_metadata(registered_under):
    root = registered_under
    expected = {
        "lvis_v1_minival": ("lvis", "coco/annotations/lvis_v1_minival_inserted_image_name.json", "coco/"),
        "objects365_v2_val": ("coco", "objects365/zhiyuan_objv2_val.json", "objects365/val"),
        "coco_2017_captions_train": ("caption", "coco/annotations/captions_train2017.json", "coco/train2017"),
        "flickr30k_grounding_separate_test": (
            "flickr30k", "mdetr_annotations/final_flickr_separateGT_test.json", "flickr30k/flickr30k_images"),
        "flickr30k_grounding_merged_val": (
            "flickr30k", "mdetr_annotations/final_flickr_mergedGT_val.json", "flickr30k/flickr30k_images"),
        "refcoco_testA": ("refexp", "mdetr_annotations/final_refcoco_testA.json", "coco/train2014"),
        "refcoco+_val": ("refexp", "mdetr_annotations/final_refcoco+_val.json", "coco/train2014"),
        "refcocog_test": ("refexp", "mdetr_annotations/final_refcocog_test.json", "coco/train2014"),
        "coco_karpathy_test": ("retrieval", "coco/karpathy/dataset_coco.json", "coco"),
        "flickr30k_karpathy_val": ("retrieval", "flickr30k/karpathy/dataset_flickr30k.json",
                                   "flickr30k/flickr30k_images"),
        "cc3m_train": ("retrieval", "cc3m/cc3m_train.jsonl", "cc3m"),
        "sbu_train": ("retrieval", "sbu/sbu_train.jsonl", "sbu"),
        "vg_captions_train": ("retrieval", "vg/vg_captions_train.jsonl", "vg"),
        "vqav2_val": ("vqa", "coco/vqa/v2_mscoco_val2014_annotations.json", "coco/val2014"),
        "fiber_shapes_val": ("coco", "fiber_shapes/annotations/instances_val.json", "fiber_shapes/images/val"),
    }
    for name, (evaluator_type, json_file, image_root) in expected.items():
        assert name in DatasetCatalog, name
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == evaluator_type, name
        assert meta.json_file == os.path.join(root, json_file), name
        assert meta.image_root == os.path.join(root, image_root), name
    assert MetadataCatalog.get("coco_karpathy_train").splits == ("train", "restval")
    assert len(MetadataCatalog.get("lvis_v1_minival").thing_classes) == 1203
    flickr = MetadataCatalog.get("flickr30k_grounding_merged_val")
    assert (flickr.split, flickr.merged_gt) == ("val", True)
    assert flickr.flickr30k_entities_root == os.path.join(root, "flickr30k/flickr30k_entities")
    entities = MetadataCatalog.get("flickr30k_entities_test")
    assert (entities.evaluator_type, entities.split) == ("flickr30k", "test")
    assert MetadataCatalog.get("vqav2_train").question_file == os.path.join(
        root, "coco/vqa/v2_OpenEnded_mscoco_train2014_questions.json")
    mixed = MetadataCatalog.get("mdetr_mixed_train")
    assert mixed.image_root["vg"] == os.path.join(root, "gqa/images")
    assert mixed.get("evaluator_type") is None
    # Detectron2's own registrations are left alone
    assert MetadataCatalog.get("coco_2017_val").json_file.endswith("coco/annotations/instances_val2017.json")
    assert MetadataCatalog.get("lvis_v1_val").evaluator_type == "lvis"


def test_registration_is_lazy_and_repeatable(registered_under):
    assert not os.path.exists(registered_under)  # nothing was read or created
    register_all_fiber_datasets(registered_under)  # a second time: replaces, no "already registered" error
    for name, path in (
        ("refcoco_val", "mdetr_annotations/final_refcoco_val.json"),
        ("vqav2_val", "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json"),
        ("flickr30k_entities_val", "flickr30k/flickr30k_entities/val.txt"),
        ("cc3m_val", "cc3m/cc3m_val.jsonl"),
        ("coco_2017_captions_val", "coco/annotations/captions_val2017.json"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        assert name in str(info.value) and os.path.join(registered_under, path) in str(info.value)
    with pytest.raises(ValueError, match="on_bad_record"):
        register_all_fiber_datasets(registered_under, on_bad_record="ignore")


def test_import_registers_under_detectron2_datasets():
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    assert MetadataCatalog.get("refcocog_val").json_file == os.path.join(
        root, "mdetr_annotations/final_refcocog_val.json")
    assert MetadataCatalog.get("fiber_shapes_novel").image_root == os.path.join(root, "fiber_shapes/images/novel")
    assert set(datasets.__all__) <= set(dir(datasets))


# ---------------------------------------------------------------- FIBER-Shapes
SHAPES = ["circle", "square"]
COLORSHAPES = ["blue circle", "blue square", "red circle", "red square"]


def write_fiber_shapes(root):
    """One 64x48 image per split in every FIBER-Shapes file format (docs/DATA_FORMATS.md)."""
    karpathy_images = []
    entities = root / "flickr30k_entities"
    for image_id, split in enumerate(("train", "val", "novel"), start=1):
        stem = f"{image_id:06d}"
        write_image(str(root / "images" / split / f"{stem}.jpg"), 64, 48)
        caption = "a red circle and a blue square"
        image = {"id": image_id, "file_name": f"{stem}.jpg", "height": 48, "width": 64}
        boxes = [[4, 4, 20, 20], [30, 10, 16, 30]]
        annotations = [{"id": 10 * image_id + i, "image_id": image_id, "category_id": i + 1, "bbox": box,
                        "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes)]
        write_json(root / "annotations" / f"instances_{split}.json", {
            "images": [image], "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES)]})
        colour_annotations = [dict(a, category_id=c) for a, c in zip(annotations, (3, 2))]
        write_json(root / "annotations" / f"instances_colorshape_{split}.json", {
            "images": [image], "annotations": colour_annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(COLORSHAPES)]})
        grounding_image = dict(image, caption=caption, dataset_name="fiber_shapes", tokens_negative=[],
                               sentence_id=0, original_img_id=image_id, tokens_positive_eval=[[[0, 12]], [[17, 30]]])
        grounding = [dict(a, tokens_positive=[span], phrase_ids=i)
                     for i, (a, span) in enumerate(zip(annotations, ([0, 12], [17, 30])))]
        for file_stem in ("final_mixed", "final_flickr_separateGT", "final_flickr_mergedGT"):
            write_json(root / "annotations" / f"{file_stem}_{split}.json",
                       {"images": [grounding_image], "annotations": grounding, "categories": [{"id": 1}]})
        write_json(root / "annotations" / f"final_refexp_{split}.json", {
            "images": [dict(image, caption="the red circle", dataset_name="refexp", original_id=image_id)],
            "annotations": [dict(annotations[0], tokens_positive=[[0, 14]])], "categories": [{"id": 1}]})
        karpathy_images.append({"imgid": image_id, "split": split, "filepath": f"images/{split}",
                                "filename": f"{stem}.jpg", "sentences": [{"raw": caption, "tokens": caption.split(),
                                                                           "imgid": image_id, "sentid": image_id}]})
        write_json(root / "annotations" / f"vqa_questions_{split}.json", {"questions": [
            {"image_id": image_id, "question": "How many shapes?", "question_id": 100 * image_id}]})
        write_json(root / "annotations" / f"vqa_annotations_{split}.json", {"annotations": [
            {"question_id": 100 * image_id, "image_id": image_id, "question_type": "how many", "answer_type": "number",
             "multiple_choice_answer": "2", "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i}
                                                        for i in range(1, 11)]}]})
        write_text(entities / f"{split}.txt", f"{stem}\n")
        write_text(entities / "Sentences" / f"{stem}.txt",
                   "[/EN#1/shape a red circle] and [/EN#2/shape a blue square]\n")
        write_text(entities / "Annotations" / f"{stem}.xml", (
            "<annotation><size><width>64</width><height>48</height><depth>3</depth></size>"
            "<object><name>1</name><bndbox><xmin>4</xmin><ymin>4</ymin><xmax>24</xmax><ymax>24</ymax></bndbox>"
            "</object><object><name>2</name><bndbox><xmin>30</xmin><ymin>10</ymin><xmax>46</xmax><ymax>40</ymax>"
            "</bndbox></object></annotation>"))
    write_json(root / "annotations" / "dataset_fiber_shapes.json", {"images": karpathy_images,
                                                                     "dataset": "fiber_shapes"})


def test_fiber_shapes_registration_before_generation_is_cheap_and_lazy(tmp_path, catalog_names):
    names = register_fiber_shapes(str(tmp_path / "fiber_shapes"), prefix="t_empty_shapes")
    catalog_names.extend(names)
    assert len(names) == 27 and not (tmp_path / "fiber_shapes").exists()
    assert MetadataCatalog.get("t_empty_shapes_val").get("thing_classes") is None
    with pytest.raises(FileNotFoundError, match="t_empty_shapes_val.*instances_val.json"):
        DatasetCatalog.get("t_empty_shapes_val")


def test_fiber_shapes_every_split_and_task_loads(tmp_path, catalog_names):
    root = tmp_path / "fiber_shapes"
    write_fiber_shapes(root)
    names = register_fiber_shapes(str(root), prefix="t_shapes")
    catalog_names.extend(names)
    tasks = ["", "_colorshape", "_grounding", "_flickr", "_flickr_merged", "_flickr_entities", "_refexp", "_pairs",
             "_vqa"]
    assert sorted(names) == sorted(f"t_shapes{task}_{split}" for task in tasks for split in ("train", "val", "novel"))
    # thing_classes are read from the categories at registration, when the file exists
    assert MetadataCatalog.get("t_shapes_novel").thing_classes == SHAPES
    assert MetadataCatalog.get("t_shapes_colorshape_train").thing_classes == COLORSHAPES
    evaluator_types = {"": "coco", "_colorshape": "coco", "_flickr": "flickr30k", "_flickr_merged": "flickr30k",
                       "_flickr_entities": "flickr30k", "_refexp": "refexp", "_pairs": "retrieval", "_vqa": "vqa"}
    for name in names:
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 1, name
        assert os.path.isfile(dicts[0]["file_name"]), name
        task = name[len("t_shapes"):].rsplit("_", 1)[0]
        assert MetadataCatalog.get(name).get("evaluator_type") == evaluator_types.get(task), name
    (val,) = DatasetCatalog.get("t_shapes_colorshape_val")
    assert [a["category_id"] for a in val["annotations"]] == [2, 1]
    (pairs,) = DatasetCatalog.get("t_shapes_pairs_novel")
    assert pairs["image_id"] == 3 and pairs["file_name"].endswith(os.path.join("images", "novel", "000003.jpg"))
    assert MetadataCatalog.get("t_shapes_flickr_val").flickr30k_entities_root == str(root / "flickr30k_entities")
    (entities,) = DatasetCatalog.get("t_shapes_flickr_entities_val")  # its (image, sentence) grounding records
    assert entities["original_img_id"] == 2 and entities["annotations"][1]["bbox"] == [30, 10, 46, 40]
    (vqa,) = DatasetCatalog.get("t_shapes_vqa_train")
    assert vqa["file_name"] == str(root / "images" / "train" / "000001.jpg") and vqa["answers"] == ["2"] * 10


def test_fiber_shapes_bad_record_option_reaches_the_loaders(tmp_path, catalog_names):
    root = tmp_path / "fiber_shapes"
    write_fiber_shapes(root)
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    data["annotations"][1]["bbox"] = [30, 10, 16, math.inf]
    write_json(root / "annotations" / "instances_val.json", data)
    catalog_names.extend(register_fiber_shapes(str(root), prefix="t_bad_shapes"))
    with pytest.raises(DatasetFormatError, match=r"instances_val\.json: image id 2, annotation id 21: bbox"):
        DatasetCatalog.get("t_bad_shapes_val")
    catalog_names.extend(register_fiber_shapes(str(root), prefix="t_skip_shapes", on_bad_record="skip"))
    (record,) = DatasetCatalog.get("t_skip_shapes_val")
    assert len(record["annotations"]) == 1


def test_generated_fiber_shapes_loads_in_every_task(tmp_path, catalog_names):
    from fiber_d2.data.shapes import generate_fiber_shapes

    root = tmp_path / "fiber_shapes"
    generate_fiber_shapes(root, seed=0, num_train=3, num_val=2, num_novel=2)
    names = register_fiber_shapes(str(root), prefix="t_generated")
    catalog_names.extend(names)
    for name in names:
        dicts = DatasetCatalog.get(name)  # on_bad_record="raise": every box and span is valid
        assert dicts and all(os.path.isfile(d["file_name"]) for d in dicts), name
    assert len(MetadataCatalog.get("t_generated_val").thing_classes) == 6
    # the raw Flickr30k Entities sentences and the MDETR Flickr captions describe the same phrases
    raw = {(d["original_img_id"], d["caption"]): d for d in DatasetCatalog.get("t_generated_flickr_entities_val")}
    for record in DatasetCatalog.get("t_generated_flickr_val"):
        phrases = raw[(record["original_img_id"], record["caption"])]["tokens_positive_eval"]
        spans = {tuple(span) for a in record["annotations"] for span in a["tokens_positive"]}
        assert spans <= {tuple(span) for phrase in phrases for span in phrase}
