"""Find fiber_d2's configs, like `detectron2.model_zoo.get_config_file`."""
from pathlib import Path

__all__ = ["get_config_file"]

_PACKAGED = Path(__file__).resolve().parent / "configs"  # present in a built (non-editable) install
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs/ (editable install)


def get_config_file(config_path: str) -> str:
    """Absolute path of a config given relative to `configs/`, e.g. "fiber_shapes/retinanet_R18_baseline.yaml"."""
    for base in (_PACKAGED, _SOURCE_TREE):
        candidate = base / config_path
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"fiber_d2 config {config_path!r} not found under {_PACKAGED} or {_SOURCE_TREE}")
