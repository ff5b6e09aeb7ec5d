"""LVIS box AP under the Fixed-AP protocol (Dave et al. 2021), the LVIS numbers MDETR, GLIP and FIBER report.

Detectron2's `LVISEvaluator` keeps the 300 highest-scoring detections of each image. Fixed AP instead keeps, for each
category, the `top_k` (10,000) highest-scoring detections over the whole dataset, with no per-image cap, so a
category's AP no longer depends on how the other categories of the same images score; the AP itself is LVIS's
(`lvis.LVISEval`: 101-point interpolated precision, IoU 0.50:0.95, federated negatives). Run the model with a large
`TEST.DETECTIONS_PER_IMAGE` so that every detection can compete for its category's top k.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from lvis import LVIS, LVISEval, LVISResults

from .distributed import gather_unique
from .lvis_compat import numpy_float_for_lvis

logger = logging.getLogger(__name__)

FIXED_AP_TOP_K = 10000
LVIS_BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def fixed_ap_top_k(predictions: list[dict], top_k: int = FIXED_AP_TOP_K) -> list[dict]:
    """The `top_k` highest-scoring detections of each `category_id` over all images, in their input order.

    `predictions` are COCO-format detections (`image_id`, `category_id`, `bbox` XYWH, `score`). At equal scores the
    detection that comes earlier in `predictions` ranks higher, so a tie at the cut keeps the earlier one.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not predictions:
        return []
    scores = np.array([p["score"] for p in predictions], dtype=np.float64)
    categories = np.array([p["category_id"] for p in predictions])
    # By category, then descending score; np.lexsort is stable, so equal scores stay in input order.
    order = np.lexsort((-scores, categories))
    sorted_categories = categories[order]
    rank_in_category = np.arange(len(order)) - np.searchsorted(sorted_categories, sorted_categories, side="left")
    keep = np.zeros(len(predictions), dtype=bool)
    keep[order[rank_in_category < top_k]] = True
    return [p for p, kept in zip(predictions, keep) if kept]


def lvis_box_ap(lvis_api: LVIS, detections: list[dict], max_dets_per_image: int = -1) -> dict[str, float]:
    """LVIS box metrics `LVIS_BOX_METRICS` in percent; NaN where no ground truth falls in the group or area range.

    `detections` are COCO-format with the json's category ids (left unmodified); `max_dets_per_image` < 0: no
    per-image cap (Fixed AP), 300: LVIS's standard protocol.
    """
    if not detections:
        logger.warning("No detections to evaluate; every LVIS metric is NaN")
        return {metric: float("nan") for metric in LVIS_BOX_METRICS}
    copies = [dict(d) for d in detections]  # LVISResults adds area, id and segmentation to each detection
    with numpy_float_for_lvis():
        lvis_eval = LVISEval(lvis_api, LVISResults(lvis_api, copies, max_dets=max_dets_per_image), "bbox")
        lvis_eval.run()
    results = lvis_eval.get_results()  # -1: no ground truth in that frequency group or area range
    return {
        metric: float("nan") if results[metric] == -1 else float(results[metric]) * 100 for metric in LVIS_BOX_METRICS
    }


class LVISFixedAPEvaluator(DatasetEvaluator):
    """LVIS box AP with the Fixed-AP protocol (see the module docstring) on the dataset's metadata `json_file`.

    Predicted classes map to the json's category ids through the metadata's `thing_dataset_id_to_contiguous_id`
    when it has one, else as class index + 1 (Detectron2's LVIS convention). `evaluate()` returns
    `{"bbox": {metric: percent}}` on the main process ({} elsewhere) and writes the detections it scored (each
    category's top k) to `lvis_fixed_ap_results.json` under `output_dir`.
    """

    results_file = "lvis_fixed_ap_results.json"

    def __init__(
        self, dataset_name: str, output_dir: str | None = None, top_k_per_category: int = FIXED_AP_TOP_K
    ) -> None:
        if top_k_per_category < 1:
            raise ValueError(f"top_k_per_category must be >= 1, got {top_k_per_category}")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._top_k = top_k_per_category
        metadata = MetadataCatalog.get(dataset_name)
        json_file = metadata.get("json_file")
        if json_file is None:
            raise ValueError(f"{type(self).__name__} needs the metadata 'json_file' of dataset {dataset_name!r}")
        self._lvis_api = LVIS(PathManager.get_local_path(json_file))
        if not self._lvis_api.get_ann_ids():
            raise ValueError(f"dataset {dataset_name!r}: {json_file} has no annotations to evaluate against")
        if metadata.get("thing_dataset_id_to_contiguous_id") is not None:
            self._category_ids = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
        else:
            self._category_ids = {category_id - 1: category_id for category_id in self._lvis_api.get_cat_ids()}
        self._detections: dict[Any, list[dict]] = {}

    def reset(self) -> None:
        self._detections = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Keep every detection of `outputs[i]["instances"]` (original image coordinates); a repeated image replaces."""
        for inputs_i, outputs_i in zip(inputs, outputs):
            image_id = inputs_i["image_id"]
            if image_id not in self._lvis_api.imgs:
                raise KeyError(f"image_id {image_id!r} is not an image of dataset {self._dataset_name!r}")
            detections = instances_to_coco_json(outputs_i["instances"].to("cpu"), image_id)
            for detection in detections:
                class_index = detection["category_id"]
                if class_index not in self._category_ids:
                    raise KeyError(
                        f"dataset {self._dataset_name!r}, image_id {image_id!r}: predicted class {class_index} has "
                        "no category id in the dataset"
                    )
                detection["category_id"] = self._category_ids[class_index]
            self._detections[image_id] = detections

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"bbox": {"AP", "AP50", ..., "APf"}}` in percent over each category's top k; {} off the main process."""
        detections_by_image = gather_unique(self._detections)
        if detections_by_image is None:
            return {}
        unseen = len(self._lvis_api.imgs.keys() - detections_by_image.keys())
        if unseen:
            logger.warning(
                "%s: %d of %d images of %r were never evaluated; they count as images without detections",
                type(self).__name__, unseen, len(self._lvis_api.imgs), self._dataset_name,
            )
        detections = fixed_ap_top_k([d for ds in detections_by_image.values() for d in ds], self._top_k)
        if self._output_dir:
            self._dump(detections)
        metrics = lvis_box_ap(self._lvis_api, detections, max_dets_per_image=-1)
        logger.info(
            "LVIS Fixed AP (top %d per category, no per-image cap) on %r, %d detections in %d images, in %%:\n%s",
            self._top_k, self._dataset_name, len(detections), len(detections_by_image),
            create_small_table({k: v for k, v in metrics.items() if not math.isnan(v)}),
        )
        return {"bbox": metrics}

    def _dump(self, detections: list[dict]) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self.results_file)
        with PathManager.open(path, "w") as f:
            json.dump(detections, f)
        logger.info("Wrote the %d detections scored by Fixed AP to %s", len(detections), path)
