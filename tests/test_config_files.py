"""The FIBER-B task configs built on a shared base (Base-FIBER-B-RefExp.yaml, Base-FIBER-B-Coarse.yaml): each child
has the official settings, and siblings differ only where their task or data does."""
from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from fiber_d2.config import add_fiber_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "fiber_b"
# Keys a helper may add to every task config (the data mapper a model reads its datasets with).
PER_MODEL_KEYS = {"INPUT.DATASET_MAPPER_NAME"}


def load(name: str) -> CfgNode:
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


def flatten(node: CfgNode, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(a: str, b: str) -> set[str]:
    flat_a, flat_b = flatten(load(a)), flatten(load(b))
    assert flat_a.keys() == flat_b.keys()
    return {key for key in flat_a if flat_a[key] != flat_b[key]}


@pytest.mark.parametrize(
    "name,train,test,max_iter,steps",
    [
        ("refcoco_finetune.yaml", ("refcoco_train",), ("refcoco_val", "refcoco_testA", "refcoco_testB"), 150000,
         (100000, 133000)),
        ("refcoco+_finetune.yaml", ("refcoco+_train",), ("refcoco+_val", "refcoco+_testA", "refcoco+_testB"), 150000,
         (100000, 133000)),
        ("refcocog_finetune.yaml", ("refcocog_train",), ("refcocog_val", "refcocog_test"), 100000, (67000, 89000)),
    ],
)
def test_refexp_fine_tuning_configs(name, train, test, max_iter, steps):
    cfg = load(name)
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (train, test)
    # 20 epochs at batch 16 (about 7.5k iterations per epoch for RefCOCO/+, 5k for RefCOCOg), lr x0.1 at 2/3 and 8/9.
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.SOLVER.STEPS == (round(max_iter * 2 / 3, -3), round(max_iter * 8 / 9, -3)) == steps
    # Shared (official fine_grained/configs/refcoco*.yaml): from the RefExp pre-trained model, fusion v3, batch 16,
    # AdamW 1e-5 for every part, wd 1e-4, no clipping, no flips; P@k at GIoU 0.5 with every score kept.
    assert cfg.MODEL.META_ARCHITECTURE == "FiberGroundingDetector"
    assert cfg.MODEL.WEIGHTS == "models/fiber_coarse_then_fine_for_refexp.pth"
    assert cfg.MODEL.FIBER.TOKENIZER == "models/roberta-base"
    assert cfg.MODEL.FIBER.FUSION.VERSION == "v3"
    assert (cfg.MODEL.FIBER.HEAD.SCORE_THRESH_TEST, cfg.MODEL.FIBER.HEAD.PRE_NMS_TOPK_TEST) == (0.0, 3000)
    assert cfg.INPUT.RANDOM_FLIP == "none"
    solver = cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.LR_MULTIPLIERS, solver.WEIGHT_DECAY) == (16, 1e-5, (), 1e-4)
    assert (solver.WARMUP_ITERS, solver.CLIP_GRADIENTS.ENABLED, solver.CHECKPOINT_PERIOD) == (1000, False, 5000)
    assert (cfg.TEST.REFEXP_BOX_MATCH, cfg.TEST.DETECTIONS_PER_IMAGE) == ("giou", 100)


def test_refexp_configs_differ_only_in_data_and_schedule():
    data = {"DATASETS.TRAIN", "DATASETS.TEST"}
    assert data <= differing_keys("refcoco_finetune.yaml", "refcoco+_finetune.yaml") <= data | PER_MODEL_KEYS
    schedule = data | {"SOLVER.MAX_ITER", "SOLVER.STEPS"}
    assert schedule <= differing_keys("refcoco_finetune.yaml", "refcocog_finetune.yaml") <= schedule | PER_MODEL_KEYS


@pytest.mark.parametrize("name", ["coarse_vqa.yaml", "coarse_caption.yaml"])
def test_coarse_configs_share_the_coarse_stage_settings(name):
    cfg = load(name)
    fiber = cfg.MODEL.FIBER
    assert cfg.MODEL.WEIGHTS == "models/fiber_pretrain.pth"
    assert fiber.TOKENIZER == "models/roberta-base"
    # The coarse-stage backbone at 576 px: window 576 / 32, fusion v3, the last text layer without its LayerNorm.
    assert (cfg.INPUT.COARSE.IMAGE_SIZE, fiber.SWIN.WINDOW_SIZE) == (576, 576 // 32)
    assert (fiber.FUSION.VERSION, fiber.TEXT.SKIP_FINAL_NORM, fiber.SWIN.UNSHIFT_SINGLE_WINDOW) == ("v3", True, True)
    assert (fiber.TEXT.DROPOUT, fiber.SWIN.OUT_FEATURES) == (0.1, ["res5"])
    coarse = cfg.INPUT.COARSE
    assert (coarse.CROP_SCALE, coarse.RANDOM_FLIP, coarse.MAX_TEXT_LEN) == ((0.5, 1.0), True, 50)
    solver = cfg.SOLVER
    assert (solver.OPTIMIZER, solver.BETAS, solver.IMS_PER_BATCH) == ("ADAMW", (0.9, 0.98), 512)
    assert (solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_BIAS) == (0.01, 0.0, 0.0)
    assert (solver.LR_SCHEDULER_NAME, solver.STEPS, solver.CLIP_GRADIENTS.ENABLED) == ("WarmupCosineLR", (), False)
    assert solver.WARMUP_ITERS == round(solver.MAX_ITER / 10)  # 10% warmup


def test_vqa_config():
    cfg = load("coarse_vqa.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "FiberVQAModel"
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("vqav2_train",), ("vqav2_val",))
    # 10 epochs of the 443,757 VQAv2 train questions at batch 512; lr 2e-5, x50 on the head, x5 on cross-modal parts.
    assert cfg.SOLVER.MAX_ITER == round(10 * 443757 / 512) == 8667
    assert cfg.SOLVER.BASE_LR == 2e-5
    assert cfg.SOLVER.LR_MULTIPLIERS == (("heads\\.vqa\\.", 50.0), ("heads\\.fused\\.|\\.i2t\\.|\\.t2i\\.", 5.0))
    assert (cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT, cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY) == (9, "")


def test_caption_config():
    cfg = load("coarse_caption.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "FiberCaptionModel"
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("coco_karpathy_train",), ("coco_karpathy_test",))
    # 10 epochs of the 566,747 Karpathy train+restval captions at batch 512; lr 5e-5, x5 on the MLM head, the fused
    # text projection it reads (FIBER's cross_modal_text_transform) and t2i.
    assert cfg.SOLVER.MAX_ITER == round(10 * 566747 / 512) == 11069
    assert cfg.SOLVER.BASE_LR == 5e-5
    assert cfg.SOLVER.LR_MULTIPLIERS == (("heads\\.mlm\\.|heads\\.fused\\.|\\.t2i\\.", 5.0),)
    assert (cfg.MODEL.FIBER.CAPTION.BEAM_SIZE, cfg.MODEL.FIBER.CAPTION.MAX_LENGTH) == (5, 50)


def test_coarse_configs_differ_only_in_task():
    task = {
        "MODEL.META_ARCHITECTURE", "DATASETS.TRAIN", "DATASETS.TEST", "SOLVER.BASE_LR", "SOLVER.LR_MULTIPLIERS",
        "SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS",
    }
    differing = differing_keys("coarse_vqa.yaml", "coarse_caption.yaml")
    assert task <= differing <= task | PER_MODEL_KEYS | {"INPUT.COARSE.VQA_MIN_ANSWER_COUNT"}


def test_pre_training_configs_start_from_their_coarse_init():
    assert load("fine_pretrain_goldg_o365.yaml").MODEL.WEIGHTS == "models/fiber_coarse_init.pth"
    assert load("refexp_pretrain_goldg_o365.yaml").MODEL.WEIGHTS == "models/fiber_coarse_init_for_refexp.pth"
    refexp = {"MODEL.WEIGHTS", "MODEL.FIBER.FUSION.VERSION", "SOLVER.WARMUP_ITERS"}
    assert differing_keys("fine_pretrain_goldg_o365.yaml", "refexp_pretrain_goldg_o365.yaml") == refexp
