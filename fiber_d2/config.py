"""fiber_d2's additions to Detectron2's config (every key has a default and a one-line comment), and
`load_fiber_config`, which reads a config file and overrides with one-line errors for the command-line tools."""
from __future__ import annotations

import os
from typing import Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_fiber_config(cfg: CN) -> None:
    """Add fiber_d2's config keys (with defaults) to a Detectron2 config, in place."""
    # Detectron2 defaults to "cuda"; fall back to the CPU where there is no GPU (an explicit setting still wins).
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

    # "SGD" (Detectron2's default) or "ADAMW" (FIBER's optimizer in both stages).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2); FIBER's coarse stage uses (0.9, 0.98).
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # (regex, factor) pairs: a parameter whose name matches a regex (re.search; first match wins) gets lr x factor.
    cfg.SOLVER.LR_MULTIPLIERS = ()
    # Stop training after this many iterations (0: at SOLVER.MAX_ITER) while the lr schedule still spans MAX_ITER, so
    # that model_final.pth is the weights at that point of the longer schedule; a later --resume with a larger value
    # (or 0) goes on along the same schedule.
    cfg.SOLVER.STOP_ITER = 0
    # Autocast dtype of SOLVER.AMP.ENABLED training (fiber_d2.engine.amp.FiberAMPTrainer, CPU or GPU): "auto"
    # (bfloat16 on CPUs and GPUs that support it, else float16 with gradient scaling), "bfloat16" or "float16".
    cfg.SOLVER.AMP.PRECISION = "auto"

    # The data loaders and mapper of the model's inputs (fiber_d2/data/loaders.py): "grounding" (prompts;
    # FiberGroundingDetector), or for the coarse models "coarse_pretrain" (image-text pairs; test sets as retrieval),
    # "coarse_vqa", "coarse_caption", "coarse_text" (captions alone; FiberTextPretrainer), or "detectron2"
    # (Detectron2's own loaders, for its own models).
    cfg.INPUT.DATASET_MAPPER_NAME = "detectron2"
    # COCO-format detection datasets to register, as (name, json_file, image_root) triples ("$DETECTRON2_DATASETS" is
    # expanded); DATASETS.TRAIN / TEST may then name them (evaluator_type "coco").
    cfg.DATASETS.REGISTER_COCO = ()

    # File under OUTPUT_DIR where evaluation writes {dataset_name: {task: {metric: value}}} (merged with earlier runs).
    cfg.TEST.RESULTS_FILE = "results.json"

    # Evaluation: records per inference batch and process (grounding and the coarse models). With
    # MODEL.FIBER.PROMPT.REUSE_LOWER the detector runs an image's lower backbone once for all the records of a batch with
    # that image (referring expressions, captions), and every image at its own padded size; coarse images are all
    # S x S. So the results do not depend on the batch (to rounding).
    cfg.TEST.IMS_PER_BATCH = 1

    # RefExp Precision@k counts a box as a hit at overlap >= 0.5 by "giou" (generalized IoU: MDETR's/FIBER's
    # protocol) or by "iou" (laxer).
    cfg.TEST.REFEXP_BOX_MATCH = "giou"

    # A bad training record (a bad box or span, a missing, empty, corrupt or wrong-size image): "raise" an error naming
    # dataset, file and record, or "skip" it with a warning. Evaluation always raises on an unreadable image.
    cfg.DATASETS.ON_BAD_RECORD = "raise"

    # Coarse models' training: a JSON file {image_id: cluster} (tools/cluster_images.py); each batch then draws its
    # images from one cluster of similar images, so that the in-batch negatives are hard (TAS-B's topic-aware
    # sampling; not in FIBER). "" ($DETECTRON2_DATASETS etc. expanded): random batches. On FIBER-Shapes retrieval it
    # lowered image-to-text recall and did not raise text-to-image recall (docs/EXPERIMENTS.md).
    cfg.DATALOADER.BATCH_CLUSTERS = ""

    # Detector training: > 0 groups each batch by padded size instead of by orientation (ASPECT_RATIO_GROUPING): the
    # sampler draws each image's shortest edge from INPUT.MIN_SIZE_TRAIN (as the resize would) and a batch holds
    # images whose resized height and width, rounded up to this many pixels (the backbone's size divisibility, 32 for
    # Swin), are equal, so a batch is padded only to that multiple (fiber_d2/data/size_groups.py; not in FIBER, whose
    # batches are padded to their largest image). 0: off.
    cfg.DATALOADER.SIZE_GROUPING = 0

    # CPU processes of train_net.py, tools/zoo_demo.py and `tools/benchmark.py train`: glibc's malloc keeps freed
    # memory for later tensors instead of returning it to the system (fiber_d2/engine/allocator.py), so large
    # temporaries do not page-fault on every step; as jemalloc/tcmalloc would. Like CUDNN_BENCHMARK, a process setting.
    cfg.KEEP_FREED_CPU_MEMORY = True

    # On a horizontal flip, swap "left"/"right" in grounding captions (spans kept right); False: never flip those.
    cfg.INPUT.FLIP_SWAP_LEFT_RIGHT = True

    # LVIS datasets: Fixed AP (top 10,000 per category, no per-image cap; MDETR/FIBER) instead of 300 per image.
    cfg.TEST.LVIS_FIXED_AP = False

    # Retrieval with FiberCoarseModel: re-rank each query's top k ITC candidates by the fused model's ITM probability
    # (0: ITC ranking only; FIBER's ITM numbers score every pair, i.e. k >= the number of images and texts).
    cfg.TEST.RETRIEVAL_ITM_TOP_K = 0

    _add_backbone_config(cfg)
    _add_detector_config(cfg)
    _add_coarse_input_config(cfg)
    _add_coarse_config(cfg)
    _add_image_pretraining_config(cfg)


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
    # Absolute position embedding (Swin's `ape`; off in FIBER): G > 0 adds a learnable [C, G, G] grid to the patch
    # embeddings, resized to each image's token grid (G = S / 4 matches S-px images). Without it the image tokens
    # hardly know where they are, which words such as "left of" need. 0: off.
    cfg.MODEL.FIBER.SWIN.APE_GRID = 0

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
    # Leave out the last text layer's output LayerNorm in fused passes (fusion "on": ITM, MLM, VQA), as FIBER's coarse
    # stage does in its fused loop; the unfused text path (ITC) and the caption decoder keep it, as FIBER's do.
    cfg.MODEL.FIBER.TEXT.SKIP_FINAL_NORM = False

    cfg.MODEL.FIBER.FUSION = CN()
    # Fused steps K: the top K Swin blocks and top K text layers cross-attend (FIBER: 6); 0 = no fusion layers.
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 6
    # "v2" (main fine checkpoints) or "v3" (RefExp checkpoints, coarse stage: a LayerNorm on image-to-text queries).
    cfg.MODEL.FIBER.FUSION.VERSION = "v2"
    # P > 0 (a multiple of 4): the fused text layers' cross-attention adds a learned projection (zero at init) of each
    # image token's 2D sinusoidal position code (P features) to its keys and values, so that text can read where
    # objects are ("left of"); not in FIBER, whose image tokens carry only Swin's relative positions. 0 = off.
    cfg.MODEL.FIBER.FUSION.TEXT_READS_POSITIONS = 0

    # Recompute every Swin block and text layer in the backward pass: less activation memory, ~1/3 more compute.
    cfg.MODEL.FIBER.GRADIENT_CHECKPOINTING = False

    cfg.MODEL.FIBER.FREEZE = CN()
    # Freeze the patch embedding + this many Swin stages (0: none; -1: the whole image encoder with its fusion).
    cfg.MODEL.FIBER.FREEZE.IMAGE_STAGES = 0
    # Freeze the text embeddings + this many text layers (0: none; -1: the whole text encoder with its fusion).
    cfg.MODEL.FIBER.FREEZE.TEXT_LAYERS = 0


def _add_detector_config(cfg: CN) -> None:
    """MODEL.FIBER.{TOKENIZER,PROMPT,HEAD}: the grounding detector (defaults: FIBER's fine stage, GLIP's VLDyHead)."""
    # Local tokenizer directory (RoBERTa byte-level BPE, e.g. roberta-base); "$DETECTRON2_DATASETS/..." is expanded.
    cfg.MODEL.FIBER.TOKENIZER = ""
    # Longest prompt in tokens, <s> and </s> included (FIBER: 256); batches are padded to their longest prompt only.
    cfg.MODEL.FIBER.MAX_QUERY_LEN = 256
    # FiberGroundingDetector's inference (evaluation, FiberPredictor): "float32", or autocast to "bfloat16" /
    # "float16" (anchors, box decoding, scores and NMS stay float32).
    cfg.MODEL.FIBER.INFERENCE_DTYPE = "float32"

    cfg.MODEL.FIBER.PROMPT = CN()
    # Text between category names in a detection prompt (GLIP/FIBER: ". ").
    cfg.MODEL.FIBER.PROMPT.SEPARATOR = ". "
    # Category names per prompt at inference; longer vocabularies run chunk by chunk (LVIS: 40); 0 = as many as fit.
    cfg.MODEL.FIBER.PROMPT.CHUNK_SIZE = 40
    # Inference: lower backbone once per image and per prompt, fused part + FPN + head per chunk; False: all per chunk.
    cfg.MODEL.FIBER.PROMPT.REUSE_LOWER = True
    # Inference with REUSE_LOWER: prompt chunks of one image (from every record of the batch with that image) per
    # forward of the fused upper part, FPN and head. 1 was fastest on CPU for FIBER-B at 800x1333 (1.03x the floor
    # against 1.25x with 8, docs/BENCHMARKS.md). FIBER-tiny at 288 px gains from more: the referring expressions
    # of one image, run together, took 0.58x the time per expression with 4 and 0.54x with 16 (1 thread). Try more
    # on a GPU.
    cfg.MODEL.FIBER.PROMPT.CHUNK_BATCH = 1
    # Inference with REUSE_LOWER: prompts whose lower text states stay cached (LRU; train/eval/load empty it); 0: none.
    cfg.MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE = 64
    # Training on detection data: random negative category names added to each image's positives (GLIP: 85).
    cfg.MODEL.FIBER.PROMPT.TRAIN_NEGATIVES = 85
    # Training on detection data: shuffle the order of the names in each prompt.
    cfg.MODEL.FIBER.PROMPT.TRAIN_SHUFFLE = True

    cfg.MODEL.FIBER.HEAD = CN()
    # DyHead layers (scale-, spatial- and task-aware attention) on the FPN levels (FIBER: 6).
    cfg.MODEL.FIBER.HEAD.NUM_CONVS = 6
    # GroupNorm groups after each DyHead convolution.
    cfg.MODEL.FIBER.HEAD.NORM_GROUPS = 16
    # Spatial attention: modulated deformable 3x3 convolutions (DCNv2); False: plain 3x3 convolutions.
    cfg.MODEL.FIBER.HEAD.DEFORMABLE = True
    # Task-aware attention: dynamic ReLU after each DyHead layer.
    cfg.MODEL.FIBER.HEAD.DYRELU = True
    # Prior probability of the alignment logits at init (bias0 = -log((1 - p) / p)).
    cfg.MODEL.FIBER.HEAD.PRIOR_PROB = 0.01
    # Initial log temperature of the alignment logits (divided by exp of it; GLIP/FIBER: 0, learnable).
    cfg.MODEL.FIBER.HEAD.LOG_SCALE_INIT = 0.0
    # Weights (dx, dy, dw, dh) of the anchor-to-box transform (ATSS: 10, 10, 5, 5).
    cfg.MODEL.FIBER.HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # ATSS: candidate anchors per FPN level, the closest by centre distance to each box.
    cfg.MODEL.FIBER.HEAD.ATSS_TOPK = 9
    # Token-alignment focal loss: alpha.
    cfg.MODEL.FIBER.HEAD.FOCAL_ALPHA = 0.25
    # Token-alignment focal loss: gamma.
    cfg.MODEL.FIBER.HEAD.FOCAL_GAMMA = 2.0
    # Weight of the GIoU box loss (FIBER: 2.0).
    cfg.MODEL.FIBER.HEAD.REG_LOSS_WEIGHT = 2.0
    # Inference: candidates need a label score above this (FIBER: 0.05; RefExp: 0.0).
    cfg.MODEL.FIBER.HEAD.SCORE_THRESH_TEST = 0.05
    # Inference: candidates kept per FPN level before NMS (FIBER: 1000; RefExp: 3000).
    cfg.MODEL.FIBER.HEAD.PRE_NMS_TOPK_TEST = 1000
    # Inference: IoU threshold of the per-label NMS.
    cfg.MODEL.FIBER.HEAD.NMS_THRESH_TEST = 0.6


def _add_coarse_input_config(cfg: CN) -> None:
    """INPUT.COARSE: the coarse models' image-text inputs (defaults: FIBER's pre-training, 384x384, 40 tokens)."""
    cfg.INPUT.COARSE = CN()
    # Side of the coarse models' square input images, in pixels (FIBER: 384; VQA 576).
    cfg.INPUT.COARSE.IMAGE_SIZE = 384
    # Side of the input images at inference (evaluation, predictors, ITM re-ranking), in pixels; 0 = IMAGE_SIZE. As
    # Detectron2's MIN_SIZE_TEST next to MIN_SIZE_TRAIN.
    cfg.INPUT.COARSE.TEST_IMAGE_SIZE = 0
    # Training: random resized crop keeps this range of the image's area (1.0, 1.0: plain resize, FIBER's setting).
    cfg.INPUT.COARSE.CROP_SCALE = (0.5, 1.0)
    # Training: flip horizontally with probability 0.5 (captions with "left"/"right" get the words swapped).
    cfg.INPUT.COARSE.RANDOM_FLIP = True
    # Longest caption or question in tokens, <s> and </s> included (FIBER: 40); longer ones are truncated.
    cfg.INPUT.COARSE.MAX_TEXT_LEN = 40
    # MLM: fraction of the (non-special) tokens chosen for prediction; of those 80% <mask>, 10% random, 10% kept.
    cfg.INPUT.COARSE.MLM_PROBABILITY = 0.15
    # VQA: answers given by fewer than this many training questions' annotators are left out of the vocabulary.
    cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT = 1
    # Coarse-stage training: groups of interchangeable words, e.g. [["red", "blue"], ["circle", "star"]]. Each caption
    # with such a word also gives ITM a negative, itself with one of them swapped (NegCLIP-style). Empty: off (FIBER).
    cfg.INPUT.COARSE.ITM_SWAP_WORDS = []
    # Coarse-stage training: asymmetric relations, e.g. ["left of", "above"]. Each caption with one gives ITM a
    # negative, itself with the phrases either side of the relation exchanged (swap_phrase_order); with ITM_SWAP_WORDS
    # too, a caption open to both swaps gets one of them at equal odds. Empty: off (FIBER).
    cfg.INPUT.COARSE.ITM_SWAP_ORDER = []


def _add_coarse_config(cfg: CN) -> None:
    """MODEL.FIBER.COARSE (FiberCoarseModel) and COARSE_STAGE (the hook that runs it inside a detector's training)."""
    cfg.MODEL.FIBER.COARSE = CN()
    # Coarse-stage objectives, any of "itc" (fusion off), "itm" and "mlm" (fusion on).
    cfg.MODEL.FIBER.COARSE.OBJECTIVES = ("itc", "itm", "mlm")
    # Initial ITC temperature (learnable, clamped to [0.001, 1]).
    cfg.MODEL.FIBER.COARSE.ITC_TEMPERATURE = 0.07
    # Detached ITC embeddings kept as extra negatives (FIBER: 4096); 0 disables the queue. At FIBER's batch of 4096 the
    # queue holds one step's embeddings; at the zoo's batch of 16, a 1024 or 4096 queue (64-256 steps old) collapsed
    # the retrieval model within 300 iterations (docs/EXPERIMENTS.md).
    cfg.MODEL.FIBER.COARSE.ITC_QUEUE_SIZE = 0
    # ITM draws its hard negatives from the batch and this many earlier pairs of the same process, kept as raw images
    # and token ids and encoded again by the current model when drawn (FIBER's queue keeps them for that, 4096 at a
    # batch of 4096; PairQueue). Not saved in checkpoints. 0: from the batch alone.
    cfg.MODEL.FIBER.COARSE.ITM_QUEUE_SIZE = 0
    # K > 0 adds loss_itm_rank (not in FIBER's pre-training; ViLT/METER-style retrieval fine-tuning): each caption
    # picks its image among itself and K hard negative images (drawn as ITM's, without replacement) by the ITM
    # log-odds, the ranking that ITM re-ranking does at test time. 0: off.
    cfg.MODEL.FIBER.COARSE.ITM_RANK_NEGATIVES = 0
    # True: with INPUT.COARSE.ITM_SWAP_WORDS or ITM_SWAP_ORDER, each training image's ITC (image-to-text) softmax also
    # holds its process's swapped captions, as extra negatives (NegCLIP; not in FIBER). False: ITM only.
    cfg.MODEL.FIBER.COARSE.ITC_SWAP_NEGATIVES = False
    # Pooled text feature: "first" (the <s> token, FIBER) or "mean" (of the real tokens; for a text encoder trained
    # from scratch, whose <s> output carries almost nothing about the caption at init).
    cfg.MODEL.FIBER.COARSE.TEXT_POOLING = "first"
    # A non-affine batch norm on the pooled ITC features before the L2 norm (not in FIBER, off for its weights). For
    # encoders trained from scratch: without it, ITC collapses every embedding onto one vector (measured).
    cfg.MODEL.FIBER.COARSE.ITC_BATCH_NORM = False
    # Normalise the fused image tokens with the last Swin stage's output LayerNorm before the fused heads (ITM, MLM's
    # image side, VQA) pool them; FIBER pools them raw (False). For a coarse model started from a grounding
    # detector's backbone, which trained its features through that LayerNorm: the raw tokens then share one large
    # component that saturates the tanh pooler, and VQA stays at the majority answer per question type (measured).
    cfg.MODEL.FIBER.COARSE.FUSED_IMAGE_NORM = False

    cfg.COARSE_STAGE = CN()
    # Run the coarse stage (FiberCoarseModel on the detector's backbone) inside a detector's train_net.py run.
    cfg.COARSE_STAGE.ENABLED = False
    # "before": all coarse iterations before the first fine one (FIBER's recipe); "interleave": one coarse
    # iteration after every COARSE_STAGE.PERIOD fine iterations.
    cfg.COARSE_STAGE.MODE = "before"
    # "interleave" mode: fine iterations between two coarse iterations.
    cfg.COARSE_STAGE.PERIOD = 1
    # Image-text datasets of the coarse stage (records with `captions`).
    cfg.COARSE_STAGE.DATASETS = ()
    # Coarse iterations in all.
    cfg.COARSE_STAGE.MAX_ITER = 0
    # Images per coarse batch over all processes.
    cfg.COARSE_STAGE.IMS_PER_BATCH = 8
    # AdamW learning rate of the coarse stage (FIBER: 1e-5 at batch 4096), with linear warmup then cosine decay.
    cfg.COARSE_STAGE.BASE_LR = 1e-4
    # AdamW weight decay of the coarse stage (FIBER: 0.01).
    cfg.COARSE_STAGE.WEIGHT_DECAY = 0.01
    # Coarse iterations of linear warmup (FIBER: 10% of the schedule).
    cfg.COARSE_STAGE.WARMUP_ITERS = 0
    # "before" mode: save a checkpoint every this many coarse iterations (and at the end); resumable.
    cfg.COARSE_STAGE.CHECKPOINT_PERIOD = 1000
    # Write the coarse losses to metrics.json / TensorBoard every this many coarse iterations.
    cfg.COARSE_STAGE.LOG_PERIOD = 20

    # The other coarse models: FiberVQAModel (MODEL.FIBER.VQA) and FiberCaptionModel (MODEL.FIBER.CAPTION).
    cfg.MODEL.FIBER.VQA = CN()
    # JSON list of the answer classes in order; "" = DATASETS.TRAIN's answers (INPUT.COARSE.VQA_MIN_ANSWER_COUNT).
    cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = ""
    cfg.MODEL.FIBER.CAPTION = CN()
    # Captioning inference: beam width (FIBER: 5); 1 = greedy decoding.
    cfg.MODEL.FIBER.CAPTION.BEAM_SIZE = 5
    # Captioning inference: the most tokens generated after <s>, </s> included (FIBER: 50).
    cfg.MODEL.FIBER.CAPTION.MAX_LENGTH = 50
    # Captioning inference: text every caption starts with (BLIP's "a picture of "); "" = none, as FIBER. The
    # prompt stays in the returned caption; MAX_LENGTH counts the tokens after it.
    cfg.MODEL.FIBER.CAPTION.PROMPT = ""


def _add_image_pretraining_config(cfg: CN) -> None:
    """MODEL.FIBER.IMAGE_PRETRAINING: FiberImagePretrainer, the Swin pretrained alone on boxes (not in FIBER)."""
    cfg.MODEL.FIBER.IMAGE_PRETRAINING = CN()
    # Classes of the detection data set whose boxes give the targets (FIBER-Shapes colour+shape: 48).
    cfg.MODEL.FIBER.IMAGE_PRETRAINING.NUM_CLASSES = 48
    # Initial probability of every class at every token (the classifiers' bias), as RetinaNet's prior.
    cfg.MODEL.FIBER.IMAGE_PRETRAINING.PRIOR_PROB = 0.01
    # Weight of the image-level loss (which classes the image holds) against the per-token ones.
    cfg.MODEL.FIBER.IMAGE_PRETRAINING.PRESENCE_LOSS_WEIGHT = 0.2
    # The per-token "cover" target uses each box scaled about its centre by this factor (FCOS-style centre sampling;
    # 1: the whole box, whose corners are background for a star, a cross or a triangle).
    cfg.MODEL.FIBER.IMAGE_PRETRAINING.COVER_SCALE = 0.5


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line naming the file or the override."""


def load_fiber_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's defaults + `add_fiber_config` + `config_file` + `opts` (KEY VALUE pairs), not frozen.

    Raises ConfigError for a missing file (or _BASE_), broken YAML, a file that is not a mapping, an unknown key or a
    type mismatch, in one line (entry points print it instead of a traceback).
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist")
    cfg = get_cfg()
    add_fiber_config(cfg)
    try:
        with open(config_file, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_file}: not valid YAML: {_one_line(e)}") from e
    if not isinstance(content, dict):
        raise ConfigError(f"{config_file}: must hold a mapping of config keys, not {type(content).__name__}")
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:  # in a _BASE_ file
        raise ConfigError(f"{config_file}: not valid YAML: {_one_line(e)}") from e
    except FileNotFoundError as e:  # a _BASE_ file
        raise ConfigError(f"{config_file}: file not found: {e.filename}") from e
    except KeyError as e:  # Detectron2: "Non-existent config key: X"
        raise ConfigError(f"{config_file}: {_one_line(e.args[0] if e.args else e)}") from e
    except (ValueError, AssertionError, TypeError, AttributeError) as e:  # type mismatch; a _BASE_ not a mapping
        raise ConfigError(f"{config_file}: {_one_line(e)}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:  # unknown key, type mismatch, odd length
        raise ConfigError(f"command-line override: {_one_line(e.args[0] if e.args else e)}") from e
    return cfg


def _one_line(message: object) -> str:
    return " ".join(str(message).split())
