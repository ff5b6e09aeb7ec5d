"""Ground truth that the coarse evaluators (retrieval, VQA, captioning) read from registered datasets."""
from __future__ import annotations

from typing import Any

from detectron2.data import DatasetCatalog


def captions_by_image_id(dataset_name: str, evaluator: str) -> dict[Any, list[str]]:
    """{image_id: captions} of a dataset whose records have `captions`; errors name the evaluator and the dataset."""
    captions: dict[Any, list[str]] = {}
    for record in DatasetCatalog.get(dataset_name):
        if "captions" not in record:
            raise ValueError(
                f"{evaluator} needs records with 'captions'; dataset {dataset_name!r} has a record with keys "
                f"{sorted(record)}"
            )
        if record["image_id"] in captions:
            raise ValueError(f"dataset {dataset_name!r}: image_id {record['image_id']!r} is not unique")
        captions[record["image_id"]] = record["captions"]
    return captions
