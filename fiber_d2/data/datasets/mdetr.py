"""MDETR grounding annotations: `final_mixed_train_no_coco.json`, `final_flickr_{separate,merged}GT_*.json`,
`final_refcoco{,+,g}_*.json`, and FIBER-Shapes' files in the same format.

One output dict per (image, caption) record: `file_name, height, width (ints; numeric strings such as "480", as
MDETR's conversion scripts write them, are accepted), image_id, caption, annotations`, each
annotation `{bbox: [x, y, w, h] pixels, bbox_mode: XYWH_ABS, category_id (as in the file, not remapped),
tokens_positive: [[start, end), ...] character spans of the caption, phrase_ids (when present)}`, plus the record's
`dataset_name, tokens_positive_eval, sentence_id, original_img_id, original_id` when present.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any, Mapping

from detectron2.structures import BoxMode

from .catalog import register_dataset
from .errors import (
    DatasetFormatError,
    RecordReporter,
    check_on_bad_record,
    load_json,
    pixel_count,
    record_label,
    require_dir,
    require_file,
    span_problem,
    top_level_list,
    xywh_box_problem,
)

logger = logging.getLogger(__name__)

_OPTIONAL_IMAGE_KEYS = ("dataset_name", "tokens_positive_eval", "sentence_id", "original_img_id", "original_id")


def load_mdetr_json(
    json_file: str,
    image_root: str | Mapping[str, str],
    dataset_name: str | None = None,
    on_bad_record: str = "raise",
) -> list[dict]:
    """Load an MDETR grounding file.

    `image_root` is one folder, or a mapping from a record's image source to its folder: the record's `data_source`
    (MDETR's mixed files: "coco" or "vg"), or its `dataset_name` when it has no `data_source`.

    A bad box or a span outside its caption (also in `tokens_positive_eval`) is reported per `on_bad_record`;
    "skip" drops the whole (image, caption) record, whose phrases refer to each other.
    """
    check_on_bad_record(on_bad_record)
    require_file(json_file, dataset_name, "annotation file")
    data = load_json(json_file, dataset_name)
    images = top_level_list(data, "images", json_file, dataset_name)
    if isinstance(image_root, str):
        require_dir(image_root, dataset_name, "image folder")
    else:  # only the folders of the sources that records name must exist
        sources = {image.get("data_source", image.get("dataset_name")) for image in images if isinstance(image, dict)}
        for source in sorted(s for s in sources if s in image_root):
            require_dir(image_root[source], dataset_name, f"image folder of source {source!r}")
    reporter = RecordReporter(json_file, dataset_name, on_bad_record)

    annotations_by_image: dict[Any, list[dict]] = defaultdict(list)
    for index, annotation in enumerate(top_level_list(data, "annotations", json_file, dataset_name)):
        label = record_label("annotation", annotation, index)
        if not isinstance(annotation, dict):
            raise reporter.not_an_object(label)
        if "image_id" not in annotation:
            raise reporter.missing_key("image_id", label)
        annotations_by_image[annotation["image_id"]].append(annotation)

    dicts = []
    for index, image in enumerate(images):
        label = record_label("image", image, index)
        if not isinstance(image, dict):
            raise reporter.not_an_object(label)
        record = _convert_record(image, label, annotations_by_image.pop(image.get("id"), []), image_root, reporter)
        if record is not None:
            dicts.append(record)
    if annotations_by_image:
        logger.warning(
            "%s: ignored the annotations of %d image id(s) without an image record, e.g. %s",
            reporter.source, len(annotations_by_image), next(iter(annotations_by_image)),
        )
    reporter.log_summary()
    return dicts


def register_mdetr_json(
    name: str,
    json_file: str,
    image_root: str | Mapping[str, str],
    on_bad_record: str = "raise",
    **metadata: Any,
) -> None:
    """Register an MDETR grounding file under `name`; `metadata` adds e.g. `evaluator_type`."""
    check_on_bad_record(on_bad_record)
    register_dataset(
        name,
        lambda: load_mdetr_json(json_file, image_root, name, on_bad_record),
        json_file=json_file,
        image_root=image_root,
        **metadata,
    )


def _convert_record(
    image: dict, label: str, annotations: list[dict], image_root: str | Mapping[str, str], reporter: RecordReporter
) -> dict | None:
    """The output dict of one image record, or None when it is skipped as a bad record."""
    try:
        record = {
            "file_name": os.path.join(_image_folder(image, label, image_root, reporter), image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "caption": image["caption"],
        }
    except KeyError as e:
        raise reporter.missing_key(e.args[0], label) from None
    for key in ("height", "width"):
        size = pixel_count(record[key])
        if size is None:
            reporter.bad_record(label, f"{key} {record[key]!r} is not a positive whole number of pixels")
            return None
        record[key] = size
    caption = record["caption"]
    if not isinstance(caption, str):
        raise DatasetFormatError(f"{reporter.source}: {label}: 'caption' is not a string")
    record.update({key: image[key] for key in _OPTIONAL_IMAGE_KEYS if key in image})

    objs = []
    for index, annotation in enumerate(annotations):
        annotation_label = f"{label}, {record_label('annotation', annotation, index)}"
        try:
            obj = {
                "bbox": annotation["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": annotation["category_id"],
                "tokens_positive": annotation["tokens_positive"],
            }
        except KeyError as e:
            raise reporter.missing_key(e.args[0], annotation_label) from None
        if "phrase_ids" in annotation:
            obj["phrase_ids"] = annotation["phrase_ids"]
        problem = xywh_box_problem(obj["bbox"], record["width"], record["height"]) or _spans_problem(
            "tokens_positive", obj["tokens_positive"], caption
        )
        if problem is not None:
            reporter.bad_record(annotation_label, problem)
            return None
        objs.append(obj)
    for phrase_index, spans in enumerate(record.get("tokens_positive_eval", [])):
        problem = _spans_problem(f"tokens_positive_eval[{phrase_index}]", spans, caption)
        if problem is not None:
            reporter.bad_record(label, problem)
            return None
    record["annotations"] = objs
    return record


def _image_folder(image: dict, label: str, image_root: str | Mapping[str, str], reporter: RecordReporter) -> str:
    if isinstance(image_root, str):
        return image_root
    key = "data_source" if "data_source" in image else "dataset_name"
    source = image[key]
    if source not in image_root:
        raise DatasetFormatError(
            f"{reporter.source}: {label}: {key} {source!r} has no image folder (known: {sorted(image_root)})"
        )
    return image_root[source]


def _spans_problem(key: str, spans: Any, caption: str) -> str | None:
    if not isinstance(spans, list):
        return f"{key} {spans!r} is not a list of [start, end] spans"
    for span in spans:
        problem = span_problem(span, caption)
        if problem is not None:
            return f"{key}: {problem}"
    return None
