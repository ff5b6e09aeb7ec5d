"""The coarse-stage models on a converted official checkpoint against the official computation, in float64.

An official coarse state dict (tests/official_fiber_layout.py) is converted and loaded into FiberCoarseModel and
FiberVQAModel; tests/official_fiber_reference.py runs FIBER's `infer` on the official keys. The coarse settings
(v3 query LayerNorm, last text LayerNorm skipped in the fused loop, single-window stages unshifted) are on, every
parameter (LayerNorms included) is randomised and the fusion gates are open, so the ITC embeddings, ITM / MLM / VQA
logits and the MLM loss agree to float64 round-off only if every point of FIBER's coarse path is followed: which
Swin LayerNorm each path applies, where the text's last LayerNorm is skipped, what the MLM head reads, its eps.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from fiber_d2.checkpoint.fiber_official import convert_official_state_dict
from fiber_d2.config import add_fiber_config
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling import FiberCoarseModel, FiberVQAModel
from official_fiber_layout import official_coarse_model
from official_fiber_reference import official_coarse_forward

ANSWERS = ["yes", "no", "two"]
TOLERANCE = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: one intra-op thread is faster, and steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def coarse_cfg():
    """FIBER-tiny with the coarse stage's settings; window 2 so that 64 px images give grids 16, 8, 4, 2 (the last
    one window, unshifted), as the official fixed-resolution Swin needs."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    fiber = cfg.MODEL.FIBER
    fiber.SWIN.WINDOW_SIZE = 2
    fiber.SWIN.DROP_PATH_RATE = 0.0
    fiber.SWIN.OUT_FEATURES = ["res5"]
    fiber.SWIN.UNSHIFT_SINGLE_WINDOW = True
    fiber.TEXT.DROPOUT = 0.0
    fiber.TEXT.SKIP_FINAL_NORM = True
    fiber.FUSION.VERSION = "v3"
    fiber.COARSE.ITC_QUEUE_SIZE = 0
    return cfg


@pytest.fixture(scope="module")
def official():
    """An official coarse state dict (float64) of a randomised model with open gates."""
    torch.manual_seed(0)
    source = FiberVQAModel(coarse_cfg(), answers=ANSWERS)
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if name.endswith(".alpha"):
                parameter.uniform_(0.5, 1.0)
            else:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return {key: value.double() for key, value in official_coarse_model(source).items()}


def converted(model, official):
    """`model` in float64 with the converted official weights (only its own ITC queue state is not in them);
    returns the converted keys it does not have."""
    report = convert_official_state_dict(official)
    assert report.unmapped == []
    missing, unexpected = model.double().load_state_dict(report.state_dict, strict=False)
    assert all(key.startswith("queue.") for key in missing)
    return unexpected


def batch():
    """Two uint8 64 x 64 images, two token sequences (the second 3 tokens shorter), the masked copy and MLM labels."""
    generator = torch.Generator().manual_seed(5)
    ids = [torch.randint(3, 1000, (length,), generator=generator) for length in (8, 5)]
    inputs = []
    for i, sequence in enumerate(ids):
        masked, labels = sequence.clone(), torch.full_like(sequence, -100)
        masked[2], labels[2] = 4, sequence[2]
        inputs.append(
            {
                "image": torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8),
                "image_id": i,
                "question_id": i,
                "input_ids": sequence,
                "mlm_input_ids": masked,
                "mlm_labels": labels,
            }
        )
    return inputs


def reference(model, official, inputs, ids_key="input_ids"):
    fiber = coarse_cfg().MODEL.FIBER
    ids, mask = model.pad_texts([x[ids_key] for x in inputs])
    return official_coarse_forward(
        official,
        model.preprocess_images(inputs),
        ids,
        mask,
        depths=fiber.SWIN.DEPTHS,
        heads=fiber.SWIN.NUM_HEADS,
        window=fiber.SWIN.WINDOW_SIZE,
        text_layers=fiber.TEXT.NUM_LAYERS,
        text_heads=fiber.TEXT.NUM_HEADS,
        num_fused=fiber.FUSION.NUM_LAYERS,
    )


def test_coarse_model_equals_the_official_itc_itm_and_mlm(official):
    model = FiberCoarseModel(coarse_cfg())
    unexpected = converted(model, official)
    assert sorted(unexpected) == sorted(f"heads.vqa.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias"))
    inputs = batch()
    expected = reference(model, official, inputs)
    model.eval()
    images = model.preprocess_images(inputs)
    ids, mask = model.pad_texts([x["input_ids"] for x in inputs])
    with torch.no_grad():
        image_embedding, text_embedding = model.encode_unfused(images, ids, mask)
        torch.testing.assert_close(image_embedding, expected["itc_image"], **TOLERANCE)
        torch.testing.assert_close(text_embedding, expected["itc_text"], **TOLERANCE)
        torch.testing.assert_close(model.match_logits(images, ids, mask), expected["itm_logits"], **TOLERANCE)
        probability = expected["itm_logits"].softmax(-1)[:, 1].float()  # itm_probability works in float32
        torch.testing.assert_close(model.match_probability(images, ids, mask), probability, atol=1e-7, rtol=0)
        lower = model.backbone.encode_image_lower(images), model.backbone.encode_text_lower(ids, mask)
        _, text = model.fused_tokens(*lower)
        torch.testing.assert_close(model.heads.mlm_logits(text), expected["mlm_logits"], **TOLERANCE)

    # The training forward's MLM loss: CE of the official logits of the masked text at the masked positions.
    masked = reference(model, official, inputs, ids_key="mlm_input_ids")["mlm_logits"]
    labels, _ = model.pad_texts([x["mlm_labels"] for x in inputs], fill=-100)
    with torch.no_grad():
        loss = model.train()(inputs)["loss_mlm"]
    expected_loss = F.cross_entropy(masked.flatten(0, 1), labels.flatten()).float()  # mlm_loss works in float32
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-6)


def test_vqa_model_equals_the_official_vqa_logits(official):
    model = FiberVQAModel(coarse_cfg(), answers=ANSWERS)
    assert converted(model, official) == []
    inputs = batch()
    expected = reference(model, official, inputs)
    with torch.no_grad():
        logits = model.eval().answer_logits(inputs)
    torch.testing.assert_close(logits, expected["vqa_logits"], **TOLERANCE)
    # The heads' LayerNorm eps: FIBER's (1e-12 in the MLM head, PyTorch's 1e-5 in the VQA classifier).
    assert model.heads.mlm.layer_norm.eps == 1e-12 and model.heads.vqa[1].eps == 1e-5
