"""COCO caption files (`captions_{train,val}2017.json`).

Output: one dict per image with at least one caption: `file_name, height, width, image_id, captions: [str, ...]`
(captions in file order).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .catalog import register_dataset
from .errors import (
    RecordReporter,
    check_on_bad_record,
    load_json,
    record_label,
    require_dir,
    require_file,
    top_level_list,
)

logger = logging.getLogger(__name__)


def load_coco_captions_json(
    json_file: str, image_root: str, dataset_name: str | None = None, on_bad_record: str = "raise"
) -> list[dict]:
    """Load a COCO captions file. A caption that is not a string, or whose `image_id` names no image, is reported
    per `on_bad_record` ("skip" drops that caption)."""
    check_on_bad_record(on_bad_record)
    require_file(json_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    data = load_json(json_file, dataset_name)
    reporter = RecordReporter(json_file, dataset_name, on_bad_record)
    by_id: dict[Any, dict] = {}
    for index, image in enumerate(top_level_list(data, "images", json_file, dataset_name)):
        label = record_label("image", image, index)
        if not isinstance(image, dict):
            raise reporter.not_an_object(label)
        try:
            by_id[image["id"]] = {
                "file_name": os.path.join(image_root, image["file_name"]),
                "height": image["height"],
                "width": image["width"],
                "image_id": image["id"],
                "captions": [],
            }
        except KeyError as e:
            raise reporter.missing_key(e.args[0], label) from None
    for index, annotation in enumerate(top_level_list(data, "annotations", json_file, dataset_name)):
        label = record_label("annotation", annotation, index)
        if not isinstance(annotation, dict):
            raise reporter.not_an_object(label)
        try:
            image_id, caption = annotation["image_id"], annotation["caption"]
        except KeyError as e:
            raise reporter.missing_key(e.args[0], label) from None
        if image_id not in by_id:
            reporter.bad_record(f"image id {image_id}, {label}", "the image id is not among the 'images'")
        elif not isinstance(caption, str):
            reporter.bad_record(f"image id {image_id}, {label}", f"caption {caption!r} is not a string")
        else:
            by_id[image_id]["captions"].append(caption)
    reporter.log_summary()
    dicts = [record for record in by_id.values() if record["captions"]]
    if len(dicts) < len(by_id):
        logger.info("%s: %d image(s) without captions left out", reporter.source, len(by_id) - len(dicts))
    return dicts


def register_coco_captions(
    name: str, json_file: str, image_root: str, on_bad_record: str = "raise", **metadata: Any
) -> None:
    """Register a COCO captions file (evaluator_type "caption")."""
    check_on_bad_record(on_bad_record)
    register_dataset(
        name,
        lambda: load_coco_captions_json(json_file, image_root, name, on_bad_record),
        json_file=json_file,
        image_root=image_root,
        evaluator_type="caption",
        **metadata,
    )
