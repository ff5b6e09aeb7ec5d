"""FiberImagePretrainer: per-token targets on hand-made boxes, the losses' values, every trainable parameter trained,
and its checkpoint starting a FiberVQAModel through MODEL.WEIGHTS with every backbone key used."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from fiber_d2.checkpoint import FiberCheckpointer
from fiber_d2.config import add_fiber_config
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling import FiberImagePretrainer
from fiber_d2.modeling.image_pretraining import token_targets


pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_targets_cover_and_centre_cells():
    # Grid 4 x 4 of 8-pixel cells (centres at 4, 12, 20, 28). Box 0 (class 2) covers x 0..14, y 10..30 -> columns 0, 1
    # and rows 1, 2, 3; its centre (7, 20) is in cell (row 2, column 0). Box 1 (class 0): a 2-pixel box around
    # (30, 2), no cell centre inside.
    boxes = torch.tensor([[0.0, 10.0, 14.0, 30.0], [29.0, 1.0, 31.0, 3.0]])
    cover, centre = token_targets(boxes, torch.tensor([2, 0]), 3, (4, 4), 8)
    expected = torch.zeros(3, 4, 4)
    expected[2, 1:4, 0:2] = 1
    assert torch.equal(cover, expected)  # box 1 contains no cell centre
    expected_centre = torch.zeros(3, 4, 4)
    expected_centre[2, 2, 0] = 1
    expected_centre[0, 0, 3] = 1
    assert torch.equal(centre, expected_centre)
    empty_cover, empty_centre = token_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, (2, 2), 8)
    assert empty_cover.shape == empty_centre.shape == (3, 2, 2) and not empty_cover.any() and not empty_centre.any()


def test_cover_scale_shrinks_boxes_about_their_centres():
    # Box x 0..32, y 0..16 scaled by 0.5 -> x 8..24, y 4..12: cell centres 12, 20 in x and 4, 12 in y.
    cover, centre = token_targets(torch.tensor([[0.0, 0.0, 32.0, 16.0]]), torch.tensor([0]), 1, (4, 4), 8, 0.5)
    expected = torch.zeros(1, 4, 4)
    expected[0, 0:2, 1:3] = 1
    assert torch.equal(cover, expected)
    assert centre[0].nonzero().tolist() == [[1, 2]]  # the centre (16, 8): row 1, column 2


def test_two_boxes_of_one_class_overlap_without_exceeding_one():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]])
    cover, _ = token_targets(boxes, torch.tensor([1, 1]), 2, (4, 4), 8)
    assert cover.max() == 1 and cover[1, 1, 1] == 1 and cover[1].sum() == 4 + 9 - 1


def micro_cfg():
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "FiberImagePretrainer"
    cfg.MODEL.FIBER.IMAGE_PRETRAINING.NUM_CLASSES = 4
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def inputs():
    generator = torch.Generator().manual_seed(0)
    first = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0]])), gt_classes=torch.tensor([3]))
    second = Instances((64, 96), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    return [
        {"image": torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8), "instances": first},
        {"image": torch.randint(0, 256, (3, 64, 96), generator=generator, dtype=torch.uint8), "instances": second},
    ]


def test_losses_equal_their_definition_and_train_every_image_parameter():
    torch.manual_seed(0)
    model = build_model(micro_cfg())
    assert isinstance(model, FiberImagePretrainer)
    model.train()
    batch = inputs()
    losses = model(batch)
    # Recompute from the model's own logits (padded batch 64 x 96; stages res3, res4, res5 at strides 8, 16, 32).
    images = torch.zeros(2, 3, 64, 96)
    for i, x in enumerate(batch):
        images[i, :, :, : x["image"].shape[2]] = (x["image"].float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        dense, presence = model.logits(images)
    present = torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]])
    assert losses["loss_presence"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(presence, present).item() * 4 * 0.2, rel=1e-5
    )
    expected_cover = expected_centre = 0.0
    for name, stride in (("res3", 8), ("res4", 16), ("res5", 32)):
        height, width = dense[name].shape[2:]
        assert (height, width) == (64 // stride, 96 // stride)
        cover, centre = torch.zeros(2, 4, height, width), torch.zeros(2, 4, height, width)
        # The box (4, 4, 30, 30) scaled by COVER_SCALE 0.5 about its centre (17, 17) is (10.5, 10.5, 23.5, 23.5): it
        # covers the cells whose centres lie in [10.5, 23.5]; the centre is in one cell.
        cells = [i for i in range(max(height, width)) if 10.5 <= (i + 0.5) * stride <= 23.5]
        if cells:  # none at stride 32: the object only has a centre target there
            cover[0, 3, cells[0] : cells[-1] + 1, cells[0] : cells[-1] + 1] = 1
        centre[0, 3, 17 // stride, 17 // stride] = 1
        expected_cover += F.binary_cross_entropy_with_logits(dense[name][:, :4], cover).item() * 4
        expected_centre += F.binary_cross_entropy_with_logits(dense[name][:, 4:], centre).item() * 4
    assert losses["loss_cover"].item() == pytest.approx(expected_cover, rel=1e-5)
    assert losses["loss_centre"].item() == pytest.approx(expected_centre, rel=1e-5)
    # At init every logit is near the prior's (p = 0.01), so a negative costs about -log(0.99) per class and token.
    assert 3 * 4 * -math.log(0.99) < losses["loss_cover"].item() < 3 * 4 * -math.log(0.99) + 3 * 4 * math.log(100)
    sum(losses.values()).backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(name.startswith(("backbone.image.", "classifiers.")) and ".i2t." not in name for name in trainable)
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()
    with torch.no_grad():
        scores = model(batch)
    assert len(scores) == 2 and scores[0]["class_scores"].shape == (4,)
    assert torch.allclose(scores[0]["class_scores"], torch.sigmoid(presence[0]), atol=1e-5)


def test_checkpoint_starts_a_vqa_model_with_every_backbone_key(tmp_path):
    model = build_model(micro_cfg())
    FiberCheckpointer(model, save_dir=str(tmp_path)).save("pretrained")
    cfg = micro_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FiberVQAModel"
    cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = str(tmp_path / "answers.json")
    (tmp_path / "answers.json").write_text('["yes", "no"]')
    cfg.MODEL.FIBER.SWIN.OUT_FEATURES = ["res5"]
    vqa = build_model(cfg)
    FiberCheckpointer(vqa).load(str(tmp_path / "pretrained.pth"))  # as MODEL.WEIGHTS is loaded
    state = torch.load(tmp_path / "pretrained.pth", weights_only=True)["model"]
    own = vqa.state_dict()
    backbone_keys = [key for key in own if key.startswith("backbone.")]
    assert backbone_keys and all(key in state for key in backbone_keys)  # nothing of the backbone left at its init
    assert all(torch.equal(own[key], state[key]) for key in backbone_keys)
    qkv = "backbone.image.layers.2.blocks.0.attn.qkv.weight"
    assert torch.equal(vqa.state_dict()[qkv], model.state_dict()[qkv])
