"""fiber_d2's additions to Detectron2's config. Every key has a default and a one-line comment."""
import torch
from detectron2.config import CfgNode as CN


def add_fiber_config(cfg: CN) -> None:
    """Add fiber_d2's config keys (with defaults) to a Detectron2 config, in place."""
    # Detectron2 defaults to "cuda"; fall back to the CPU where there is no GPU (an explicit setting still wins).
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

    # "SGD" (Detectron2's default) or "ADAMW" (FIBER's optimizer in both stages).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2); FIBER's coarse stage uses (0.9, 0.98).
    cfg.SOLVER.BETAS = (0.9, 0.999)

    # File under OUTPUT_DIR where evaluation writes {dataset_name: {task: {metric: value}}} (merged with earlier runs).
    cfg.TEST.RESULTS_FILE = "results.json"
