"""Load ImageNet Swin weights (official Microsoft Swin or timm checkpoints) into `swin.SwinTransformer`.

Official checkpoints put the patch merging at the end of stage s (`layers.s.downsample`), timm (>= 0.9) at the
start of stage s+1; both are mapped to ours (official). The classifier and the non-persistent buffers are dropped,
the final `norm` initialises the res5 output norm, and relative-position tables are resized bicubically when the
window differs (e.g. 7 -> 12). Fusion layers and other output norms are not in these checkpoints and keep their
initialisation.
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F

from fiber_d2.checkpoint.io import CheckpointLayoutError, describe_keys, load_state_dict_file

from .swin import SwinTransformer

logger = logging.getLogger(__name__)

_DROPPED = re.compile(r"(^head\.|relative_position_index$|attn_mask$|^absolute_pos_embed$)")
_NOT_IN_IMAGENET_CHECKPOINTS = re.compile(r"(\.i2t\.|^out_norms\.)")
_STRIPPED_PREFIXES = ("module.", "backbone.body.", "backbone.", "encoder.")


def resize_relative_position_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """[(2w-1)^2, heads] table -> [(2W-1)^2, heads] for window W, by bicubic interpolation over the 2D offset grid."""
    side = int(round(table.shape[0] ** 0.5))
    if side * side != table.shape[0]:
        raise CheckpointLayoutError(f"relative position table of {table.shape[0]} rows is not a square grid")
    new_side = 2 * window_size - 1
    if side == new_side:
        return table
    grid = table.T.reshape(1, -1, side, side).float()
    resized = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized.reshape(-1, new_side * new_side).T.to(table.dtype).contiguous()


def swin_checkpoint_to_ours(state_dict: dict[str, torch.Tensor], encoder: SwinTransformer) -> dict[str, torch.Tensor]:
    """Rename an official or timm Swin state dict to our keys (see module docstring); no loading."""
    for prefix in _STRIPPED_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    timm_layout = "layers.0.downsample.reduction.weight" not in state_dict and any(
        re.match(r"layers\.\d+\.downsample\.", key) for key in state_dict
    )
    converted = {}
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        if timm_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        if key.startswith("norm."):
            if "res5" not in encoder.out_norms:
                continue
            key = "out_norms.res5." + key[len("norm.") :]
        if key.endswith("relative_position_bias_table"):
            value = resize_relative_position_table(value, encoder.window_size)
        converted[key] = value
    return converted


def load_swin_weights(encoder: SwinTransformer, path: str) -> None:
    """Load an official/timm Swin checkpoint file (.pth or .safetensors) into `encoder`.

    Raises CheckpointLayoutError naming the first offending keys when the file is not a matching Swin.
    """
    state_dict = swin_checkpoint_to_ours(load_state_dict_file(path), encoder)
    own = encoder.state_dict()
    unexpected = sorted(key for key in state_dict if key not in own)
    mismatched = [  # in the model's order, so the first named is the first offending layer
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state_dict and state_dict[key].shape != own[key].shape
    ]
    missing = [key for key in own if key not in state_dict and not _NOT_IN_IMAGENET_CHECKPOINTS.search(key)]
    if unexpected or mismatched or missing:
        problems = []
        if unexpected:
            problems.append(f"unexpected keys: {describe_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {describe_keys(mismatched)}")
        if missing:
            problems.append(f"missing keys: {describe_keys(missing)}")
        raise CheckpointLayoutError(f"Swin checkpoint {path!r} does not fit this Swin config; " + "; ".join(problems))
    encoder.load_state_dict(state_dict, strict=False)
    logger.info("Loaded %d Swin tensors from %s", len(state_dict), path)
