"""COCO- and LVIS-format detection (COCO, Objects365, LVIS, FIBER-Shapes `instances_*.json`).

Detectron2's `load_coco_json` / `load_lvis_json` do the loading; this module adds what they lack: errors that name the
file, record and key, and box checks (see `errors.py`). Output: Detectron2's standard dicts with boxes [x, y, w, h] in
pixels (`BoxMode.XYWH_ABS`) and contiguous category ids 0..C-1 (the metadata's `thing_classes` order).
"""
from __future__ import annotations

from typing import Any, Sequence

from detectron2.data.datasets import get_lvis_instances_meta, load_coco_json, load_lvis_json

from .catalog import register_dataset
from .errors import (
    DatasetFormatError,
    RecordReporter,
    check_on_bad_record,
    describe_source,
    load_json,
    record_label,
    require_dir,
    require_file,
    top_level_list,
    xywh_box_problem,
)

# Keys that Detectron2's loaders read from each record, per format.
_COCO_KEYS = {
    "category": ("id", "name"),
    "image": ("id", "file_name", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox"),
}
_LVIS_KEYS = {
    "category": ("id",),
    "image": ("id", "coco_url", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox", "segmentation"),
}
_TOP_LEVEL_KEY = {"category": "categories", "image": "images", "annotation": "annotations"}
# What Detectron2's loaders raise on a malformed file (a JSONDecodeError is a ValueError).
_LOAD_ERRORS = (ValueError, KeyError, TypeError, IndexError, AssertionError)


def load_coco_detection_json(
    json_file: str, image_root: str, dataset_name: str | None = None, on_bad_record: str = "raise"
) -> list[dict]:
    """Load a COCO instances file with `detectron2.data.datasets.load_coco_json`, checking every box.

    With `dataset_name`, category ids become contiguous and the metadata gets `thing_classes` and
    `thing_dataset_id_to_contiguous_id` (as load_coco_json does). A bad box is reported per `on_bad_record`;
    "skip" drops that annotation.
    """
    check_on_bad_record(on_bad_record)
    require_file(json_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    except _LOAD_ERRORS as e:
        raise _explain_load_failure(json_file, dataset_name, e, _COCO_KEYS) from e
    return _drop_bad_boxes(dicts, RecordReporter(json_file, dataset_name, on_bad_record))


def load_lvis_detection_json(
    json_file: str, image_root: str, dataset_name: str | None = None, on_bad_record: str = "raise"
) -> list[dict]:
    """Load an LVIS file (e.g. LVIS v1 minival) with `detectron2.data.datasets.load_lvis_json`, checking every box.

    File names come from each image's `coco_url` (`{image_root}{train2017|val2017}/{name}`, so end `image_root` with
    a slash); category ids become `category_id - 1`. A bad box is reported per `on_bad_record`.
    """
    check_on_bad_record(on_bad_record)
    require_file(json_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    try:
        dicts = load_lvis_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    except _LOAD_ERRORS as e:
        raise _explain_load_failure(json_file, dataset_name, e, _LVIS_KEYS) from e
    return _drop_bad_boxes(dicts, RecordReporter(json_file, dataset_name, on_bad_record))


def coco_category_metadata(json_file: str, dataset_name: str | None = None) -> dict[str, Any]:
    """`thing_classes` and `thing_dataset_id_to_contiguous_id` of a COCO file, as load_coco_json sets them."""
    categories = top_level_list(load_json(json_file, dataset_name), "categories", json_file, dataset_name)
    reporter = RecordReporter(json_file, dataset_name)
    for index, category in enumerate(categories):
        for key in _COCO_KEYS["category"]:
            if not isinstance(category, dict) or key not in category:
                raise reporter.missing_key(key, record_label("category", category, index))
    categories = sorted(categories, key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_coco_detection(
    name: str, json_file: str, image_root: str, metadata: dict[str, Any] | None = None, on_bad_record: str = "raise"
) -> None:
    """Register a COCO-format detection dataset (evaluator_type "coco"); nothing is read until it is loaded."""
    check_on_bad_record(on_bad_record)
    register_dataset(
        name,
        lambda: load_coco_detection_json(json_file, image_root, name, on_bad_record),
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        **(metadata or {}),
    )


def register_lvis_detection(name: str, json_file: str, image_root: str, on_bad_record: str = "raise") -> None:
    """Register an LVIS-format dataset (evaluator_type "lvis", LVIS v1/v0.5 `thing_classes` chosen by `name`)."""
    check_on_bad_record(on_bad_record)
    register_dataset(
        name,
        lambda: load_lvis_detection_json(json_file, image_root, name, on_bad_record),
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        **get_lvis_instances_meta(name),
    )


def _drop_bad_boxes(dicts: list[dict], reporter: RecordReporter) -> list[dict]:
    """Check each annotation's box against its image size; removes the annotation ids added for the messages."""
    for record in dicts:
        kept = []
        for obj in record["annotations"]:
            annotation_id = obj.pop("id")
            problem = xywh_box_problem(obj["bbox"], record["width"], record["height"])
            if problem is None:
                kept.append(obj)
            else:
                reporter.bad_record(f"image id {record['image_id']}, annotation id {annotation_id}", problem)
        record["annotations"] = kept
    reporter.log_summary()
    return dicts


def _explain_load_failure(
    json_file: str, dataset_name: str | None, error: Exception, required: dict[str, Sequence[str]]
) -> DatasetFormatError:
    """Find the record behind Detectron2's loader failing on `json_file` (reads the file again; only on failure)."""
    data = load_json(json_file, dataset_name)  # raises a named error if the file is not JSON
    reporter = RecordReporter(json_file, dataset_name)
    lists = {kind: top_level_list(data, _TOP_LEVEL_KEY[kind], json_file, dataset_name) for kind in required}
    for kind, keys in required.items():
        for index, record in enumerate(lists[kind]):
            if not isinstance(record, dict):
                return reporter.not_an_object(record_label(kind, record, index))
            for key in keys:
                if key not in record:
                    return reporter.missing_key(key, record_label(kind, record, index))
    if not lists["category"]:
        return DatasetFormatError(f"{reporter.source}: 'categories' is empty")
    category_ids = {c["id"] for c in lists["category"]}
    for annotation in lists["annotation"]:
        if annotation["category_id"] not in category_ids:
            return DatasetFormatError(
                f"{reporter.source}: image id {annotation['image_id']}, annotation id {annotation['id']}: "
                f"category_id {annotation['category_id']} is not among the 'categories'"
            )
    return DatasetFormatError(
        f"{describe_source(json_file, dataset_name)}: cannot be loaded ({type(error).__name__}: {error})"
    )
