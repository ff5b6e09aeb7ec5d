"""add_fiber_config, the packaged configs, and the results file."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from fiber_d2.config import add_fiber_config
from fiber_d2.evaluation import save_results_json
from fiber_d2.model_zoo import get_config_file

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_every_new_key_has_a_default_and_a_comment():
    cfg = get_cfg()
    before = set(_flatten(cfg))
    add_fiber_config(cfg)
    new_keys = set(_flatten(cfg)) - before
    assert {"SOLVER.OPTIMIZER", "SOLVER.BETAS", "TEST.RESULTS_FILE"} <= new_keys
    source = (Path(__file__).resolve().parents[1] / "fiber_d2" / "config.py").read_text().splitlines()
    for key in new_keys:
        line_no = next(i for i, line in enumerate(source) if f"cfg.{key} =" in line)
        assert source[line_no - 1].strip().startswith("#"), f"{key} has no comment above it"


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")))
def test_every_config_merges(path):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file(path))
    if path.startswith("backbone/"):  # fragments that full configs include with _BASE_
        assert cfg.MODEL.BACKBONE.NAME == "build_fiber_backbone", path
    elif path.split("/")[-1].startswith("Base-"):  # shared settings of a family of configs
        assert cfg.MODEL.META_ARCHITECTURE, path
    elif cfg.MODEL.META_ARCHITECTURE in ("FiberImagePretrainer", "FiberTextPretrainer"):  # a pretraining step: no test
        assert cfg.DATASETS.TRAIN and not cfg.DATASETS.TEST, path
    else:
        assert cfg.DATASETS.TRAIN and cfg.DATASETS.TEST, path


def test_missing_config_is_named():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        get_config_file("nope.yaml")


def test_results_merge_replace_and_nan(tmp_path):
    path = tmp_path / "out" / "results.json"
    save_results_json({"a": {"bbox": {"AP": 10.0}}}, str(path))
    merged = save_results_json({"b": {"bbox": {"AP": float("nan"), "AP50": 50.0}}}, str(path))
    assert merged == {"a": {"bbox": {"AP": 10.0}}, "b": {"bbox": {"AP": None, "AP50": 50.0}}}
    save_results_json({"a": {"bbox": {"AP": 20.0}}}, str(path))
    on_disk = json.loads(path.read_text())
    assert on_disk["a"]["bbox"]["AP"] == 20.0 and on_disk["b"]["bbox"]["AP50"] == 50.0
    assert list(path.parent.glob("*.tmp")) == []


def test_corrupt_results_file_is_not_overwritten(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="results.json"):
        save_results_json({"a": {"bbox": {"AP": 1.0}}}, str(path))
    assert path.read_text() == "{not json"


def _flatten(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.slow
def test_built_package_carries_every_config(tmp_path):
    """A non-editable install finds configs inside the package (fiber_d2/model_zoo/configs)."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(repo)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fiber_d2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name.split("model_zoo/configs/", 1)[1] for name in archive.namelist() if "model_zoo/configs/" in name}
    assert packaged == {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
