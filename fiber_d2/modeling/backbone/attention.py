"""Multi-head attention through `torch.nn.functional.scaled_dot_product_attention`, shared by every attention here."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., L, H*D] -> [..., H, L, D]."""
    *lead, length, dim = x.shape
    return x.view(*lead, length, num_heads, dim // num_heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., H, L, D] -> [..., L, H*D]."""
    *lead, heads, length, dim = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * dim)


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention over projected inputs.

    query: [..., Lq, C]; key/value: [..., Lk, C] (C = num_heads * head_dim, scale 1/sqrt(head_dim)).
    bias: additive logits broadcastable to [..., num_heads, Lq, Lk] (relative position bias, masks as large negatives).
    Returns [..., Lq, C].
    """
    out = F.scaled_dot_product_attention(
        split_heads(query, num_heads),
        split_heads(key, num_heads),
        split_heads(value, num_heads),
        attn_mask=bias,
        dropout_p=dropout_p,
    )
    return merge_heads(out)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] mask (1 = token, 0 = padding) -> [B, 1, 1, L] additive bias (0 or the dtype's most negative value)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
