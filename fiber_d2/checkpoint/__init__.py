"""Reading checkpoints safely, FiberCheckpointer (safe loads, atomic saves, resume fallback) and converting official
FIBER checkpoints to fiber_d2's names."""
from .checkpointer import FiberCheckpointer
from .io import CheckpointLayoutError, UnreadableCheckpointError, load_state_dict_file

__all__ = ["CheckpointLayoutError", "FiberCheckpointer", "UnreadableCheckpointError", "load_state_dict_file"]
