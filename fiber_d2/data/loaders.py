"""Train and test data loaders chosen by INPUT.DATASET_MAPPER_NAME, as Mask2Former's train_net chooses its mapper:
a config names the inputs its model reads, so the entry points never look at model classes.

  grounding        GroundingDatasetMapper: images with prompts, boxes and positive maps (FiberGroundingDetector)
  coarse_pretrain  CoarseDatasetMapper, task "pretrain" (ITC/ITM/MLM); test sets with task "retrieval"
                   (FiberCoarseModel)
  coarse_vqa       CoarseDatasetMapper, task "vqa", targets over the config's answer vocabulary (FiberVQAModel)
  coarse_caption   CoarseDatasetMapper, task "caption" (FiberCaptionModel)
  coarse_text      CoarseDatasetMapper, task "text": captions alone, MLM-masked (FiberTextPretrainer); no test sets
  detectron2       Detectron2's build_detection_train_loader / build_detection_test_loader (its own models)

A new model with new inputs adds a name with `register_loaders`; train_net.py stays as it is.
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader

from ..config import ConfigError
from .build import (
    build_coarse_test_loader,
    build_coarse_train_loader,
    build_grounding_test_loader,
    build_grounding_train_loader,
)
from .vqa_vocabulary import answer_vocabulary_from_config


class LoaderBuilders(NamedTuple):
    """train(cfg) -> the training loader over DATASETS.TRAIN; test(cfg, dataset_name) -> one test set's loader."""

    train: Callable[[CfgNode], Iterable]
    test: Callable[[CfgNode, str], Iterable]


_LOADERS: dict[str, LoaderBuilders] = {}


def register_loaders(
    name: str, train: Callable[[CfgNode], Iterable], test: Callable[[CfgNode, str], Iterable]
) -> None:
    """Make INPUT.DATASET_MAPPER_NAME `name` build its loaders with `train` and `test` (see LoaderBuilders)."""
    if name in _LOADERS:
        raise ValueError(f"data loaders {name!r} are already registered")
    _LOADERS[name] = LoaderBuilders(train, test)


def loader_builders(cfg: CfgNode) -> LoaderBuilders:
    """The builders registered under cfg.INPUT.DATASET_MAPPER_NAME (ConfigError if there are none)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in _LOADERS:
        raise ConfigError(f"INPUT.DATASET_MAPPER_NAME {name!r} is not one of {sorted(_LOADERS)}")
    return _LOADERS[name]


def build_train_loader(cfg: CfgNode) -> Iterable:
    """The training loader of cfg.INPUT.DATASET_MAPPER_NAME over DATASETS.TRAIN."""
    return loader_builders(cfg).train(cfg)


def build_test_loader(cfg: CfgNode, dataset_name: str) -> Iterable:
    """The test loader of cfg.INPUT.DATASET_MAPPER_NAME for `dataset_name`."""
    return loader_builders(cfg).test(cfg, dataset_name)


def _coarse_train(task: str, with_answers: bool = False) -> Callable[[CfgNode], Iterable]:
    def build(cfg: CfgNode) -> Iterable:
        answers = answer_vocabulary_from_config(cfg) if with_answers else None
        return build_coarse_train_loader(
            cfg, cfg.DATASETS.TRAIN, cfg.SOLVER.IMS_PER_BATCH, task, answers, cfg.DATALOADER.BATCH_CLUSTERS
        )

    return build


def _coarse_test(task: str, with_answers: bool = False) -> Callable[[CfgNode, str], Iterable]:
    def build(cfg: CfgNode, dataset_name: str) -> Iterable:
        answers = answer_vocabulary_from_config(cfg) if with_answers else None
        return build_coarse_test_loader(cfg, dataset_name, task, answers)

    return build


def _no_test(name: str) -> Callable[[CfgNode, str], Iterable]:
    def build(cfg: CfgNode, dataset_name: str) -> Iterable:
        raise ConfigError(f"INPUT.DATASET_MAPPER_NAME {name!r} has no test loader: set DATASETS.TEST to ()")

    return build


register_loaders("grounding", build_grounding_train_loader, build_grounding_test_loader)
register_loaders("coarse_pretrain", _coarse_train("pretrain"), _coarse_test("retrieval"))
register_loaders("coarse_vqa", _coarse_train("vqa", with_answers=True), _coarse_test("vqa", with_answers=True))
register_loaders("coarse_caption", _coarse_train("caption"), _coarse_test("caption"))
register_loaders("coarse_text", _coarse_train("text"), _no_test("coarse_text"))
register_loaders("detectron2", build_detection_train_loader, build_detection_test_loader)
