"""MODEL.WEIGHTS loads through FiberCheckpointer: no pickled code runs (payload .pkl and .pth), .safetensors (fp16)
and Detectron2 .pkl files load, weights of another model fail naming the file and the share missing, and bad files
end in one line naming the file."""
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import save_file
from torch import nn

from fiber_d2.checkpoint.checkpointer import FiberCheckpointer
from fiber_d2.checkpoint.io import CheckpointLayoutError, UnreadableCheckpointError


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))  # 7 tensors with the BatchNorm's buffers


class MakeDirectory:
    """Unpickling this creates the directory `path`: the marker that pickled code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _assert_one_line_naming(error: Exception, path) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message, message


def test_pkl_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pkl_code_ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"0.weight": MakeDirectory(marker)}, "__author__": "x"}))
    with pytest.raises(UnreadableCheckpointError) as info:
        FiberCheckpointer(tiny_model()).load(str(path))
    assert not marker.exists()
    _assert_one_line_naming(info.value, path)
    assert "GLOBAL posix.mkdir" in str(info.value) or "GLOBAL os.mkdir" in str(info.value)
    DetectionCheckpointer(tiny_model())._load_file(str(path))  # Detectron2's own reader runs it: the payload is live
    assert marker.is_dir()


def test_pth_payload_is_refused_even_when_torch_is_told_to_allow_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pth_code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"0.weight": MakeDirectory(marker)}}, path)
    checkpointer = FiberCheckpointer(tiny_model(), str(tmp_path))
    with pytest.raises(UnreadableCheckpointError, match="needs pickled code, which weights_only=True refuses") as info:
        checkpointer.load(str(path))
    _assert_one_line_naming(info.value, path)
    (tmp_path / "last_checkpoint").write_text("evil.pth")  # --resume reads the same way
    with pytest.raises(UnreadableCheckpointError, match="cannot resume"):
        checkpointer.resume_or_load("", resume=True)
    assert not marker.exists()
    with pytest.warns(UserWarning):
        DetectionCheckpointer(tiny_model())._load_file(str(path))  # fvcore's torch.load runs it under that variable
    assert marker.is_dir()


@pytest.mark.parametrize("protocol", [2, 5])
def test_detectron2_pkl_of_numpy_arrays_loads(tmp_path, protocol):
    source = tiny_model()
    weights = OrderedDict((k, np.asarray(v.numpy() + 1)) for k, v in source.state_dict().items())
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "test"}, protocol=protocol))
    model = tiny_model()
    FiberCheckpointer(model).load(str(path))
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), weights[key]), key


def test_pkl_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"model": {"0.weight": np.array([{"a": 1}], dtype=object)}, "__author__": "x"}))
    with pytest.raises(UnreadableCheckpointError, match="object arrays"):
        FiberCheckpointer(tiny_model()).load(str(path))


def test_fp16_safetensors_load_into_fp32_model_without_missing_keys(tmp_path, caplog):
    source = tiny_model()
    with torch.no_grad():
        source[0].weight.mul_(3.3)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / "zoo.safetensors"
    save_file(half, str(path))
    model = tiny_model()
    FiberCheckpointer(model).load(str(path))
    for key, value in model.state_dict().items():
        expected = half[key].float() if half[key].is_floating_point() else half[key]
        assert value.dtype == source.state_dict()[key].dtype, key
        assert torch.equal(value, expected), key
    assert "missing" not in caplog.text.lower() and "unexpected" not in caplog.text.lower()


def test_weights_of_another_model_fail_naming_file_and_share(tmp_path):
    path = tmp_path / "coarse.pth"
    torch.save({"model": {"heads.itc.weight": torch.zeros(2), "heads.itm.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointLayoutError) as info:
        FiberCheckpointer(tiny_model()).load(str(path))
    _assert_one_line_naming(info.value, path)
    # BatchNorm fills in a missing num_batches_tracked itself, so 6 of the 7 are reported
    assert "6 of the model's 7 tensors (86%) are missing from it or have another shape" in str(info.value)
    assert "heads.itc.weight" in str(info.value)
    # one tensor of another shape and one absent: 2 of 7 missing is within the default share
    model = tiny_model()
    state = {k: v for k, v in model.state_dict().items() if k != "1.bias"}
    torch.save({"model": {**state, "0.weight": torch.zeros(5, 5)}}, path)
    FiberCheckpointer(model).load(str(path))
    with pytest.raises(CheckpointLayoutError, match="2 of the model's 7 tensors"):
        FiberCheckpointer(model, max_missing=0.2).load(str(path))


def test_official_layout_names_the_converter(tmp_path):
    path = tmp_path / "fiber_coarse_then_fine.pth"
    torch.save({"model": {"module.fusion_backbone.layers.0.weight": torch.zeros(2)}, "iteration": 10}, path)
    with pytest.raises(CheckpointLayoutError) as info:
        FiberCheckpointer(tiny_model()).load(str(path))
    _assert_one_line_naming(info.value, path)
    assert f"python tools/convert_fiber_checkpoint.py {path} converted.pth" in str(info.value)

    ckpt = tmp_path / "fiber_pretrain.ckpt"
    torch.save({"state_dict": {"vit_model.x": torch.zeros(1)}, "hyper_parameters": LightningAttributeDict()}, ckpt)
    with pytest.raises(CheckpointLayoutError, match="convert it first with `python tools/convert_fiber_checkpoint.py"):
        FiberCheckpointer(tiny_model()).load(str(ckpt))


class LightningAttributeDict(dict):
    """A class weights_only refuses, as Lightning's hyper-parameter container in the official coarse .ckpt."""


def _truncated_pth(tmp_path):
    path = tmp_path / "model_0000019.pth"
    torch.save({"model": tiny_model().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "kind, error, message",
    [
        ("missing", FileNotFoundError, "does not exist"),
        ("directory", FileNotFoundError, "is a directory"),
        ("empty", UnreadableCheckpointError, r"is empty \(0 bytes\)"),
        ("text", UnreadableCheckpointError, "is not a checkpoint: neither a PyTorch file"),
        ("truncated", UnreadableCheckpointError, "is truncated or corrupt"),
        ("truncated_safetensors", UnreadableCheckpointError, "not a readable .safetensors file"),
        ("truncated_pkl", UnreadableCheckpointError, "cannot be read as a pickle of numpy arrays"),
    ],
)
def test_bad_weights_files_end_in_one_line_naming_the_file(tmp_path, kind, error, message):
    path = tmp_path / f"weights_{kind}.pth"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("exit 0\n")
    elif kind == "truncated":
        path = _truncated_pth(tmp_path)
    elif kind == "truncated_safetensors":
        path = tmp_path / "w.safetensors"
        save_file(tiny_model().state_dict(), str(path))
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "truncated_pkl":
        path = tmp_path / "w.pkl"
        path.write_bytes(pickle.dumps({"model": {"a": np.zeros(100)}, "__author__": "x"})[:60])
    with pytest.raises(error, match=message) as info:
        FiberCheckpointer(tiny_model()).load(str(path))
    _assert_one_line_naming(info.value, path)


class _ToyDetector(nn.Module):
    """A grounding detector's layout: the FiberBackbone under backbone.bottom_up, an FPN beside it, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Linear(3, 4)
        self.backbone.fpn_lateral3 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


class _ToyCoarseModel(nn.Module):
    """A coarse model's layout: the FiberBackbone as backbone, its own heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.itm_head = nn.Linear(4, 2)


def test_detector_weights_start_a_coarse_model_with_the_detector_backbone(tmp_path):
    torch.manual_seed(0)
    detector = _ToyDetector()
    path = str(tmp_path / "detector.pth")
    torch.save({"model": detector.state_dict()}, path)
    coarse = _ToyCoarseModel()
    head_before = coarse.itm_head.weight.detach().clone()
    incompatible = FiberCheckpointer(coarse).load(path)
    assert torch.equal(coarse.backbone.weight, detector.backbone.bottom_up.weight)
    assert torch.equal(coarse.backbone.bias, detector.backbone.bottom_up.bias)
    assert torch.equal(coarse.itm_head.weight, head_before)  # the detector's head is not the coarse model's
    assert incompatible == {}  # no checkpointables asked for

    other = _ToyDetector()  # a detector loading a detector's file is untouched by the renaming
    FiberCheckpointer(other).load(path)
    for name, value in detector.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
