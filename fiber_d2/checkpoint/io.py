"""Load a checkpoint file without executing pickled code: safetensors, torch.load with weights_only=True, or a
restricted unpickler (numpy arrays and plain containers only) for Detectron2 .pkl files."""
from __future__ import annotations

import codecs
import collections
import functools
import logging
import os
import pickle
import re
import types
import zipfile
from typing import Any

import numpy as np
import torch
from torch import _weights_only_unpickler

logger = logging.getLogger(__name__)


class CheckpointLayoutError(ValueError):
    """A checkpoint whose keys or shapes are not the layout the caller expects."""


class UnreadableCheckpointError(CheckpointLayoutError):
    """A checkpoint file that cannot be read: empty, truncated, not a checkpoint, or one that needs pickled code (which
    is never run). The message is one line naming the file."""


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

    .safetensors files hold tensors only; .pkl files (Detectron2 / Caffe2 model-zoo format) go through a restricted
    unpickler that builds only numpy arrays and plain containers; other files go through
    `torch.load(weights_only=True)` (passed explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off), which
    refuses any class or function outside PyTorch's allow-list. With `stand_in_unknown_globals` (not for .pkl), such
    names become inert `InertStandIn` objects instead (logged), so that a checkpoint whose metadata names other
    libraries' classes (Lightning, sacred) still loads; nothing it names is imported or called. Callers must then check
    that what they use is made of tensors.

    Raises FileNotFoundError for a missing file and UnreadableCheckpointError for any file that cannot be read (empty,
    truncated, not a checkpoint, or needing pickled code); both with a one-line message naming the file.
    """
    check_checkpoint_path(path)
    if os.path.getsize(path) == 0:
        raise UnreadableCheckpointError(f"checkpoint {path!r} is empty (0 bytes)")
    if path.endswith(".safetensors"):
        loaded = _load_safetensors(path)
    elif path.endswith(".pkl"):
        loaded = _load_pickle(path)
    else:
        loaded = _torch_load(path, stand_in_unknown_globals)
    if not isinstance(loaded, dict):
        raise UnreadableCheckpointError(f"checkpoint {path!r} holds a {type(loaded).__name__}, not a dict of tensors")
    return loaded


def check_checkpoint_path(path: str) -> None:
    """FileNotFoundError naming `path` unless it is a file."""
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint {path!r} {what}")


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors raises SafetensorError, OSError, ... for files it cannot parse
        raise UnreadableCheckpointError(
            f"checkpoint {path!r} is not a readable .safetensors file (truncated or corrupt?): {one_line(error)}"
        ) from error


def _torch_load(path: str, stand_in_unknown_globals: bool) -> Any:
    """torch.load with weights_only=True (or the stand-in unpickler), memory-mapped when the file is a zip archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(b"PK"):
        raise UnreadableCheckpointError(
            f"checkpoint {path!r} is truncated or corrupt (a zip archive without its directory: a save cut short?)"
        )
    if not is_zip and not head.startswith(b"\x80"):  # neither torch.save's zip format nor a (legacy) pickle
        raise UnreadableCheckpointError(
            f"checkpoint {path!r} is not a checkpoint: neither a PyTorch file, a .pkl pickle nor .safetensors "
            f"(it starts with {head!r})"
        )
    pickle_module = _stand_in_pickle_module() if stand_in_unknown_globals else None
    options = {"weights_only": True} if pickle_module is None else {"weights_only": False, "pickle_module": pickle_module}
    try:
        # memory-mapped: tensors nobody reads (e.g. the coarse checkpoint's image queue) are never paged in
        loaded = torch.load(path, map_location="cpu", mmap=is_zip, **options)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError for files it refuses
        refused = re.search(r"[^.\n]*GLOBAL [^\n]*", str(error))
        if refused:
            reason = f"it needs pickled code, which weights_only=True refuses ({refused.group(0).strip()})"
        else:
            reason = f"truncated or corrupt ({type(error).__name__}: {one_line(error) or 'no message'})"
        raise UnreadableCheckpointError(f"checkpoint {path!r} cannot be read: {reason}") from error
    if pickle_module is not None and pickle_module.unpickler.stand_ins:
        names = ", ".join(sorted(pickle_module.unpickler.stand_ins))
        logger.warning("%s: inert stand-ins (never called) for %s", path, names)
    return loaded


@functools.lru_cache(maxsize=None)
def _array_globals() -> dict[str, Any]:
    """What a pickled dict of numpy arrays names: numpy's array and dtype rebuilders (under numpy 1 and numpy 2
    module names), OrderedDict, and `_codecs.encode` (bytes in protocol-2 pickles)."""
    core = getattr(np, "_core", None) or np.core
    found = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": codecs.encode,
        **_DATA_TYPES,
    }
    for module in ("numpy.core", "numpy._core"):
        found[f"{module}.multiarray._reconstruct"] = core.multiarray._reconstruct
        found[f"{module}.multiarray.scalar"] = core.multiarray.scalar
        found[f"{module}.numeric._frombuffer"] = core.numeric._frombuffer
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only: any other class or function a pickle names is refused, so
    nothing it names is imported or called (the "restricted Unpickler" of the `pickle` documentation)."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _array_globals().get(f"{module}.{name}")
        if allowed is None:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not a numpy array or plain container")
        return allowed


def _load_pickle(path: str) -> Any:
    """A .pkl of numpy arrays (Detectron2 / Caffe2 model zoo; latin1 for Python 2 pickles) through _ArrayUnpickler;
    object arrays are refused."""
    try:
        with open(path, "rb") as f:
            loaded = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as error:  # UnpicklingError (refused or corrupt), EOFError (truncated), ...
        reason = one_line(error) or "it ends too early"
        raise UnreadableCheckpointError(
            f"checkpoint {path!r} cannot be read as a pickle of numpy arrays ({type(error).__name__}: {reason}); "
            "it is refused, not run"
        ) from error
    stack = [loaded]
    while stack:  # object arrays would hold arbitrary (if inert) objects, never weights
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise UnreadableCheckpointError(f"checkpoint {path!r} holds numpy object arrays, which are not weights")
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


def one_line(error: object, limit: int = 300) -> str:
    """An error's message on one line, at most `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """The first `limit` keys and how many more, for error messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")
