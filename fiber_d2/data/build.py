"""Data loaders with GroundingDatasetMapper (the detector) or CoarseDatasetMapper (the coarse models): Detectron2's
test loader; for training ResumableTrainLoader (Detectron2's sampling, with a position that checkpoints save)."""
from __future__ import annotations

import logging
from typing import Sequence

import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetFromList, MapDataset
from detectron2.data.build import trivial_batch_collator
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm

from .batch_clusters import load_batch_cluster_ids
from .coarse_mapper import CoarseDatasetMapper
from .grounding_mapper import GroundingDatasetMapper
from .image_io import check_image_files
from .resumable_loader import ResumableTrainLoader
from .size_groups import SizeGroups

logger = logging.getLogger(__name__)


def load_grounding_dataset_dicts(names: Sequence[str], filter_empty: bool = False) -> list[dict]:
    """The records of the registered datasets `names`, in order; each a shallow copy with `source_dataset` = its
    dataset's name (the mapper reads that dataset's category names for detection records). With `filter_empty`,
    records without a non-crowd annotation are left out (Detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS)."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no dataset names given")
    dicts = []
    for name in names:
        records = DatasetCatalog.get(name)
        if not records:
            raise ValueError(f"dataset {name!r} is empty")
        dicts.extend({**record, "source_dataset": name} for record in records)
    if filter_empty:
        before = len(dicts)
        dicts = [r for r in dicts if any(a.get("iscrowd", 0) == 0 for a in r.get("annotations", []))]
        if len(dicts) < before:
            logger.info("Removed %d images with no usable annotations; %d images left", before - len(dicts), len(dicts))
    return dicts


def build_grounding_train_loader(cfg: CfgNode) -> ResumableTrainLoader:
    """An infinite loader of training batches (lists of GroundingDatasetMapper outputs) over all DATASETS.TRAIN; its
    position goes into checkpoints (ResumableTrainLoader). A missing or empty image file raises or is skipped now
    (DATASETS.ON_BAD_RECORD), not when the sampler reaches it."""
    dataset = load_grounding_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    dataset = check_image_files(dataset, cfg.DATASETS.ON_BAD_RECORD)
    size_groups = None
    if cfg.DATALOADER.SIZE_GROUPING > 0:
        size_groups = SizeGroups.for_records(dataset, cfg.INPUT, cfg.DATALOADER.SIZE_GROUPING)
    return ResumableTrainLoader(
        dataset,
        GroundingDatasetMapper(cfg, True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING and size_groups is None,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        size_groups=size_groups,
    )


def build_grounding_test_loader(cfg: CfgNode, dataset_name: str) -> torchdata.DataLoader:
    """Detectron2's inference sampling (each record once across processes, each process a contiguous share) for one
    dataset, in batches of TEST.IMS_PER_BATCH records (the detector runs the lower part of an image once for all the
    records of a batch that share it); a missing or empty image file raises now."""
    return _batched_test_loader(cfg, dataset_name, GroundingDatasetMapper(cfg, False, dataset_name=dataset_name))


def _batched_test_loader(cfg: CfgNode, dataset_name: str, mapper) -> torchdata.DataLoader:
    """InferenceSampler over `dataset_name`'s records, mapped by `mapper`, in lists of TEST.IMS_PER_BATCH."""
    if cfg.TEST.IMS_PER_BATCH < 1:
        raise ValueError(f"TEST.IMS_PER_BATCH must be >= 1, got {cfg.TEST.IMS_PER_BATCH}")
    dataset = MapDataset(
        DatasetFromList(check_image_files(load_grounding_dataset_dicts([dataset_name])), copy=False), mapper
    )
    batches = torchdata.BatchSampler(InferenceSampler(len(dataset)), cfg.TEST.IMS_PER_BATCH, drop_last=False)
    return torchdata.DataLoader(
        dataset, batch_sampler=batches, num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator
    )


def build_coarse_train_loader(
    cfg: CfgNode,
    dataset_names: Sequence[str],
    total_batch_size: int,
    task: str = "pretrain",
    answer_vocabulary: Sequence[str] | None = None,
    batch_clusters: str = "",
):
    """An infinite loader of coarse training batches (lists of CoarseDatasetMapper outputs, images S x S); its
    position goes into checkpoints (ResumableTrainLoader). Missing or empty image files: as the grounding loader.

    task: "pretrain", "vqa" (needs `answer_vocabulary`) or "caption".
    batch_clusters: a JSON file {image_id: cluster}; each batch then holds images of one cluster (batch_clusters.py).
    """
    records = check_image_files(load_grounding_dataset_dicts(dataset_names), cfg.DATASETS.ON_BAD_RECORD)
    group_ids = None
    if batch_clusters:
        group_ids = load_batch_cluster_ids(batch_clusters, records, total_batch_size // comm.get_world_size())
    return ResumableTrainLoader(
        records,
        CoarseDatasetMapper(cfg, True, task=task, answer_vocabulary=answer_vocabulary),
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        group_ids=group_ids,
    )


def build_coarse_test_loader(
    cfg: CfgNode, dataset_name: str, task: str = "retrieval", answer_vocabulary: Sequence[str] | None = None
) -> torchdata.DataLoader:
    """Detectron2's inference sampling (each record once across processes) with CoarseDatasetMapper, in batches of
    TEST.IMS_PER_BATCH records (images are all S x S, texts padded with their masks, so a record's output does not
    depend on its batch, to rounding); a missing or empty image file raises now."""
    return _batched_test_loader(
        cfg, dataset_name, CoarseDatasetMapper(cfg, False, task=task, answer_vocabulary=answer_vocabulary)
    )
