"""The FIBER grounding detector end to end on a micro config: build, train, infer, prompts, predictor, converter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from fiber_d2.config import add_fiber_config
from fiber_d2.data.prompts import vocabulary_chunks
from fiber_d2.data.tokenizer import load_tokenizer
from fiber_d2.engine.predictor import FiberPredictor
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling.backbone import FiberFPN

NAMES = ["red circle", "blue square", "green star", "white triangle", "black cross", "yellow hexagon"]


def micro_cfg(tokenizer_dir: str, **overrides):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("fiber_shapes/fiber_tiny_grounding.yaml"))
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 400
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FIBER.HEAD.NUM_CONVS = 1
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def micro_model(tokenizer_dir: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(micro_cfg(tokenizer_dir, **overrides))
    return model


def image(seed: int, height: int = 96, width: int = 128) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def open_gates(model, value: float = 0.5) -> None:
    for name, parameter in model.named_parameters():
        if name.endswith("alpha"):
            parameter.data.fill_(value)


def test_model_builds_through_the_registry_with_p3_to_p7(tokenizer_dir):
    model = micro_model(tokenizer_dir)
    assert type(model).__name__ == "FiberGroundingDetector"
    assert isinstance(model.backbone, FiberFPN)
    shapes = model.backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    ids = torch.tensor([[0, 5, 6, 2]])
    features, text = model.backbone(torch.zeros(1, 3, 100, 130), ids, torch.ones_like(ids))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    assert text.shape == (1, 4, 128)


def _training_batch(tokenizer, seed: int = 0):
    """Two images; prompts of different lengths; boxes aligned with the tokens of one name each."""
    batch = []
    for i, (names, boxes, labels) in enumerate(
        [(NAMES[:3], [[10, 10, 50, 40], [60, 30, 110, 90]], [0, 2]), (NAMES[2:], [[20, 20, 70, 80]], [1])]
    ):
        chunk = vocabulary_chunks(names, tokenizer, 256, 0, ". ")[0]
        instances = Instances((96, 128))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(labels)
        instances.gt_positive_map = chunk.label_token_map[labels]
        batch.append({"image": image(seed + i), "height": 96, "width": 128, "input_ids": chunk.input_ids,
                      "instances": instances})
    return batch


def test_one_batch_overfit_drives_every_loss_down(tokenizer_dir):
    model = micro_model(tokenizer_dir)
    model.train()
    batch = _training_batch(load_tokenizer(tokenizer_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        losses = model(batch)
        assert set(losses) == {"loss_align", "loss_box_giou", "loss_centerness"}
        assert all(torch.isfinite(v) for v in losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    first, last = history[0], history[-1]
    assert last["loss_align"] < 0.3 * first["loss_align"], (first, last)
    assert last["loss_box_giou"] < 0.9 * first["loss_box_giou"], (first, last)
    assert sum(last.values()) < 0.5 * sum(first.values())


def _inference_input(chunks, seed=0, height=96, width=128):
    return {"image": image(seed, height, width), "height": height, "width": width, "prompts": chunks}


def test_chunked_inference_equals_the_single_pass_when_everything_fits(tokenizer_dir):
    model = micro_model(tokenizer_dir, **{"MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    open_gates(model)
    model.eval()
    tokenizer = load_tokenizer(tokenizer_dir)
    single = vocabulary_chunks(NAMES, tokenizer, 256, 0, ". ")
    fits = vocabulary_chunks(NAMES, tokenizer, 256, len(NAMES), ". ")
    assert len(single) == len(fits) == 1
    a = model([_inference_input(single)])[0]["instances"]
    b = model([_inference_input(fits)])[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)

    # Several chunks: each chunk's detections are those of running that chunk alone, with global label ids.
    chunks = vocabulary_chunks(NAMES, tokenizer, 256, 2, ". ")
    assert len(chunks) == 3 and [c.label_ids.tolist() for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    merged = model([_inference_input(chunks)])[0]["instances"]
    alone = [model([_inference_input([chunk])])[0]["instances"] for chunk in chunks]
    expected = Instances.cat(alone)
    order = expected.scores.argsort(descending=True)[: model.max_detections_per_image]
    torch.testing.assert_close(merged.scores, expected.scores[order])
    assert torch.equal(merged.pred_classes, expected.pred_classes[order])
    assert set(merged.pred_classes.tolist()) <= set(range(len(NAMES)))


def test_padding_to_the_longest_prompt_equals_padding_to_256(tokenizer_dir):
    model = micro_model(tokenizer_dir, **{"MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    open_gates(model)
    model.eval()
    tokenizer = load_tokenizer(tokenizer_dir)
    short = vocabulary_chunks(NAMES[:2], tokenizer, 256, 0, ". ")
    long = vocabulary_chunks(NAMES, tokenizer, 256, 0, ". ")
    alone = model([_inference_input(short, seed=3)])[0]["instances"]
    # In a batch with a longer prompt, the short prompt is padded to the longest; the result must not change.
    batched = model([_inference_input(short, seed=3), _inference_input(long, seed=4)])[0]["instances"]
    torch.testing.assert_close(batched.scores, alone.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pred_boxes.tensor, alone.pred_boxes.tensor, atol=1e-3, rtol=1e-5)
    # Padding to 256 tokens, as the official code does.
    ids, mask = model.pad_prompts([short[0].input_ids])
    ids256 = torch.full((1, 256), model.pad_token_id)
    ids256[0, : ids.shape[1]] = ids[0]
    mask256 = torch.zeros((1, 256), dtype=torch.bool)
    mask256[0, : ids.shape[1]] = True
    images = model.preprocess_image([_inference_input(short, seed=3)])
    outputs_short = model.run_head(images, ids, mask)
    outputs_256 = model.run_head(images, ids256, mask256)
    for level_short, level_256 in zip(outputs_short[1], outputs_256[1]):
        torch.testing.assert_close(level_short, level_256[..., : ids.shape[1]], atol=1e-4, rtol=1e-5)
    for a, b in zip(outputs_short[2:], outputs_256[2:]):
        for level_a, level_b in zip(a, b):
            torch.testing.assert_close(level_a, level_b, atol=1e-5, rtol=1e-5)


def test_predictor_detects_prompt_phrases_and_loads_saved_weights(tokenizer_dir, tmp_path):
    model = micro_model(tokenizer_dir, seed=3)
    open_gates(model, 0.25)
    weights = tmp_path / "model.pth"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cfg = micro_cfg(tokenizer_dir, **{"MODEL.WEIGHTS": str(weights), "MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    predictor = FiberPredictor(cfg)
    for name, parameter in model.state_dict().items():
        torch.testing.assert_close(predictor.model.state_dict()[name], parameter, msg=name)
    bgr = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    output = predictor(bgr, "red circle. blue star.")
    assert output["label_names"] == ["red circle", "blue star"]
    instances = output["instances"]
    assert instances.image_size == (120, 90)
    assert len(instances) > 0 and set(instances.pred_classes.tolist()) <= {0, 1}
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 90).all() and (boxes[:, 3] <= 120).all()
    with pytest.raises(ValueError, match="names nothing"):
        predictor(bgr, " . ")


def test_predict_batch_equals_one_image_at_a_time(tokenizer_dir, tmp_path):
    model = micro_model(tokenizer_dir, seed=4)
    open_gates(model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cfg = micro_cfg(tokenizer_dir, **{"MODEL.WEIGHTS": str(tmp_path / "model.pth"),
                                      "MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    predictor = FiberPredictor(cfg)
    rng = np.random.default_rng(1)
    # Resized to 128x96, 41x128, 96x96 and 128x96 again: three padded sizes, the first and last share one.
    sizes = [(120, 90), (64, 200), (100, 100), (240, 180)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    prompt = "red circle. blue star. green square"
    singles = [predictor(image, prompt) for image in images]

    forward = predictor.model.forward
    batch_sizes = []

    def counting_forward(batched_inputs):
        batch_sizes.append(len(batched_inputs))
        return forward(batched_inputs)

    predictor.model.forward = counting_forward
    batch = predictor.predict_batch(images, prompt)
    assert sorted(batch_sizes) == [1, 1, 2]
    assert len(batch) == len(images)
    for single, batched, (height, width) in zip(singles, batch, sizes):
        assert batched["label_names"] == single["label_names"] == ["red circle", "blue star", "green square"]
        a, b = single["instances"], batched["instances"]
        assert b.image_size == (height, width)
        assert len(a) == len(b) > 0
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(b.pred_classes, a.pred_classes)
    assert predictor.predict_batch([], prompt) == []
    with pytest.raises(ValueError, match=r"image 1: expected an array \[H, W, 3\]"):
        predictor.predict_batch([images[0], images[1][:, :, 0]], prompt)


def official_head_state(model) -> dict[str, torch.Tensor]:
    """The official `rpn.head.*` keys of our head (GLIP's VLDyHead names), built by the inverse of the converter."""
    out = {}
    for name, tensor in model.head.state_dict().items():
        official = name.replace("tower.layers.", "dyhead_tower.")
        official = official.replace("text_projection", "dot_product_projection_text")
        official = official.replace(".convs.", ".DyConv.").replace(".norm.", ".bn.")
        official = official.replace("scale_attention.", "AttnConv.").replace("dyrelu.", "relu.")
        out[f"rpn.head.{official}"] = tensor.detach().clone()
    out["rpn.head.cls_logits.weight"] = torch.zeros(80, 32, 1, 1)
    out["rpn.head.cls_logits.bias"] = torch.zeros(80)
    return out


def test_official_head_keys_convert_and_load_into_the_detector(tokenizer_dir, tmp_path):
    from test_checkpoint_conversion import official_fine_model

    from fiber_d2.checkpoint.fiber_official import DROP_CLASS_HEAD, convert_official_state_dict

    source = micro_model(tokenizer_dir, seed=5)
    open_gates(source, 0.3)
    official = {**official_fine_model(source), **{f"module.{k}": v for k, v in official_head_state(source).items()}}
    assert any(".DyConv.2.bn.weight" in k for k in official) and any(".relu.fc.2.bias" in k for k in official)
    report = convert_official_state_dict(official, stage="fine")
    assert report.unmapped == []
    assert report.dropped[DROP_CLASS_HEAD] == ["rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"]
    path = tmp_path / "converted.pth"
    torch.save({"model": report.state_dict}, path)
    target = micro_model(tokenizer_dir, seed=6)
    incompatible = target.load_state_dict(torch.load(path)["model"], strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor, msg=name)
