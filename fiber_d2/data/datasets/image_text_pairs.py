"""Image-text pair corpora: Karpathy caption files (`dataset_coco.json`, `dataset_flickr30k.json`, FIBER-Shapes'
`dataset_fiber_shapes.json`) and JSON lines files (CC3M, SBU, VG).

Output: one dict per image (Karpathy) or per line (JSON lines): `file_name, image_id, captions: [str, ...]`, plus
`split` for Karpathy files.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Sequence

from .catalog import register_dataset
from .errors import (
    DatasetFormatError,
    RecordReporter,
    describe_source,
    load_json,
    require_dir,
    require_file,
    text_lines,
    top_level_list,
)


def load_karpathy_json(
    json_file: str, image_root: str, splits: Sequence[str], dataset_name: str | None = None
) -> list[dict]:
    """The images of a Karpathy file whose `split` is in `splits` (e.g. ("train", "restval")).

    `file_name` is `{image_root}/{filepath}/{filename}` (`filepath` only when the record has one); `image_id` is
    `cocoid` when present, else `imgid`; `captions` are the sentences' `raw` texts, stripped.
    """
    require_file(json_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    images = top_level_list(load_json(json_file, dataset_name), "images", json_file, dataset_name)
    reporter = RecordReporter(json_file, dataset_name)
    wanted = set(splits)
    found: Counter = Counter()
    dicts = []
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            raise reporter.not_an_object(f"image #{index}")
        label = f"image imgid {image['imgid']}" if "imgid" in image else f"image #{index} (no imgid)"
        try:
            split = image["split"]
            found[split] += 1
            if split not in wanted:
                continue
            image_id = image["cocoid"] if "cocoid" in image else image["imgid"]
            captions = [sentence["raw"].strip() for sentence in image["sentences"]]
            file_name = os.path.join(image_root, image.get("filepath", ""), image["filename"])
        except KeyError as e:
            raise reporter.missing_key(e.args[0], label) from None
        except (TypeError, AttributeError):
            raise DatasetFormatError(f"{reporter.source}: {label}: 'sentences' is not a list of {{raw: str}}") from None
        dicts.append({"file_name": file_name, "image_id": image_id, "captions": captions, "split": split})
    if not dicts:
        raise DatasetFormatError(
            f"{reporter.source}: no image in split(s) {sorted(wanted)}; the file's splits: {dict(found)}"
        )
    return dicts


def load_jsonl_pairs(jsonl_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """A JSON lines file of `{"image": path relative to image_root, "caption": str}` or `{..., "captions": [str]}`.

    `image_id` is the line's index among the non-empty lines (0-based).
    """
    require_file(jsonl_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    source = describe_source(jsonl_file, dataset_name)
    dicts = []
    for line_no, line in text_lines(jsonl_file, dataset_name):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{source}, line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict) or "image" not in item:
            raise DatasetFormatError(f"{source}, line {line_no}: no key 'image'")
        if "captions" in item:
            captions = item["captions"]
        elif "caption" in item:
            captions = [item["caption"]]
        else:
            raise DatasetFormatError(f"{source}, line {line_no}: no key 'caption' or 'captions'")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DatasetFormatError(f"{source}, line {line_no}: captions are not strings")
        dicts.append(
            {"file_name": os.path.join(image_root, item["image"]), "image_id": len(dicts), "captions": captions}
        )
    return dicts


def register_karpathy_json(
    name: str, json_file: str, image_root: str, splits: Sequence[str], **metadata: Any
) -> None:
    """Register the `splits` of a Karpathy caption file (evaluator_type "retrieval")."""
    splits = tuple(splits)
    register_dataset(
        name,
        lambda: load_karpathy_json(json_file, image_root, splits, name),
        json_file=json_file,
        image_root=image_root,
        splits=splits,
        evaluator_type="retrieval",
        **metadata,
    )


def register_jsonl_pairs(name: str, jsonl_file: str, image_root: str, **metadata: Any) -> None:
    """Register a JSON lines image-text file (evaluator_type "retrieval")."""
    register_dataset(
        name,
        lambda: load_jsonl_pairs(jsonl_file, image_root, name),
        json_file=jsonl_file,
        image_root=image_root,
        evaluator_type="retrieval",
        **metadata,
    )
