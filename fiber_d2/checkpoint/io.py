"""Load a checkpoint file without executing pickled code (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import logging
import os
import pickle
import types
from typing import Any

import torch
from torch import _weights_only_unpickler

logger = logging.getLogger(__name__)


class CheckpointLayoutError(ValueError):
    """A checkpoint whose keys or shapes are not the layout the caller expects."""


class InertStandIn(dict):
    """Stands in for a class or function that a checkpoint names outside the allow-list (e.g. the Lightning and
    sacred containers of its hyper-parameters). Creating it, filling it and setting its state run no code of the
    named object: it only keeps what was pickled (`pickled_name`, `pickled_args`, items, `pickled_state`)."""

    pickled_name = ""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.pickled_args = (args, kwargs)
        self.pickled_items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state

    def append(self, item: Any) -> None:
        self.pickled_items.append(item)

    def extend(self, items: Any) -> None:
        self.pickled_items.extend(items)


# Plain data types a pickle may name besides PyTorch's weights_only allow-list.
_DATA_TYPES = {
    f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bool)
}


class _StandInUnpickler(pickle.Unpickler):
    """Resolves only PyTorch's weights_only allow-list and plain data types; every other name becomes an
    InertStandIn subclass, so nothing the file names is ever imported or called (the "restricted Unpickler" of the
    `pickle` documentation)."""

    stand_ins: set[str]

    def find_class(self, module: str, name: str) -> Any:
        full_name = f"{module}.{name}"
        allowed = _weights_only_unpickler._get_allowed_globals()
        if full_name in allowed:
            return allowed[full_name]
        if full_name in _DATA_TYPES:
            return _DATA_TYPES[full_name]
        type(self).stand_ins.add(full_name)
        return type(name, (InertStandIn,), {"pickled_name": full_name, "__module__": __name__})


def _stand_in_pickle_module() -> types.SimpleNamespace:
    """A `pickle_module` for torch.load whose Unpickler is restricted; `.unpickler.stand_ins` lists what it stood in
    for."""
    unpickler = type("StandInUnpickler", (_StandInUnpickler,), {"stand_ins": set()})
    return types.SimpleNamespace(
        __name__="fiber_d2_stand_in_pickle",
        Unpickler=unpickler,
        load=lambda file, **kwargs: unpickler(file, **kwargs).load(),
        unpickler=unpickler,
    )


def load_checkpoint_file(path: str, stand_in_unknown_globals: bool = False) -> dict[str, Any]:
    """The dict stored in `path`, read without executing pickled code.

    .safetensors files hold tensors only; other files go through `torch.load(weights_only=True)`, which refuses any
    class or function outside PyTorch's allow-list. With `stand_in_unknown_globals`, such names become inert
    `InertStandIn` objects instead (logged), so that a checkpoint whose metadata names other libraries' classes
    (Lightning, sacred) still loads; nothing it names is imported or called. Callers must then check that what they
    use is made of tensors.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    pickle_module = _stand_in_pickle_module() if stand_in_unknown_globals else None
    options = {"weights_only": True} if pickle_module is None else {"weights_only": False, "pickle_module": pickle_module}
    try:
        try:  # memory-mapped: tensors nobody reads (e.g. the coarse checkpoint's image queue) are never paged in
            loaded = torch.load(path, map_location="cpu", mmap=True, **options)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            loaded = torch.load(path, map_location="cpu", **options)  # the pre-1.6 (non-zip) format
    except Exception as error:  # torch raises UnpicklingError and others for files it refuses
        raise CheckpointLayoutError(
            f"checkpoint {path!r} cannot be read with weights_only=True (it needs pickled code or is not a "
            f"PyTorch file): {error}"
        ) from error
    if pickle_module is not None and pickle_module.unpickler.stand_ins:
        names = ", ".join(sorted(pickle_module.unpickler.stand_ins))
        logger.warning("%s: inert stand-ins (never called) for %s", path, names)
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
