"""Write a trained checkpoint's model weights as a model-zoo file: safetensors, floating tensors in fp16 by default."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint.io import load_state_dict_file

__all__ = ["export_weights"]

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export_weights(checkpoint: str | os.PathLike, output: str | os.PathLike, dtype: str = "fp16") -> int:
    """Writes the model state dict in `checkpoint` (a Detectron2 .pth with a "model" entry, a bare state dict or a
    .safetensors file; read without running pickled code) to `output`, floating tensors cast to `dtype`, through a
    temporary file and a rename. Returns the file's size in bytes."""
    from safetensors.torch import save_file

    state = load_state_dict_file(str(checkpoint), keys=("model",))
    target = _DTYPES[dtype]
    tensors = {
        name: (value.to(target) if value.is_floating_point() else value).contiguous() for name, value in state.items()
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    save_file(tensors, str(temporary), metadata={"format": "pt", "source": os.path.basename(checkpoint)})
    os.replace(temporary, output)
    return output.stat().st_size
