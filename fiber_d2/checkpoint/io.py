"""Load a checkpoint file without executing pickled code (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import os
from typing import Any

import torch


class CheckpointLayoutError(ValueError):
    """A checkpoint whose keys or shapes are not the layout the caller expects."""


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """The object stored in `path` (a dict): .safetensors files hold tensors only; other files go through
    `torch.load(weights_only=True)`, which refuses pickled code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others for files it refuses
        raise CheckpointLayoutError(
            f"checkpoint {path!r} cannot be read with weights_only=True (it needs pickled code or is not a "
            f"PyTorch file): {error}"
        ) from error
    if not isinstance(loaded, dict):
        raise CheckpointLayoutError(f"checkpoint {path!r} holds a {type(loaded).__name__}, not a dict of tensors")
    return loaded


def load_state_dict_file(path: str, keys: tuple[str, ...] = ("model", "state_dict")) -> dict[str, torch.Tensor]:
    """The state dict in `path`: the file itself, or its first entry named in `keys` (e.g. {"model": {...}})."""
    loaded = load_checkpoint_file(path)
    for key in keys:
        if key in loaded and isinstance(loaded[key], dict):
            loaded = loaded[key]
            break
    tensors = {name: value for name, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointLayoutError(f"checkpoint {path!r} holds no tensors (top-level keys: {sorted(loaded)[:10]})")
    return tensors


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """The first `limit` keys and how many more, for error messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")
