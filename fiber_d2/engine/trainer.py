"""Trainer: Detectron2's DefaultTrainer with fiber_d2's data loaders (by INPUT.DATASET_MAPPER_NAME), evaluators (by
evaluator type), optimizers, results file, the coarse-stage hook (COARSE_STAGE.ENABLED) and an early stop along the
schedule (SOLVER.STOP_ITER).
Checkpoints (FiberCheckpointer: safe loading, atomic saves) hold what an exact resume needs: weights, optimizer,
schedule, hooks' states, random generators' states and the data position (TrainingStateHook).
`projects/FIBER/train_net.py` is its command line; nothing here depends on the model's class."""
from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_writers
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..checkpoint.checkpointer import FiberCheckpointer
from ..config import ConfigError
from ..data.loaders import build_test_loader, build_train_loader
from ..evaluation import build_evaluator, save_results_json
from ..evaluation.results import check_results_file
from ..modeling.coarse.tta import build_tta_model
from ..solver import build_optimizer
from .amp import FiberAMPTrainer, amp_precision
from .coarse_hook import CoarseStageHook
from .train_state import TrainingStateHook, preserved_rng_state

logger = logging.getLogger(__name__)


def results_path(cfg: CfgNode) -> str:
    """The results file: OUTPUT_DIR/TEST.RESULTS_FILE."""
    return os.path.join(cfg.OUTPUT_DIR, cfg.TEST.RESULTS_FILE)


class Trainer(DefaultTrainer):
    """DefaultTrainer with fiber_d2's loaders, evaluators, optimizers, results file and coarse-stage hook."""

    def __init__(self, cfg: CfgNode) -> None:
        check_results_file(results_path(cfg))  # a results file that cannot be merged into fails now, not at the end
        stop = cfg.SOLVER.STOP_ITER
        if not 0 <= stop <= cfg.SOLVER.MAX_ITER:
            raise ConfigError(f"SOLVER.STOP_ITER must lie in [0, SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}], got {stop}")
        super().__init__(cfg)
        if stop:  # the hooks (final checkpoint, final evaluation) read max_iter; the lr scheduler kept MAX_ITER
            self.max_iter = stop
        if cfg.SOLVER.AMP.ENABLED:  # Detectron2 0.6's AMPTrainer autocasts to CUDA float16 only
            step = self._trainer
            self._trainer = FiberAMPTrainer(step.model, step.data_loader, step.optimizer, amp_precision(cfg))

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this; the checkpoint hook gets ours
        self.checkpointer = FiberCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        if self.cfg.COARSE_STAGE.ENABLED:
            hooks.insert(0, CoarseStageHook(self.cfg, self.model))
        hooks.append(TrainingStateHook())
        return hooks

    def build_writers(self):
        # DefaultTrainer builds them before __init__ can set max_iter to SOLVER.STOP_ITER: their eta counts to the stop
        return default_writers(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.STOP_ITER or self.max_iter)

    def state_dict(self) -> dict:
        """DefaultTrainer's state (iteration, hooks) and the optimizer's (and AMP scaler's), as later Detectron2
        releases save them; Detectron2 0.6 leaves the optimizer out."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])
        else:
            logger.warning("The checkpoint holds no optimizer state: the optimizer's moments start again")

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
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> dict:
        """The test sets again through the model's test-time augmentation (TEST.AUG; `build_tta_model`), as
        Detectron2's own train_net.py does: results under "<dataset>_TTA", evaluator files under OUTPUT_DIR/
        inference_TTA. Retrieval's ITM re-ranking scores with `model` itself."""
        logger.info("Running inference with test-time augmentation ...")
        tta = build_tta_model(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name), model=model)
            for name in cfg.DATASETS.TEST
        ]
        return cls.test(cfg, tta, evaluators, suffix="_TTA")

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None, suffix: str = "") -> dict:
        """DefaultTrainer.test one dataset at a time (the evaluators get the model when retrieval re-ranks by ITM):
        each dataset's results are merged into OUTPUT_DIR/TEST.RESULTS_FILE as soon as it is evaluated, so an error
        in a later one keeps them. Returns {dataset_name: {task: {metric: value}}}. The random generators end as
        they were, so an evaluation during training does not change the training. `suffix` is appended to the
        dataset names of the results."""
        path = results_path(cfg)
        check_results_file(path)
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is None and cfg.TEST.RETRIEVAL_ITM_TOP_K > 0:
            evaluators = [cls.build_evaluator(cfg, name, model=model) for name in cfg.DATASETS.TEST]
        results = {}
        with preserved_rng_state():
            for index, name in enumerate(cfg.DATASETS.TEST):
                one = cfg.clone()
                one.defrost()
                one.DATASETS.TEST = (name,)
                results[name + suffix] = super().test(one, model, None if evaluators is None else [evaluators[index]])
                if comm.is_main_process():
                    save_results_json({name + suffix: results[name + suffix]}, path)
        return results
