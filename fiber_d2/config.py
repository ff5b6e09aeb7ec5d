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

    _add_backbone_config(cfg)


def _add_backbone_config(cfg: CN) -> None:
    """MODEL.FIBER.{SWIN,TEXT,FUSION,FREEZE}: the fused backbone (defaults: FIBER-B, Swin-B + RoBERTa-base)."""
    cfg.MODEL.FIBER = CN()

    cfg.MODEL.FIBER.SWIN = CN()
    # Channels of Swin stage 1 (doubled at every stage); Swin-B: 128.
    cfg.MODEL.FIBER.SWIN.EMBED_DIM = 128
    # Blocks per Swin stage; Swin-B: (2, 2, 18, 2).
    cfg.MODEL.FIBER.SWIN.DEPTHS = (2, 2, 18, 2)
    # Attention heads per Swin stage (head dim 32 in Swin-B).
    cfg.MODEL.FIBER.SWIN.NUM_HEADS = (4, 8, 16, 32)
    # Attention window in tokens (FIBER: 12; relative-position tables are resized when a checkpoint differs).
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = 12
    # MLP hidden size as a multiple of the channels.
    cfg.MODEL.FIBER.SWIN.MLP_RATIO = 4.0
    # Stochastic depth rate of the last block (linear from 0); FIBER fine stage: 0.4.
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.2
    # Stage outputs of the backbone (res2..res5 = strides 4..32), each after its own LayerNorm.
    cfg.MODEL.FIBER.SWIN.OUT_FEATURES = ["res3", "res4", "res5"]
    # Local official/timm ImageNet Swin checkpoint (.pth/.safetensors) to start from; "" = random init.
    cfg.MODEL.FIBER.SWIN.WEIGHTS = ""
    # Skip the shift where a stage fits in one window (timm's classification Swin, FIBER's coarse stage).
    cfg.MODEL.FIBER.SWIN.UNSHIFT_SINGLE_WINDOW = False

    cfg.MODEL.FIBER.TEXT = CN()
    # Local Hugging Face RoBERTa directory (config.json + weights); "" = random init from the sizes below.
    cfg.MODEL.FIBER.TEXT.WEIGHTS = ""
    # Vocabulary size (roberta-base: 50265); ignored when TEXT.WEIGHTS is set, as are the sizes below.
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 50265
    # Hidden size of the text encoder.
    cfg.MODEL.FIBER.TEXT.HIDDEN_SIZE = 768
    # Number of text transformer layers.
    cfg.MODEL.FIBER.TEXT.NUM_LAYERS = 12
    # Attention heads per text layer.
    cfg.MODEL.FIBER.TEXT.NUM_HEADS = 12
    # FFN hidden size of the text layers.
    cfg.MODEL.FIBER.TEXT.INTERMEDIATE_SIZE = 3072
    # Position-embedding table size (RoBERTa: 514 = 512 tokens + 2 offset).
    cfg.MODEL.FIBER.TEXT.MAX_POSITIONS = 514
    # Dropout of the text encoder (hidden states and attention probabilities).
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.1
    # Leave out the last text layer's output LayerNorm (FIBER's coarse-stage quirk).
    cfg.MODEL.FIBER.TEXT.SKIP_FINAL_NORM = False

    cfg.MODEL.FIBER.FUSION = CN()
    # Fused steps K: the top K Swin blocks and top K text layers cross-attend (FIBER: 6); 0 = no fusion layers.
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 6
    # "v2" (main fine checkpoints) or "v3" (RefExp checkpoints, coarse stage: a LayerNorm on image-to-text queries).
    cfg.MODEL.FIBER.FUSION.VERSION = "v2"

    # Recompute every Swin block and text layer in the backward pass: less activation memory, ~1/3 more compute.
    cfg.MODEL.FIBER.GRADIENT_CHECKPOINTING = False

    cfg.MODEL.FIBER.FREEZE = CN()
    # Freeze the patch embedding + this many Swin stages (0: none; -1: the whole image encoder with its fusion).
    cfg.MODEL.FIBER.FREEZE.IMAGE_STAGES = 0
    # Freeze the text embeddings + this many text layers (0: none; -1: the whole text encoder with its fusion).
    cfg.MODEL.FIBER.FREEZE.TEXT_LAYERS = 0
