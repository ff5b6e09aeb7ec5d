"""Trainer: Detectron2's DefaultTrainer with fiber_d2's data loaders, evaluators, optimizers, results file and the
coarse-stage hook (COARSE_STAGE.ENABLED). `projects/FIBER/train_net.py` is its command line."""
from __future__ import annotations

import os

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ..data import (
    VLDatasetMapper,
    build_grounding_test_loader,
    build_grounding_train_loader,
    build_vl_test_loader,
    build_vl_train_loader,
)
from ..evaluation import build_evaluator, save_results_json
from ..evaluation.caption import CaptionEvaluator
from ..evaluation.itm_scorer import DatasetItmScorer
from ..modeling import FiberCaptionModel, FiberCoarseModel, FiberGroundingDetector, FiberVQAModel
from ..solver import build_optimizer
from .coarse_hook import CoarseStageHook


def is_grounding_model(cfg: CfgNode) -> bool:
    """Whether the model reads prompts (FIBER's grounding detector) rather than Detectron2's detection inputs."""
    return cfg.MODEL.META_ARCHITECTURE == FiberGroundingDetector.__name__


# The image-level models and the VLDatasetMapper task of their training data (test data: "retrieval" for the first).
IMAGE_LEVEL_TASKS = {
    FiberCoarseModel.__name__: "pretrain",
    FiberVQAModel.__name__: "vqa",
    FiberCaptionModel.__name__: "caption",
}


def image_level_task(cfg: CfgNode) -> str | None:
    """The VLDatasetMapper task of an image-level model's training data; None for the detectors."""
    return IMAGE_LEVEL_TASKS.get(cfg.MODEL.META_ARCHITECTURE)


def answer_vocabulary(cfg: CfgNode) -> list[str] | None:
    """The VQA model's answer classes (the loaders' targets must use the same list); None for the other models."""
    if cfg.MODEL.META_ARCHITECTURE != FiberVQAModel.__name__:
        return None
    return FiberVQAModel.answer_vocabulary_from_config(cfg)


class Trainer(DefaultTrainer):
    """DefaultTrainer with fiber_d2's data loaders (prompts; image-text pairs, questions, captions), evaluators,
    optimizers, results file and the coarse-stage hook (COARSE_STAGE.ENABLED)."""

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.COARSE_STAGE.ENABLED:
            hooks.insert(0, CoarseStageHook(self.cfg, self.model))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        if is_grounding_model(cfg):
            return build_grounding_train_loader(cfg)
        task = image_level_task(cfg)
        if task:
            return build_vl_train_loader(
                cfg, cfg.DATASETS.TRAIN, cfg.SOLVER.IMS_PER_BATCH, task, answer_vocabulary(cfg)
            )
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_grounding_model(cfg):
            return build_grounding_test_loader(cfg, dataset_name)
        task = image_level_task(cfg)
        if task:
            task = "retrieval" if task == "pretrain" else task
            return build_vl_test_loader(cfg, dataset_name, task, answer_vocabulary(cfg))
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, model=None):
        """`model`: the model under test, for retrieval's ITM re-ranking (TEST.RETRIEVAL_ITM_TOP_K > 0)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if cfg.MODEL.META_ARCHITECTURE == FiberCaptionModel.__name__:  # any image-caption set, whatever its type
            return CaptionEvaluator(dataset_name, output_dir=output_folder)
        model = getattr(model, "module", model)  # DistributedDataParallel
        itm_scorer = None
        if cfg.TEST.RETRIEVAL_ITM_TOP_K > 0 and isinstance(model, FiberCoarseModel):
            itm_scorer = DatasetItmScorer(model, dataset_name, VLDatasetMapper(cfg, False, task="retrieval"))
        return build_evaluator(cfg, dataset_name, output_folder, itm_scorer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        if evaluators is None and cfg.TEST.RETRIEVAL_ITM_TOP_K > 0:
            evaluators = [cls.build_evaluator(cfg, name, model=model) for name in cfg.DATASETS.TEST]
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test drops the dataset level for a single dataset
            results = {cfg.DATASETS.TEST[0]: results}
        if comm.is_main_process():
            save_results_json(results, os.path.join(cfg.OUTPUT_DIR, cfg.TEST.RESULTS_FILE))
        return results
