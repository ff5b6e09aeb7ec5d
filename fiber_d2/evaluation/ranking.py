"""Shared machinery of the grounding evaluators: the rank of the first correct box, and hit rates @k across processes.

Each scored item (a Flickr30k phrase, a RefExp expression) is reduced in `process()` to the 1-based rank, by
descending score, of its first predicted box that overlaps the ground truth enough (None: no such box), so the
processes exchange only a few integers per record.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .distributed import gather_unique

logger = logging.getLogger(__name__)

TOP_K = (1, 5, 10)
MATCH_THRESHOLD = 0.5

Overlap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def first_hit_rank(
    pred_boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    overlap: Overlap,
    threshold: float = MATCH_THRESHOLD,
) -> int | None:
    """1-based rank, by descending score, of the first predicted box whose overlap with any GT box is >= threshold.

    `pred_boxes` (N, 4) and `gt_boxes` (M, 4) are XYXY in the same coordinates, `scores` (N,); `overlap` maps them
    to an (N, M) matrix (e.g. `torchvision.ops.box_iou`). Equal scores keep the prediction order. None: no hit.
    """
    if len(pred_boxes) == 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    hits = (overlap(pred_boxes[order], gt_boxes) >= threshold).any(dim=1).nonzero()
    return int(hits[0]) + 1 if len(hits) else None


def hit_rate_at_k(ranks: Sequence[int | None], ks: Sequence[int] = TOP_K) -> dict[int, float]:
    """For each k, the percentage (0-100) of ranks <= k (None: a miss); NaN for every k when `ranks` is empty."""
    if not ranks:
        return {k: float("nan") for k in ks}
    return {k: 100.0 * sum(rank is not None and rank <= k for rank in ranks) / len(ranks) for k in ks}


class RankEvaluator(DatasetEvaluator):
    """A `DatasetEvaluator` that scores each record by the ranks of its items' first hits (see the module docstring).

    Subclasses set `task` (the key of the results), `metric_prefix` ("R" -> "R@1", ...) and `results_file` (the
    per-item dump under `output_dir`), and implement `_record_ranks` and `protocol_description` (logged with the
    results). The ground truth is read from
    `DatasetCatalog.get(dataset_name)` on first use; records are keyed by their `image_id`.
    """

    task: str
    metric_prefix: str
    results_file: str

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._records_by_id: dict[Any, dict] | None = None
        self._ranks: dict[Any, list[tuple[int, int | None]]] = {}

    def reset(self) -> None:
        self._ranks = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Rank the predictions of each record; `outputs[i]["instances"]` is in original image coordinates."""
        for inputs_i, outputs_i in zip(inputs, outputs):
            image_id = inputs_i["image_id"]
            record = self._records().get(image_id)
            if record is None:
                raise KeyError(f"image_id {image_id!r} is not a record of dataset {self._dataset_name!r}")
            instances = outputs_i["instances"].to("cpu")
            self._ranks[image_id] = self._record_ranks(
                record, instances.pred_boxes.tensor.float(), instances.scores.float(), instances.pred_classes
            )

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{task: {"<prefix>@k": percent}}` on the main process, over the records seen by any process; {} elsewhere."""
        ranks_by_id = gather_unique(self._ranks)
        if ranks_by_id is None:
            return {}
        unseen = len(self._records().keys() - ranks_by_id.keys())
        if unseen:
            logger.warning(
                "%s: %d of %d records of %r were never evaluated; the metrics cover the %d records seen",
                type(self).__name__, unseen, len(self._records()), self._dataset_name, len(ranks_by_id),
            )
        if self._output_dir:
            self._dump(ranks_by_id)
        ranks = [rank for record_ranks in ranks_by_id.values() for _, rank in record_ranks]
        metrics = {f"{self.metric_prefix}@{k}": value for k, value in hit_rate_at_k(ranks).items()}
        logger.info(
            "%s on %r (%d scored items in %d records; %s), in %%:\n%s",
            type(self).__name__, self._dataset_name, len(ranks), len(ranks_by_id), self.protocol_description(),
            create_small_table(metrics),
        )
        return {self.task: metrics}

    def protocol_description(self) -> str:
        """How a hit is decided, e.g. "box hit at GIoU >= 0.5", printed with the results."""
        raise NotImplementedError

    def _record_ranks(
        self, record: dict, pred_boxes: torch.Tensor, scores: torch.Tensor, pred_classes: torch.Tensor
    ) -> list[tuple[int, int | None]]:
        """`(phrase index, first-hit rank)` for each scored item of `record`; the tensors are on the CPU."""
        raise NotImplementedError

    def _records(self) -> dict[Any, dict]:
        if self._records_by_id is None:
            records_by_id = {}
            for record in DatasetCatalog.get(self._dataset_name):
                if "annotations" not in record or "caption" not in record:
                    raise ValueError(
                        f"{type(self).__name__} needs MDETR-format records (caption, annotations); dataset "
                        f"{self._dataset_name!r} has a record with keys {sorted(record)}"
                    )
                if record["image_id"] in records_by_id:
                    raise ValueError(f"dataset {self._dataset_name!r}: image_id {record['image_id']!r} is not unique")
                records_by_id[record["image_id"]] = record
            self._records_by_id = records_by_id
        return self._records_by_id

    def _dump(self, ranks_by_id: dict[Any, list[tuple[int, int | None]]]) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self.results_file)
        rows = [
            {"image_id": image_id, "phrase_index": phrase_index, "rank": rank}
            for image_id, record_ranks in ranks_by_id.items()
            for phrase_index, rank in record_ranks
        ]
        with PathManager.open(path, "w") as f:
            json.dump(rows, f)
        logger.info("Wrote the first-hit rank of each scored item to %s", path)
