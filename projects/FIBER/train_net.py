#!/usr/bin/env python
"""Train and evaluate fiber_d2 models with Detectron2's DefaultTrainer.

    python projects/FIBER/train_net.py --config-file configs/fiber_shapes/fiber_tiny_grounding.yaml
    python projects/FIBER/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
    python projects/FIBER/train_net.py --config-file C --num-gpus 2   # 2 processes: GPUs with NCCL, else CPU with gloo

Evaluation results go to the log, to TensorBoard/metrics.json, and to OUTPUT_DIR/results.json as
{dataset_name: {task: {metric: value}}}.
"""
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fiber_d2.config import add_fiber_config
from fiber_d2.data import (
    PromptError,
    VLDatasetMapper,
    build_grounding_test_loader,
    build_grounding_train_loader,
    build_vl_test_loader,
    build_vl_train_loader,
)
from fiber_d2.data.datasets import DatasetFormatError  # importing the package registers the datasets
from fiber_d2.engine import launch
from fiber_d2.engine.coarse_hook import CoarseStageHook
from fiber_d2.evaluation import build_evaluator, save_results_json
from fiber_d2.evaluation.caption import CaptionEvaluator
from fiber_d2.evaluation.itm_scorer import DatasetItmScorer
from fiber_d2.modeling import (  # importing the package registers the models
    FiberCaptionModel,
    FiberCoarseModel,
    FiberGroundingDetector,
    FiberVQAModel,
)
from fiber_d2.solver import build_optimizer


def is_grounding_model(cfg) -> bool:
    """Whether the model reads prompts (FIBER's grounding detector) rather than Detectron2's detection inputs."""
    return cfg.MODEL.META_ARCHITECTURE == FiberGroundingDetector.__name__


# The image-level models and the VLDatasetMapper task of their training data (test data: "retrieval" for the first).
IMAGE_LEVEL_TASKS = {
    FiberCoarseModel.__name__: "pretrain",
    FiberVQAModel.__name__: "vqa",
    FiberCaptionModel.__name__: "caption",
}


def image_level_task(cfg) -> str | None:
    """The VLDatasetMapper task of an image-level model's training data; None for the detectors."""
    return IMAGE_LEVEL_TASKS.get(cfg.MODEL.META_ARCHITECTURE)


def answer_vocabulary(cfg) -> list[str] | None:
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


def setup(args):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fiber_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (FileNotFoundError, DatasetFormatError, PromptError) as e:  # bad data or paths: the message names them
        sys.exit(f"train_net.py: error: {e}")
