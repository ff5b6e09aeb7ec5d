"""What a resumed run needs besides the weights, optimizer and schedule: random generator states and data position.

TrainingStateHook puts into every checkpoint of the trainer (Detectron2 saves each hook's `state_dict`) the states
of Python's `random`, numpy's global generator, torch's CPU and CUDA generators, and the training loader's position
(when the loader has `state_dict`, as fiber_d2's ResumableTrainLoader does). `--resume` restores them, so with one
process, a fixed seed and DATALOADER.NUM_WORKERS 0 a resumed run ends with the same weights as an uninterrupted one.
With several processes only the main process's states are saved: the others keep the data position (the same for
every process without aspect-ratio grouping) and their own seeds.
States are plain tensors, numbers and lists, so checkpoints load with torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Iterator

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The states of Python's `random`, numpy's global generator and torch's CPU (and CUDA) generators."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning("CUDA generator states saved for %d devices, %d now: not restored",
                           len(state["cuda"]), torch.cuda.device_count())


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation during training) without changing any generator's state for what follows."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class TrainingStateHook(HookBase):
    """Saves and restores the generators' states and the training loader's position with the trainer's checkpoints
    (module docstring)."""

    def state_dict(self) -> dict[str, Any]:
        loader = self.trainer.data_loader
        return {
            "rng": rng_state(),
            "data_loader": loader.state_dict() if hasattr(loader, "state_dict") else {},
            "world_size": comm.get_world_size(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loader = self.trainer.data_loader
        if state["data_loader"] and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(state["data_loader"])
        else:
            logger.warning("Resuming without a saved data position: the training data order starts again")
        if comm.get_rank() == 0:
            set_rng_state(state["rng"])  # last: nothing above may draw from the restored generators
        if comm.get_world_size() > 1 or state["world_size"] > 1:
            logger.warning("Resuming with several processes: random states are restored for the main process only")
