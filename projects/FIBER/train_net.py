#!/usr/bin/env python
"""Train and evaluate fiber_d2 models with Detectron2's DefaultTrainer.

    python projects/FIBER/train_net.py --config-file configs/fiber_shapes/fiber_tiny_grounding.yaml
    python projects/FIBER/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
    python projects/FIBER/train_net.py --config-file C --num-gpus 2   # 2 processes: GPUs with NCCL, else CPU with gloo

Evaluation results go to the log, to TensorBoard/metrics.json, and to OUTPUT_DIR/results.json as
{dataset_name: {task: {metric: value}}}.
"""
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fiber_d2.config import add_fiber_config
from fiber_d2.data import PromptError
from fiber_d2.data.datasets import DatasetFormatError  # importing the package registers the datasets
from fiber_d2.engine import launch
from fiber_d2.engine.trainer import Trainer


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
