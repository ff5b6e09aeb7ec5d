#!/usr/bin/env python
"""Train and evaluate fiber_d2 models with fiber_d2's Trainer (Detectron2's DefaultTrainer; fiber_d2/engine/trainer.py).

    python projects/FIBER/train_net.py --config-file configs/fiber_shapes/fiber_tiny_grounding.yaml
    python projects/FIBER/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
    python projects/FIBER/train_net.py --config-file C --num-gpus 2   # 2 processes: GPUs with NCCL, else CPU with gloo

Your own COCO-format detection data, with no code (see projects/FIBER/configs/custom_coco.yaml):

    python projects/FIBER/train_net.py --config-file C \
        DATASETS.REGISTER_COCO "[['mine_train', 'train.json', 'images/'], ['mine_val', 'val.json', 'images/']]" \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)"

Evaluation results go to the log, to TensorBoard/metrics.json, and to OUTPUT_DIR/results.json as
{dataset_name: {task: {metric: value}}}. A bad config, dataset, prompt, weights file or results file ends in one
line naming it.
"""
import sys

from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import fiber_d2  # noqa: F401  (registers fiber_d2's models and datasets)
from fiber_d2.checkpoint import CheckpointLayoutError, FiberCheckpointer
from fiber_d2.config import ConfigError, load_fiber_config
from fiber_d2.data import PromptError
from fiber_d2.data.datasets import DatasetFormatError
from fiber_d2.data.datasets.from_config import register_datasets_from_config
from fiber_d2.data.image_io import ImageError
from fiber_d2.engine.cli import error_line
from fiber_d2.engine import launch
from fiber_d2.engine.allocator import keep_freed_cpu_memory
from fiber_d2.engine.trainer import Trainer
from fiber_d2.evaluation.results import ResultsFileError

# Errors whose message names what is wrong (config, dataset, image, prompt, weights file, results file): printed in
# one line.
ONE_LINE_ERRORS = (
    ConfigError, FileNotFoundError, DatasetFormatError, ImageError, PromptError, CheckpointLayoutError,
    ResultsFileError,
)


def setup(args):
    cfg = load_fiber_config(args.config_file, args.opts)
    cfg.freeze()
    register_datasets_from_config(cfg)
    default_setup(cfg, args)
    if cfg.KEEP_FREED_CPU_MEMORY:
        keep_freed_cpu_memory()
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fiber_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FiberCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        register_datasets_from_config(load_fiber_config(args.config_file, args.opts))  # fail here, before launching
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ONE_LINE_ERRORS as e:
        sys.exit(f"train_net.py: error: {error_line(e)}")
