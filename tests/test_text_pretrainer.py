"""FiberTextPretrainer: MLM on texts alone (the stand-in for a pretrained RoBERTa), its text-only mapper task, and its
checkpoint starting the coarse stage with the image side passed through."""
from __future__ import annotations

import random

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from fiber_d2.config import add_fiber_config
from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
from fiber_d2.data.tokenizer import load_tokenizer
from fiber_d2.model_zoo import get_config_file
from fiber_d2.solver import build_optimizer

CAPTIONS = ["a red circle left of a blue star", "there are two green squares", "a picture of a white cross"]
pytestmark = pytest.mark.usefixtures("one_thread")


def micro_cfg(tokenizer_dir: str, meta_architecture: str = "FiberTextPretrainer"):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("fiber_shapes/zoo/text_pretraining.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 400  # conftest's tokenizer_dir
    return cfg


def test_text_task_maps_captions_alone_without_reading_the_image(tokenizer_dir):
    cfg = micro_cfg(tokenizer_dir)
    mapper = CoarseDatasetMapper(cfg, True, task="text")
    random.seed(0)
    # the file does not exist: the text task never reads it
    out = mapper({"file_name": "/nonexistent.jpg", "image_id": 7, "captions": CAPTIONS})
    assert set(out) == {"image_id", "caption", "input_ids", "mlm_input_ids", "mlm_labels"}
    tokenizer = load_tokenizer(tokenizer_dir)
    assert out["image_id"] == 7 and out["caption"] in CAPTIONS
    assert out["input_ids"].tolist() == tokenizer(out["caption"])["input_ids"]
    chosen = out["mlm_labels"] != -100
    assert torch.equal(out["mlm_labels"][chosen], out["input_ids"][chosen])
    assert torch.equal(out["mlm_input_ids"][~chosen], out["input_ids"][~chosen])
    with pytest.raises(ValueError, match="no captions"):
        mapper({"file_name": "x.jpg", "image_id": 8, "captions": []})
    with pytest.raises(ValueError, match="no inference output"):
        CoarseDatasetMapper(cfg, False, task="text")


def _batch(mapper, count: int) -> list[dict]:
    return [mapper({"file_name": "x.jpg", "image_id": i, "captions": [CAPTIONS[i % 3]]}) for i in range(count)]


def test_text_pretrainer_learns_the_masked_words_and_leaves_the_image_side_alone(tokenizer_dir):
    cfg = micro_cfg(tokenizer_dir)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.MODEL.FIBER.COARSE.TEXT_POOLING = "mean"
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = build_optimizer(cfg, model)
    mapper = CoarseDatasetMapper(cfg, True, task="text")
    random.seed(0)
    losses = []
    for _ in range(60):
        loss = model(_batch(mapper, 12))["loss_mlm"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # three captions only: the masked words become predictable from their context
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    after = model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed and all(
        name.startswith(("backbone.text.", "heads.mlm.", "heads.fused.text_transform.")) for name in changed
    ), sorted(changed)[:5]
    assert not any(".t2i." in name for name in changed)  # the text side's cross-attentions are not used
    with pytest.raises(NotImplementedError, match="only trains"):
        model.eval()(_batch(mapper, 1))


def test_its_checkpoint_loads_into_the_coarse_model_with_only_the_itc_queue_missing(tokenizer_dir):
    text = build_model(micro_cfg(tokenizer_dir)).state_dict()
    coarse = build_model(micro_cfg(tokenizer_dir, "FiberCoarseModel"))
    incompatible = coarse.load_state_dict(text, strict=False)
    assert incompatible.unexpected_keys == []
    assert incompatible.missing_keys and all(key.startswith("queue.") for key in incompatible.missing_keys)
