"""The model zoo: export to fp16 safetensors, sha256-checked lookup, and the shipped files themselves."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fiber_d2 import model_zoo
from fiber_d2.model_zoo.export import export_weights

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(tmp_path: Path) -> Path:
    state = {"w": torch.linspace(-1.0, 1.0, 12).reshape(3, 4), "n": torch.tensor([5], dtype=torch.int64)}
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 7}, path)
    return path


def test_export_writes_fp16_model_weights_only(tmp_path):
    output = tmp_path / "zoo" / "m.safetensors"
    size = export_weights(str(_checkpoint(tmp_path)), output)
    loaded = load_file(str(output))
    assert size == output.stat().st_size
    assert set(loaded) == {"w", "n"}  # the model only: no iteration, no optimizer
    assert loaded["w"].dtype == torch.float16 and loaded["n"].dtype == torch.int64
    torch.testing.assert_close(loaded["w"].float(), torch.linspace(-1.0, 1.0, 12).reshape(3, 4), atol=1e-3, rtol=0)
    assert not (output.parent / "m.safetensors.tmp").exists()


def test_checkpoint_path_checks_the_sha256(tmp_path):
    weights = tmp_path / "fiber_shapes" / "m.safetensors"
    export_weights(str(_checkpoint(tmp_path)), weights)
    manifest = tmp_path / "manifest.json"
    entry = {"file": "fiber_shapes/m.safetensors", "sha256": model_zoo.sha256_of(weights)}
    manifest.write_text(json.dumps({"fiber_shapes/x.yaml": entry}))
    found = model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))
    assert found == str(weights)
    with pytest.raises(KeyError, match="no weights for 'other.yaml'.*fiber_shapes/x.yaml"):
        model_zoo.get_checkpoint_path("other.yaml", manifest=manifest, weight_roots=(tmp_path,))
    with weights.open("r+b") as f:  # one byte changed
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(model_zoo.ZooChecksumError, match="differs from the model zoo's"):
        model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="fiber_shapes/m.safetensors"):
        model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))


def test_export_cli_refuses_output_outside_the_zoo(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_zoo_model.py"), str(_checkpoint(tmp_path)),
         "--config", "fiber_shapes/fiber_tiny_demo.yaml", "--output", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--output must lie under" in result.stderr
