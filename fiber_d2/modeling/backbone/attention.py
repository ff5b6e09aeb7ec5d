"""Multi-head attention through `torch.nn.functional.scaled_dot_product_attention`, shared by every attention here,
and FIBER's gated cross-attentions between the two encoders (ImageToTextAttention in the fused Swin blocks,
TextToImageAttention in the fused text layers; see fusion.py).

A gate frozen at exactly 0 (e.g. the text side of a detector trained with MODEL.FIBER.FREEZE.TEXT_LAYERS -1, whose
alpha_t2i never leaves its initial 0) adds nothing, so its cross-attention is skipped: the same output (for finite
inputs), and no forward or backward through it."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


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

    On a CPU the attention is written out (matrix multiplies, then the scores and softmax in float32 at least) in two
    cases, the same values to float rounding:
    - with a bias that needs a gradient (the Swin's relative position bias in training): scaled_dot_product_attention's
      CPU path for that case is its math path plus a guard for rows that are masked everywhere (`all` and `where` over
      the scores), which none of our biases makes (their masks are finite); 0.75-0.9x the CPU time forward and
      backward at FIBER-tiny's window shapes;
    - under autocast to a lower precision: the CPU flash kernel in bfloat16 is slower than in float32 (its backward
      2.3x at FIBER-tiny's cross-attention shapes), while bfloat16 matrix multiplies are about 2x faster than float32.
    """
    query, key, value = (split_heads(x, num_heads) for x in (query, key, value))
    if query.device.type == "cpu" and (
        torch.is_autocast_enabled("cpu") or (bias is not None and bias.requires_grad and torch.is_grad_enabled())
    ):
        scores = torch.matmul(query, key.transpose(-2, -1))
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)).mul_(query.shape[-1] ** -0.5)
        if bias is not None:
            scores = scores.add_(bias)
        probabilities = F.dropout(scores.softmax(-1), dropout_p) if dropout_p else scores.softmax(-1)
        out = torch.matmul(probabilities, value)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout_p)
    return merge_heads(out)


@functools.lru_cache(maxsize=16)
def grid_position_code(size: tuple[int, int], num_features: int, device: torch.device) -> torch.Tensor:
    """A fixed 2D sinusoidal code of each cell's centre in an (H, W) grid, row-major: [H*W, num_features] float32.

    Coordinates are the centre's (x, y) in [0, 1] of the grid's width and height; each axis gets sin and cos at
    num_features / 4 frequencies pi * 2^k (k = 0, 1, ...), so a code depends on where a cell is in its image, not on
    the grid's resolution. num_features must be a multiple of 4. Cached: every fused layer of every forward at one
    grid size reads the same constant tensor (do not modify it).
    """
    if num_features <= 0 or num_features % 4:
        raise ValueError(f"num_features must be a positive multiple of 4, got {num_features}")
    height, width = size
    with torch.inference_mode(False):  # a normal tensor even when first made under inference mode, so that training
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height  # can save it for backward
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        frequencies = torch.pi * 2.0 ** torch.arange(num_features // 4, device=device, dtype=torch.float32)
        angles = torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1)[:, :, None] * frequencies  # [H*W, 2, F]
        return torch.cat((angles.sin(), angles.cos()), dim=-1).reshape(height * width, num_features)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] mask (1 = token, 0 = padding) -> [B, 1, 1, L] additive bias (0 or the dtype's most negative value)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class _GatedCrossAttention(nn.Module):
    """A cross-attention whose output is scaled by the learnable scalar gate `alpha` (init 0; each subclass creates
    it last, which keeps the parameter order of earlier checkpoints' optimizer states)."""

    alpha: nn.Parameter
    _closed: tuple[tuple, bool] = ((), False)

    def gate_closed(self) -> bool:
        """Whether alpha is frozen (requires_grad False) at exactly 0. Its value is read from the device once per change
        (`_version` counts in-place writes, checkpoint loads included), not once per forward."""
        alpha = self.alpha
        if alpha.requires_grad:
            return False
        key = (alpha._version, alpha.data_ptr(), alpha.device)
        if self._closed[0] != key:
            self._closed = (key, not bool(alpha.detach().any()))
        return self._closed[1]


class ImageToTextAttention(_GatedCrossAttention):
    """Image tokens (queries) attend to all text tokens; output scaled by the gate `alpha` (init 0).

    dim: image channels of the stage; heads: the stage's head count; text_dim: text hidden size.
    `with_query_norm` adds a LayerNorm on the queries (FIBER fine v3 and the coarse stage; absent in fine v2).
    """

    def __init__(self, dim: int, num_heads: int, text_dim: int, with_query_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim) if with_query_norm else nn.Identity()
        self.query = nn.Linear(dim, dim)
        self.text_kv = nn.Linear(text_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor | None) -> torch.Tensor:
        """x: [B, N, dim] image tokens; text: [B, T, text_dim]; text_bias: [B, 1, 1, T] additive padding bias.

        Returns x + alpha * CrossAttn(x, text), [B, N, dim] (x itself when the gate is closed).
        """
        if self.gate_closed():
            return x
        key, value = self.text_kv(text).chunk(2, dim=-1)
        attended = multi_head_attention(self.query(self.norm(x)), key, value, self.num_heads, bias=text_bias)
        return x + self.alpha * self.proj(attended)


class TextToImageAttention(_GatedCrossAttention):
    """Text tokens (queries) attend to all image tokens of the paired stage; output scaled by `alpha` (init 0).

    hidden: text hidden size; image_dim: channels of the paired image stage. No image mask (as in FIBER).
    position_features: P > 0 adds `position_kv(grid_position_code(size, P))` to the keys and values, so that a text
    token reads where in the image the tokens it attends to are (not in FIBER, whose image tokens carry only Swin's
    relative positions within a window; DETR adds positions to its keys). `position_kv` starts at zero.
    """

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        image_dim: int,
        attention_dropout: float,
        dropout: float,
        position_features: int = 0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(image_dim, hidden)
        self.value = nn.Linear(image_dim, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.position_features = position_features
        self.position_kv = nn.Linear(position_features, 2 * hidden, bias=False) if position_features else None
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, a: torch.Tensor, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """a: [B, T, hidden] (self-attention output before residual and LayerNorm); image: [B, N, image_dim];
        size: the image tokens' (H, W) grid, H * W = N (needed with position_features).

        Returns a + alpha * CrossAttn(a, image), [B, T, hidden] (a itself when the gate is closed).
        """
        if self.gate_closed():
            return a
        key, value = self.key(image), self.value(image)
        if self.position_kv is not None:
            if size is None or size[0] * size[1] != image.shape[1]:
                raise ValueError(f"image grid size {size} does not match {image.shape[1]} image tokens")
            position_key, position_value = self.position_kv(
                grid_position_code(tuple(size), self.position_features, image.device)
            ).chunk(2, dim=-1)
            key, value = key + position_key, value + position_value
        attended = multi_head_attention(
            self.query(a),
            key,
            value,
            self.num_heads,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return a + self.alpha * self.dropout(self.dense(attended))
