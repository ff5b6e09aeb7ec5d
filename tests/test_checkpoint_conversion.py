"""Official FIBER checkpoints -> fiber_d2 names (checkpoint/fiber_official.py, tools/convert_fiber_checkpoint.py).

The official-layout checkpoints are written from scaled-down models (configs/backbone/FIBER-tiny.yaml) by
tests/official_fiber_layout.py (the official names written out by hand, plus the official extras), with `model_ema`
and optimizer state added here. Every parameter is randomised and the fusion gates are non-zero, so a wrong rename
cannot go unnoticed.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from torch import nn

from fiber_d2.checkpoint import CheckpointLayoutError
from fiber_d2.checkpoint.fiber_official import (
    DROP_ANCHORS,
    DROP_ATTN_MASK,
    DROP_CROSS_NORM,
    DROP_INDEX,
    DROP_POOLER,
    DROP_QUEUES,
    DROP_RANK_OUTPUT,
    DROP_TEXT_BUFFERS,
    DROP_UNFUSED_ALPHA,
    convert_official_state_dict,
)
from fiber_d2.checkpoint.io import load_checkpoint_file
from fiber_d2.config import add_fiber_config
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling import FiberBackbone, FiberCoarseModel
from fiber_d2.modeling.coarse.base import build_coarse_heads
from official_fiber_layout import official_coarse_model, official_fine_model

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_fiber_checkpoint.py"
FPN_CHANNELS = 32

_spec = importlib.util.spec_from_file_location("convert_fiber_checkpoint", TOOL)
convert_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_tool)


def backbone_cfg(version="v2", coarse=False):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    fiber = cfg.MODEL.FIBER
    fiber.TEXT.DROPOUT = 0.0
    fiber.FUSION.VERSION = version
    if coarse:  # the coarse model: query LayerNorm (as v3), last text LN skipped, only the final image output
        fiber.FUSION.VERSION = "v3"
        fiber.TEXT.SKIP_FINAL_NORM = True
        fiber.SWIN.UNSHIFT_SINGLE_WINDOW = True
        fiber.SWIN.OUT_FEATURES = ["res5"]
    return cfg


class FineModel(nn.Module):
    """A Detectron2 detector's backbone: FPN (P3-P7) over FiberBackbone."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = FPN(
            bottom_up=FiberBackbone(cfg),
            in_features=["res3", "res4", "res5"],
            out_channels=FPN_CHANNELS,
            top_block=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS, "p5"),
        )

    def encode(self, images, ids, mask):
        return self.backbone.bottom_up(images, ids, mask)


NUM_ANSWERS = 3


class CoarseModel(nn.Module):
    """The coarse models' layout (FiberCoarseModel / FiberVQAModel): FiberBackbone + CoarseHeads, here with the
    VQA classifier too, sized like the official ones (text 768 -> 128, image 1024 -> 256)."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = FiberBackbone(cfg)
        self.heads = build_coarse_heads(cfg, self.backbone, num_answers=NUM_ANSWERS)

    def encode(self, images, ids, mask):
        return self.backbone(images, ids, mask)


def build(model_class, cfg, seed):
    """A model in eval mode with every parameter randomised and the fusion gates in [0.5, 1]."""
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".alpha"):
                parameter.uniform_(0.5, 1.0)
            else:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return model




def fine_checkpoint(model, ema_model=None, extra=None):
    """The file layout of maskrcnn_benchmark's Checkpointer."""
    state = official_fine_model(model)
    state.update(extra or {})
    checkpoint = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}, "iteration": 2500}
    if ema_model is not None:
        checkpoint["model_ema"] = official_fine_model(ema_model)
    return checkpoint


def inputs():
    """Two images [2, 3, 32, 64] and two prompts of 7 tokens (the second padded after 5)."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 32, 64, generator=generator)
    ids = torch.randint(3, 1000, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return images, ids, mask


def load_with_detectron2(model, path):
    """Load `path` into `model` with DetectionCheckpointer; assert no missing, unexpected or mis-shaped key."""
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(path)))
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []


def assert_same_model(loaded, source):
    """Identical state dicts, and identical fused outputs (gates != 0) on the same input."""
    expected = source.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert different == []
    gates = [p for name, p in loaded.named_parameters() if name.endswith(".alpha")]
    assert gates and all(gate.item() != 0.0 for gate in gates)
    with torch.no_grad():
        loaded_images, loaded_text = loaded.encode(*inputs())
        source_images, source_text = source.encode(*inputs())
    assert loaded_images.keys() == source_images.keys()
    for name in source_images:
        torch.testing.assert_close(loaded_images[name], source_images[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded_text, source_text, atol=1e-6, rtol=0)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These models are tiny: one intra-op thread is faster, and steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fine_source():
    return build(FineModel, backbone_cfg(), seed=0)


@pytest.fixture(scope="module")
def fine_ema():
    return build(FineModel, backbone_cfg(), seed=1)


@pytest.fixture(scope="module")
def fine_file(tmp_path_factory, fine_source, fine_ema):
    path = tmp_path_factory.mktemp("official") / "fiber_coarse_then_fine.pth"
    torch.save(fine_checkpoint(fine_source, fine_ema), path)
    return path


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_fine_cli_converts_and_detectron2_loads_identical_weights(fine_file, fine_source, tmp_path):
    output = tmp_path / "fiber_fine_d2.pth"
    proc = run_cli(fine_file, output)
    assert proc.returncode == 0, proc.stderr
    assert "fine FIBER checkpoint" in proc.stdout and "0 unmapped" in proc.stdout
    for reason in (DROP_INDEX, DROP_TEXT_BUFFERS, DROP_ANCHORS):
        assert reason in proc.stdout
    saved = load_checkpoint_file(str(output))  # weights_only: tensors and a string only
    assert saved["__author__"] == "fiber_d2 convert_fiber_checkpoint"
    assert saved["model"]["backbone.bottom_up.text.t2i.3.alpha"].shape == (1,)
    assert {"backbone.fpn_lateral3.weight", "backbone.fpn_output5.bias", "backbone.top_block.p7.weight"} <= set(
        saved["model"]
    )
    loaded = build(FineModel, backbone_cfg(), seed=7)
    load_with_detectron2(loaded, output)
    assert_same_model(loaded, fine_source)


def test_ema_flag_converts_model_ema(fine_file, fine_ema, fine_source, tmp_path, capsys):
    output = tmp_path / "ema.pth"
    assert convert_tool.main([str(fine_file), str(output), "--ema"]) == 0
    loaded = build(FineModel, backbone_cfg(), seed=7)
    load_with_detectron2(loaded, output)
    assert_same_model(loaded, fine_ema)
    assert not torch.equal(loaded.backbone.fpn_lateral3.weight, fine_source.backbone.fpn_lateral3.weight)

    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": official_fine_model(fine_source), "epoch": 1}, lightning)
    capsys.readouterr()
    assert convert_tool.main([str(lightning), str(tmp_path / "none.pth"), "--ema"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model_ema" in error and "state_dict" in error and "epoch" in error
    assert not (tmp_path / "none.pth").exists()


def test_unmapped_keys_refused_unless_allow_partial(fine_source, tmp_path, capsys):
    unmapped = ["rpn.head.made_up.weight", "rpn.head.dyhead_tower.0.made_up", "fusion_backbone.made_up"]
    extra = {f"module.{key}": torch.zeros(2, 2) for key in unmapped}
    source = tmp_path / "with_head.pth"
    torch.save(fine_checkpoint(fine_source, extra=extra), source)
    output = tmp_path / "out.pth"

    proc = run_cli(source, output, "--stage", "fine")
    assert proc.returncode == 2
    assert "rpn.head.made_up.weight" in proc.stderr and "--allow-partial" in proc.stderr
    assert proc.stderr.startswith("convert_fiber_checkpoint.py: error: ") and proc.stderr.count("\n") == 1
    assert all(key in proc.stdout for key in unmapped)  # the report names every unmapped key
    assert sorted(os.listdir(tmp_path)) == ["with_head.pth"]  # no output, no temporary file

    assert convert_tool.main([str(source), str(output), "--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert all(key in out for key in unmapped), out
    written = load_checkpoint_file(str(output))["model"]
    assert written.keys() == fine_source.state_dict().keys()


def test_function_reports_unknown_head_keys_and_drops_anchors(fine_source):
    state = official_fine_model(fine_source)
    state["module.rpn.head.bias1"] = torch.zeros(1)
    state["module.rpn.head.scales.0.scale"] = torch.ones(1)
    report = convert_official_state_dict(state, stage="auto")
    assert report.stage == "fine"
    assert report.unmapped == ["rpn.head.bias1"]
    assert report.state_dict["head.scales.0.scale"] is state["module.rpn.head.scales.0.scale"]
    assert report.dropped[DROP_ANCHORS] == [f"rpn.anchor_generator.cell_anchors.{level}" for level in range(5)]
    norm = state["module.fusion_backbone.backbone.body.norm1.weight"]
    assert report.state_dict["backbone.bottom_up.image.out_norms.res3.weight"] is norm
    text = "module.fusion_backbone.language_backbone.body.model."
    key = state[text + "encoder.layer.2.crossattention_t2i.self.key.weight"]
    assert report.state_dict["backbone.bottom_up.text.t2i.2.key.weight"] is key
    inner = state["module.fusion_backbone.backbone.fpn.fpn_inner4.weight"]
    assert report.state_dict["backbone.fpn_lateral5.weight"] is inner


def test_wrong_layout_names_its_first_keys(fine_source, tmp_path, capsys):
    resnet = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}}, resnet)
    assert convert_tool.main([str(resnet), str(tmp_path / "out.pth")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("convert_fiber_checkpoint.py: error: ") and error.count("\n") == 1
    assert "conv1.weight" in error and "fusion_backbone." in error
    assert not (tmp_path / "out.pth").exists()

    fine_state = official_fine_model(fine_source)
    with pytest.raises(CheckpointLayoutError, match="not a coarse FIBER checkpoint.*fusion_backbone"):
        convert_official_state_dict(fine_state, stage="coarse")
    with pytest.raises(CheckpointLayoutError, match="mixes fine"):
        convert_official_state_dict({**fine_state, "vit_model.norm.weight": torch.zeros(1)})
    with pytest.raises(CheckpointLayoutError, match="both with and without"):
        convert_official_state_dict({**fine_state, "rpn.anchor_generator.cell_anchors.0": torch.zeros(1)})


def test_pickled_code_is_never_run(tmp_path, capsys):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"fusion_backbone.x": Payload()}}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointLayoutError, match="weights_only"):
        load_checkpoint_file(str(evil))
    # The converter reads metadata through inert stand-ins; a stand-in among the weights is refused by name.
    assert convert_tool.main([str(evil), str(tmp_path / "out.pth")]) == 1
    assert "non-tensor entries: fusion_backbone.x" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


class LightningStyleHyperParameters(dict):
    """A dict subclass in a checkpoint's metadata, as Lightning/sacred containers are."""


def test_metadata_classes_load_as_inert_stand_ins(fine_source, fine_ema, tmp_path):
    hyper_parameters = LightningStyleHyperParameters(image_size=384)
    hyper_parameters.frozen = True
    path = tmp_path / "with_metadata.pth"
    torch.save({**fine_checkpoint(fine_source, fine_ema), "hyper_parameters": hyper_parameters}, path)
    with pytest.raises(CheckpointLayoutError):
        load_checkpoint_file(str(path))
    loaded = load_checkpoint_file(str(path), stand_in_unknown_globals=True)
    assert dict(loaded["hyper_parameters"]) == {"image_size": 384}
    assert loaded["hyper_parameters"].pickled_state == {"frozen": True}
    assert loaded["hyper_parameters"].pickled_name.endswith("LightningStyleHyperParameters")
    assert convert_tool.main([str(path), str(tmp_path / "out.pth"), "--allow-partial"]) == 0


def test_refuses_to_overwrite_input_and_bad_outputs(fine_file, tmp_path, capsys):
    copy = tmp_path / "official.pth"
    copy.write_bytes(fine_file.read_bytes())
    assert convert_tool.main([str(copy), str(copy)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert copy.read_bytes() == fine_file.read_bytes()
    assert convert_tool.main([str(copy), str(tmp_path / "out.pkl")]) == 1
    assert ".pth" in capsys.readouterr().err
    assert convert_tool.main([str(copy), str(tmp_path / "missing" / "out.pth")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_v3_query_norm_maps(tmp_path):
    source = build(FineModel, backbone_cfg("v3"), seed=2)
    state = official_fine_model(source)
    norm_keys = [key for key in state if ".attn.norm_i2t_i." in key]
    assert len(norm_keys) == 2 * 3  # weight and bias of each fused block
    report = convert_official_state_dict(state, stage="fine")
    assert report.unmapped == []
    norm = state["module.fusion_backbone.backbone.body.layers.3.blocks.0.attn.norm_i2t_i.weight"]
    assert report.state_dict["backbone.bottom_up.image.layers.3.blocks.0.i2t.norm.weight"] is norm
    path = tmp_path / "v3.pth"
    torch.save({"model": report.state_dict}, path)
    loaded = build(FineModel, backbone_cfg("v3"), seed=7)
    load_with_detectron2(loaded, path)
    assert_same_model(loaded, source)


def test_coarse_checkpoint_converts_heads_and_drops_extras(tmp_path, capsys):
    cfg = backbone_cfg(coarse=True)
    source = build(CoarseModel, cfg, seed=4)
    state = official_coarse_model(source)
    path = tmp_path / "fiber_pretrain.ckpt"
    lightning = {"state_dict": state, "epoch": 9, "global_step": 100000, "optimizer_states": [{"state": {}}]}
    torch.save({**lightning, "hyper_parameters": {"config": {"image_size": 384, "num_fuse_block": 6}}}, path)

    report = convert_official_state_dict(state)
    assert report.stage == "coarse" and report.unmapped == []
    num_layers, num_fused = cfg.MODEL.FIBER.TEXT.NUM_LAYERS, cfg.MODEL.FIBER.FUSION.NUM_LAYERS
    assert len(report.dropped[DROP_QUEUES]) == 7
    assert report.dropped[DROP_RANK_OUTPUT] == ["rank_output.weight", "rank_output.bias"]
    assert report.dropped[DROP_UNFUSED_ALPHA] == [
        f"text_transformer.encoder.layer.{i}.alpha_t2i" for i in range(num_layers - num_fused)
    ]
    assert len(report.dropped[DROP_CROSS_NORM]) == 2 * num_fused
    assert len(report.dropped[DROP_POOLER]) == 2
    assert report.dropped[DROP_ATTN_MASK] == ["vit_model.layers.2.blocks.1.attn_mask"]
    converted = report.state_dict
    assert converted["heads.mlm.bias"] is converted["heads.mlm.decoder.bias"] is state["mlm_score.bias"]
    assert converted["heads.mlm.layer_norm.weight"] is state["mlm_score.transform.LayerNorm.weight"]
    assert converted["heads.itm.weight"] is state["itm_score.fc.weight"]
    assert converted["heads.temperature"] is state["temp"]
    assert converted["heads.itc.image_pooler.dense.weight"] is state["cross_modal_image_pooler_itc.dense.weight"]
    assert converted["heads.vqa.3.bias"] is state["vqa_classifier.3.bias"]
    assert converted["backbone.image.out_norms.res5.weight"] is state["vit_model.norm.weight"]
    # The real coarse model has exactly the converted names, less the VQA ones; its own ITC queue state (rebuilt
    # empty) aside.
    coarse_cfg = cfg.clone()
    coarse_cfg.MODEL.FIBER.COARSE.ITC_QUEUE_SIZE = 0
    coarse_keys = {
        key for key in FiberCoarseModel(coarse_cfg).state_dict()
        if not key.startswith("queue.")
    }
    assert coarse_keys == {key for key in converted if not key.startswith("heads.vqa.")}

    output = tmp_path / "fiber_coarse_d2.pth"
    assert convert_tool.main([str(path), str(output)]) == 0
    assert DROP_QUEUES in capsys.readouterr().out
    loaded = build(CoarseModel, cfg, seed=7)
    load_with_detectron2(loaded, output)
    assert_same_model(loaded, source)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_converted_model_matches_an_independent_official_forward(version):
    """The official computation (tests/official_fiber_reference.py, reading official keys) and our converted model
    agree: this checks the key table and our fusion semantics together."""
    from official_fiber_reference import official_fine_backbone_forward

    source = build(FineModel, backbone_cfg(version), seed=11)
    official = {key[len("module.") :]: value for key, value in official_fine_model(source).items()}
    loaded = build(FineModel, backbone_cfg(version), seed=12)
    report = convert_official_state_dict(official)
    assert report.unmapped == []
    loaded.load_state_dict(report.state_dict)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 64, 96, generator=generator)
    ids = torch.randint(3, 1000, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:], ids[1, 6:] = 0, 1
    fiber = backbone_cfg(version).MODEL.FIBER
    expected_images, expected_text = official_fine_backbone_forward(
        official,
        images,
        ids,
        mask,
        depths=fiber.SWIN.DEPTHS,
        heads=fiber.SWIN.NUM_HEADS,
        window=fiber.SWIN.WINDOW_SIZE,
        text_layers=fiber.TEXT.NUM_LAYERS,
        text_heads=fiber.TEXT.NUM_HEADS,
        num_fused=fiber.FUSION.NUM_LAYERS,
        query_norm=version == "v3",
    )
    with torch.no_grad():
        images_out, text_out = loaded.encode(images, ids, mask)
    assert expected_images.keys() == images_out.keys() == {"res3", "res4", "res5"}
    for name in expected_images:
        torch.testing.assert_close(images_out[name], expected_images[name], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(text_out, expected_text, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("stand_ins", [False, True])
def test_zip_and_legacy_formats_load(tmp_path, stand_ins):
    tensors = {"model": {"fusion_backbone.x": torch.arange(6.0).view(2, 3)}}
    for name, zip_format in (("zip.pth", True), ("legacy.pth", False)):
        torch.save(tensors, tmp_path / name, _use_new_zipfile_serialization=zip_format)
        loaded = load_checkpoint_file(str(tmp_path / name), stand_in_unknown_globals=stand_ins)
        torch.testing.assert_close(loaded["model"]["fusion_backbone.x"], tensors["model"]["fusion_backbone.x"])
