"""Trainer: Detectron2's DefaultTrainer with fiber_d2's data loaders (by INPUT.DATASET_MAPPER_NAME), evaluators (by
evaluator type), optimizers, results file and the coarse-stage hook (COARSE_STAGE.ENABLED).
`projects/FIBER/train_net.py` is its command line; nothing here depends on the model's class."""
from __future__ import annotations

import os

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.loaders import build_test_loader, build_train_loader
from ..evaluation import build_evaluator, save_results_json
from ..solver import build_optimizer
from .coarse_hook import CoarseStageHook


class Trainer(DefaultTrainer):
    """DefaultTrainer with fiber_d2's loaders, evaluators, optimizers, results file and coarse-stage hook."""

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.COARSE_STAGE.ENABLED:
            hooks.insert(0, CoarseStageHook(self.cfg, self.model))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None, model: torch.nn.Module | None = None
    ) -> DatasetEvaluator:
        """`model`: the model under test, for retrieval's ITM re-ranking (TEST.RETRIEVAL_ITM_TOP_K > 0)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder, model)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """DefaultTrainer.test (the evaluators get the model when retrieval re-ranks by ITM); the results are merged
        into OUTPUT_DIR/TEST.RESULTS_FILE as {dataset_name: {task: {metric: value}}}."""
        if evaluators is None and cfg.TEST.RETRIEVAL_ITM_TOP_K > 0:
            evaluators = [cls.build_evaluator(cfg, name, model=model) for name in cfg.DATASETS.TEST]
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test drops the dataset level for a single dataset
            results = {cfg.DATASETS.TEST[0]: results}
        if comm.is_main_process():
            save_results_json(results, os.path.join(cfg.OUTPUT_DIR, cfg.TEST.RESULTS_FILE))
        return results
