"""fiber_d2's model zoo, in the style of `detectron2.model_zoo`: its configs, and the FIBER-Shapes weights shipped in
the repository (`model_zoo/`, listed in MODEL_ZOO.md) with their sha256.

    from fiber_d2 import model_zoo
    cfg = model_zoo.get_config("fiber_shapes/zoo/grounding.yaml", trained=True)   # MODEL.WEIGHTS = the checked file
    path = model_zoo.get_checkpoint_path("fiber_shapes/zoo/grounding.yaml")
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ZooChecksumError", "get_checkpoint_path", "get_config", "get_config_file", "get_model_files", "list_models",
    "record_metrics", "sha256_of", "write_manifest",
]

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
# A built (non-editable) package carries copies next to this module (setup.py); an editable one reads the repository.
_CONFIG_ROOTS = (_HERE / "configs", _REPO / "configs")
_WEIGHT_ROOTS = (_HERE / "weights", _REPO / "model_zoo")
# {config path relative to configs/: {"file": path relative to model_zoo/, "sha256": hex digest, "bytes": size,
#  "metrics": {...}, optionally "files": {config key: {"file": ..., "sha256": ...}}}}; a "files" entry whose "sha256" is
#  a {file name: hex digest} dict is a directory holding exactly those files (a tokenizer).
_MANIFEST = _HERE / "manifest.json"


class ZooChecksumError(RuntimeError):
    """A zoo weights file whose sha256 is not the one the manifest records (a partial or altered file)."""


def get_config_file(config_path: str) -> str:
    """Absolute path of a config given relative to `configs/`, e.g. "fiber_shapes/fiber_tiny_demo.yaml"."""
    for base in _CONFIG_ROOTS:
        candidate = base / config_path
        if candidate.is_file():
            return str(candidate)
    roots = " or ".join(str(root) for root in _CONFIG_ROOTS)
    raise FileNotFoundError(f"fiber_d2 config {config_path!r} not found under {roots}")


def list_models(manifest: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The zoo's entries: {config path: {"file": ..., "sha256": ..., other recorded fields}}."""
    with open(manifest or _MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def write_manifest(models: dict[str, dict[str, Any]], manifest: str | os.PathLike | None = None) -> None:
    """Write the zoo's entries (sorted by config) through a temporary file and a rename."""
    path = Path(manifest or _MANIFEST)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(dict(sorted(models.items())), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def record_metrics(metrics: dict[str, dict], manifest: str | os.PathLike | None = None) -> None:
    """Store each model's published metrics, {config: {dataset: {task: {metric: value}}}}, in its manifest entry
    (under "metrics"; MODEL_ZOO.md shows them and `make demo` checks its own evaluation against them)."""
    models = list_models(manifest)
    for config, values in metrics.items():
        if config not in models:
            raise KeyError(f"the fiber_d2 model zoo has no weights for {config!r}")
        models[config]["metrics"] = values
    write_manifest(models, manifest)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(
    relative: str,
    sha256: str | dict[str, str],
    what: str,
    weight_roots: tuple[str | os.PathLike, ...] | None = None,
) -> str:
    """Local path of the zoo file `relative` (under model_zoo/) whose sha256 must be `sha256`, or, where `sha256` is
    a {file name: sha256} dict, of the zoo directory that must hold exactly those files; `what` names it."""
    is_directory = isinstance(sha256, dict)
    kind = "directory" if is_directory else "file"
    roots = [Path(root) for root in (weight_roots or _WEIGHT_ROOTS)]
    exists = Path.is_dir if is_directory else Path.is_file
    path = next((root / relative for root in roots if exists(root / relative)), None)
    if path is None:
        raise FileNotFoundError(f"zoo {kind} {relative!r} for {what} not found under {' or '.join(map(str, roots))}")
    if is_directory:
        names = sorted(child.name for child in path.iterdir())
        if names != sorted(sha256):
            raise ZooChecksumError(f"{path}: holds {names}, the model zoo records {sorted(sha256)}")
    files = {path / name: digest for name, digest in sha256.items()} if is_directory else {path: sha256}
    for file, expected in sorted(files.items()):
        actual = sha256_of(file)
        if actual != expected:
            raise ZooChecksumError(f"{file}: sha256 {actual} differs from the model zoo's {expected}")
    return str(path)


def _entry(config_path: str, manifest: str | os.PathLike | None) -> dict[str, Any]:
    models = list_models(manifest)
    if config_path not in models:
        known = ", ".join(sorted(models))
        raise KeyError(f"the fiber_d2 model zoo has no weights for {config_path!r}; it has: {known}")
    return models[config_path]


def get_checkpoint_path(
    config_path: str,
    manifest: str | os.PathLike | None = None,
    weight_roots: tuple[str | os.PathLike, ...] | None = None,
) -> str:
    """Local path of the shipped weights trained with `config_path` (relative to `configs/`), after checking that
    the file's sha256 equals the manifest's. Raises KeyError for a config the zoo has no weights for,
    FileNotFoundError for a missing file and ZooChecksumError for a file that differs."""
    entry = _entry(config_path, manifest)
    return _checked(entry["file"], entry["sha256"], repr(config_path), weight_roots)


def get_model_files(
    config_path: str,
    manifest: str | os.PathLike | None = None,
    weight_roots: tuple[str | os.PathLike, ...] | None = None,
) -> dict[str, str]:
    """The files a zoo model needs besides its weights, as {config key: checked local path}, each defined by the data
    the model was trained on: its tokenizer (MODEL.FIBER.TOKENIZER, a directory: FIBER-Shapes trains its tokenizer
    on its own captions, so a dataset generated with other options has another one) and a VQA model's answer classes
    in order (MODEL.FIBER.VQA.ANSWER_VOCABULARY)."""
    entry = _entry(config_path, manifest)
    return {
        key: _checked(spec["file"], spec["sha256"], f"{config_path!r} ({key})", weight_roots)
        for key, spec in entry.get("files", {}).items()
    }


def get_config(config_path: str, trained: bool = False):
    """A frozen-free Detectron2 CfgNode with fiber_d2's keys, merged from `config_path`; with `trained`,
    MODEL.WEIGHTS is the zoo's checked weights file for it, and the keys of `get_model_files` point at its files."""
    from detectron2.config import get_cfg

    from ..config import add_fiber_config

    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_path(config_path)
        for key, path in get_model_files(config_path).items():
            cfg.merge_from_list([key, path])
    return cfg
