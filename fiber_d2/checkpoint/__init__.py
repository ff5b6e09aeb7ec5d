"""Reading checkpoints safely and converting official FIBER checkpoints to fiber_d2's names."""
from .io import CheckpointLayoutError, load_state_dict_file

__all__ = ["CheckpointLayoutError", "load_state_dict_file"]
