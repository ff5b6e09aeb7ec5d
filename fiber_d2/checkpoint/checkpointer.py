"""FiberCheckpointer: Detectron2's DetectionCheckpointer, made safe to load from and to kill.

- Reading runs no pickled code: every file goes through `fiber_d2.checkpoint.io` (safetensors; torch.load with
  weights_only=True; Detectron2/Caffe2 .pkl through a restricted unpickler). Half-precision weights (fp16 model-zoo
  files) are cast to the model's dtypes by `load_state_dict`.
- Weights that do not fit fail: when more than `max_missing` of the model's tensors are not in the file (absent or
  of another shape), loading raises CheckpointLayoutError naming the file and the share missing, and for an official
  FIBER checkpoint the converter command.
- Saving cannot be half done: a checkpoint and `last_checkpoint` are written to a temporary file, synced and renamed.
- A detector's backbone starts a coarse model: a file whose FiberBackbone sits under `backbone.bottom_up.` (the
  detector's FPN holds it there) loaded into a model that holds it as `backbone.` (the coarse models) gives that
  model its backbone; the detector's FPN and head are left out (logged).
- Resuming falls back: when the file `last_checkpoint` names is missing, empty or unreadable (or `last_checkpoint`
  is empty), the newest readable checkpoint in the directory is used, with a warning saying so.
"""
from __future__ import annotations

import os
import uuid
from typing import IO, Any, Callable

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from .fiber_official import STAGE_MARKERS, strip_module_prefix
from .io import (
    CheckpointLayoutError,
    UnreadableCheckpointError,
    check_checkpoint_path,
    describe_keys,
    load_checkpoint_file,
    one_line,
)

CONVERTER = "tools/convert_fiber_checkpoint.py"
DETECTOR_BACKBONE = "backbone.bottom_up."  # where a grounding detector (FiberFPN) holds its FiberBackbone


class FiberCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads without running pickled code, refuses weights of another model, saves
    atomically and resumes from the newest readable checkpoint (module docstring).

    max_missing: the largest share (0..1) of the model's tensors that may be missing from a loaded file (absent or of
    another shape); 1.0 never fails.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, max_missing: float = 0.5, **kwargs: Any) -> None:
        super().__init__(model, save_dir, **kwargs)
        if not 0.0 <= max_missing <= 1.0:
            raise ValueError(f"max_missing must be in [0, 1], got {max_missing}")
        self.max_missing = max_missing
        self._loading = ""  # the file being loaded, for error messages
        self._already_read: tuple[str, dict] | None = None  # a file read while choosing what to resume from

    # ----- reading -----

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Detectron2's load, with a one-line FileNotFoundError for a file that is not there."""
        if path and not os.path.isfile(path):
            try:
                local = self.path_manager.get_local_path(path)  # URLs and detectron2:// names are fetched
            except Exception as error:  # iopath raises various errors for unreachable URLs
                raise FileNotFoundError(f"checkpoint {path!r} cannot be fetched: {one_line(error)}") from error
            check_checkpoint_path(local)
            path = local
        self._loading = path
        try:
            return super().load(path, checkpointables)
        finally:
            self._loading = ""

    def _load_file(self, filename: str) -> dict[str, Any]:
        """{"model": state dict, ...} from a .pth/.safetensors/.pkl/.pyth file, as DetectionCheckpointer returns it."""
        if self._already_read is not None and self._already_read[0] == filename:
            loaded, self._already_read = self._already_read[1], None
            return loaded
        try:
            loaded = load_checkpoint_file(filename)
        except UnreadableCheckpointError as error:
            if _holds_official_weights(filename):
                raise CheckpointLayoutError(f"{error}. {_convert_hint(filename)}") from error
            raise
        if filename.endswith(".pkl"):
            if "model" in loaded and "__author__" in loaded:  # Detectron2 model-zoo format
                self.logger.info("Reading a file from '%s'", loaded["__author__"])
                return loaded
            blobs = loaded.get("blobs", loaded)  # Caffe2 / Detectron1 model zoo
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            if "model_state" not in loaded:
                raise CheckpointLayoutError(f"checkpoint {filename!r}: a pycls .pyth file must hold 'model_state'")
            state = {k: v for k, v in loaded["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return loaded if isinstance(loaded.get("model"), dict) else {"model": loaded}

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        """Load the weights; CheckpointLayoutError when more than `max_missing` of the model's tensors are not in
        them, or when an entry is not an array."""
        path = self._loading or "checkpoint"
        weights = checkpoint["model"]
        for key, value in weights.items():
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                kind = type(value).__name__
                raise CheckpointLayoutError(f"{path}: entry {key!r} of its weights is a {kind}, not a tensor")
        model_keys = list(self.model.state_dict())
        weights = checkpoint["model"] = detector_backbone_for(weights, model_keys, self.logger, path)
        file_keys = list(weights)
        incompatible = super()._load_model(checkpoint)
        shapes = [key for key, _, _ in incompatible.incorrect_shapes]  # also among missing_keys: not loaded
        missing = list(dict.fromkeys([*shapes, *incompatible.missing_keys]))
        if model_keys and len(missing) > self.max_missing * len(model_keys):
            raise CheckpointLayoutError(self._mismatch_message(path, missing, len(model_keys), file_keys))
        return incompatible

    def _mismatch_message(self, path: str, missing: list[str], num_model: int, file_keys: list[str]) -> str:
        share = f"{len(missing)} of the model's {num_model} tensors ({len(missing) / num_model:.0%})"
        message = f"{path} does not fit the model: {share} are missing from it or have another shape"
        if _official_keys(file_keys):
            return f"{message}. {_convert_hint(path)}"
        return f"{message} (first missing: {describe_keys(missing, 3)}; the file's keys: {describe_keys(file_keys, 3)})"

    # ----- saving -----

    def save(self, name: str, **kwargs: Any) -> None:
        """Detectron2's save, written to a temporary file and renamed: a kill leaves the old files as they were."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        write_atomically(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_atomically(
            os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename.encode())
        )

    # ----- resuming -----

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from the newest readable checkpoint when `resume` and `last_checkpoint` exists; else load `path`'s
        weights only."""
        if resume and self.has_checkpoint():
            return self.load(self._newest_readable_checkpoint())
        return self.load(path, checkpointables=[])

    def _newest_readable_checkpoint(self) -> str:
        """The file `last_checkpoint` names if it reads, else the newest readable .pth in save_dir (warning which and
        why); UnreadableCheckpointError when none reads. The file read is kept for the load that follows."""
        tagged = self.get_checkpoint_file()
        if os.path.normpath(tagged) == os.path.normpath(self.save_dir):
            tagged = ""  # an empty last_checkpoint
        others = sorted(self.get_all_checkpoint_files(), key=os.path.getmtime, reverse=True)
        candidates = ([tagged] if tagged else []) + [p for p in others if os.path.abspath(p) != os.path.abspath(tagged)]
        problems = [] if tagged else [f"{os.path.join(self.save_dir, 'last_checkpoint')} is empty"]
        for candidate in candidates:
            try:
                self._already_read = (candidate, self._load_file(candidate))
            except (OSError, UnreadableCheckpointError) as error:
                problems.append(one_line(error))
                continue
            if problems:
                self.logger.warning("Resuming from %s instead: %s", candidate, "; ".join(problems))
            return candidate
        raise UnreadableCheckpointError(
            f"cannot resume: no readable checkpoint in {self.save_dir} ({'; '.join(problems) or 'no .pth file'})"
        )


_OFFICIAL_PREFIXES = tuple(prefix for prefixes in STAGE_MARKERS.values() for prefix in prefixes)


def detector_backbone_for(weights: dict, model_keys: list[str], logger: Any, path: str) -> dict:
    """`weights` as they are, or, for a detector's weights (FiberBackbone under `backbone.bottom_up.`) loaded into a
    model holding its FiberBackbone as `backbone.` (a coarse model), only the backbone's entries, renamed."""
    if any(key.startswith(DETECTOR_BACKBONE) for key in model_keys):
        return weights
    if not any(key.startswith(DETECTOR_BACKBONE) for key in weights):
        return weights
    backbone = {"backbone." + key[len(DETECTOR_BACKBONE):]: value for key, value in weights.items()
                if key.startswith(DETECTOR_BACKBONE)}
    logger.info("%s: a detector's weights: loading its backbone (%d of %d tensors), leaving out its FPN and head",
                path, len(backbone), len(weights))
    return backbone


def _official_keys(keys: list) -> bool:
    """Whether state-dict keys have the official FIBER layout (fusion_backbone.*, vit_model.*, ...)."""
    return any(strip_module_prefix(str(key)).startswith(_OFFICIAL_PREFIXES) for key in keys)


def _holds_official_weights(path: str) -> bool:
    """Whether a file torch.load(weights_only=True) refuses is an official FIBER checkpoint (a Lightning .ckpt names
    Lightning's classes); read with inert stand-ins, so nothing in it runs."""
    try:
        loaded = load_checkpoint_file(path, stand_in_unknown_globals=True)
    except (OSError, CheckpointLayoutError):
        return False
    entries = [loaded.get("model"), loaded.get("state_dict"), loaded]
    return any(isinstance(entry, dict) and _official_keys(list(entry)) for entry in entries)


def _convert_hint(path: str) -> str:
    return (
        f"It is an official FIBER checkpoint: convert it first with `python {CONVERTER} {path} converted.pth` "
        "and load converted.pth"
    )


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file next to `path`, sync it to disk, then rename it to `path`: `path` is either
    its old content or the whole new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as f:  # created with the umask's permissions, as `path` would be
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a crash
    finally:
        os.close(directory_fd)
