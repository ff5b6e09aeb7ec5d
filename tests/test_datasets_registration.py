"""Dataset registration (fiber_d2.data.datasets): the built-in names and their metadata, lazy loading, and
FIBER-Shapes in every file format and task, on tiny files written in the real formats."""
import json
import math
import os

import pytest
from dataset_files import write_image, write_json, write_text
from detectron2.data import DatasetCatalog, MetadataCatalog

import fiber_d2.data.datasets as datasets
from fiber_d2.data.datasets import DatasetFormatError, register_all_fiber_datasets, register_fiber_shapes


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
