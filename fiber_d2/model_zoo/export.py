"""Write a trained checkpoint's model weights as a model-zoo file (safetensors, floating tensors in fp16 by default),
and next to them the tokenizer it was trained with and a VQA model's answer classes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..checkpoint.io import load_state_dict_file

__all__ = ["export_answer_vocabulary", "export_tokenizer", "export_weights"]

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


# the VQA classifier's last layer (CoarseHeads.vqa: Linear, LayerNorm, GELU, Linear -> answers)
VQA_CLASSIFIER = "heads.vqa.3.weight"


def export_tokenizer(source: str | os.PathLike, target: str | os.PathLike) -> dict[str, str]:
    """Copy the tokenizer directory `source` (its files) to `target`, which several zoo models may share: a `target`
    that already exists must hold the same files with the same bytes (a ValueError naming the first that differs).
    Returns {file name: sha256} of `target`'s files, for the manifest."""
    from .model_zoo import sha256_of

    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise ValueError(f"tokenizer directory {source} does not exist")
    names = sorted(child.name for child in source.iterdir() if child.is_file())
    if not names:
        raise ValueError(f"tokenizer directory {source} holds no files")
    digests = {name: sha256_of(source / name) for name in names}
    if target.exists():
        held = sorted(child.name for child in target.iterdir())
        if held != names:
            raise ValueError(f"{target} holds {held}, the tokenizer {source} has {names}: another model's tokenizer")
        for name in names:
            if sha256_of(target / name) != digests[name]:
                raise ValueError(f"{target / name} differs from {source / name}: another model's tokenizer")
    else:
        temporary = target.with_name(target.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        for name in names:
            shutil.copyfile(source / name, temporary / name)
        os.replace(temporary, target)
    return digests


def export_answer_vocabulary(config_path: str, weights: str | os.PathLike, output: str | os.PathLike) -> int:
    """Writes the answer classes of the zoo config `config_path` (relative to configs/; its MODEL.FIBER.VQA.
    ANSWER_VOCABULARY or the answers of its DATASETS.TRAIN, read from $DETECTRON2_DATASETS) to `output` as a JSON list,
    after checking that the exported `weights` classify into that many answers. The order is the training data's: run
    it on the data the model was trained on. Returns the number of answers."""
    from safetensors import safe_open

    from ..data.vqa_vocabulary import answer_vocabulary_from_config
    from .model_zoo import get_config

    answers = answer_vocabulary_from_config(get_config(config_path))
    with safe_open(str(weights), framework="pt") as f:
        if VQA_CLASSIFIER not in f.keys():
            raise ValueError(f"{weights} has no VQA classifier ({VQA_CLASSIFIER}): not a VQA model")
        classes = f.get_slice(VQA_CLASSIFIER).get_shape()[0]
    if classes != len(answers):
        raise ValueError(
            f"{weights} classifies into {classes} answers but {config_path}'s training data gives {len(answers)}: "
            "set DETECTRON2_DATASETS to the data the model was trained on"
        )
    output = Path(output)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(answers, indent=0) + "\n", encoding="utf-8")
    os.replace(temporary, output)
    return len(answers)
