"""Swin Transformer image encoder (any input size, outputs at strides 4/8/16/32) that runs one block at a time.

Parameter names follow the official Swin / FIBER layout (`layers.{stage}.blocks.{block}.attn.qkv`, the patch merging
at the end of its stage as `layers.{stage}.downsample`), so official checkpoints map one to one. Blocks whose
`i2t` is set are fused: `attention.ImageToTextAttention` adds the gated image-to-text attention to the window
self-attention output before the residual.

The encoder is stepped through `ImageState`s so that a caller can run the text-independent lower blocks once and the
fused upper blocks many times (see `fusion.run_fused_layers`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import ImageToTextAttention, multi_head_attention

# Logit added between tokens of different regions in a shifted window (the official value).
SHIFTED_WINDOW_MASK_VALUE = -100.0


@dataclasses.dataclass(frozen=True)
class ImageState:
    """The image stream between two blocks.

    tokens: [B, H*W, C] input of the next block; size: (H, W) token grid; stage/block: position of the next block
    (stage == number of stages when all blocks ran); outputs: stage outputs recorded so far, name -> [B, C, H, W];
    shift_mask: this stage's shifted-window mask [nW, N, N] (or None when the stage has no shifted block).
    """

    tokens: torch.Tensor
    size: tuple[int, int]
    stage: int
    block: int
    outputs: dict[str, torch.Tensor]
    shift_mask: torch.Tensor | None = None

    def expand(self, batch_size: int) -> "ImageState":
        """The same single-image state repeated `batch_size` times (views, no copies)."""
        return dataclasses.replace(
            self,
            tokens=self.tokens.expand(batch_size, -1, -1),
            outputs={name: out.expand(batch_size, -1, -1, -1) for name, out in self.outputs.items()},
        )

    def select(self, index: torch.Tensor) -> "ImageState":
        """The state of samples `index` [P] (a sample may repeat)."""
        return dataclasses.replace(
            self, tokens=self.tokens[index], outputs={name: out[index] for name, out in self.outputs.items()}
        )

    @classmethod
    def cat(cls, states: Sequence["ImageState"]) -> "ImageState":
        """The states of several batches of images of one size, at the same block, as one batch (samples in order)."""
        places = {(state.size, state.stage, state.block) for state in states}
        if len(places) != 1:
            raise ValueError(f"image states of different sizes or blocks {sorted(places)} cannot be batched")
        first = states[0]
        return dataclasses.replace(
            first,
            tokens=torch.cat([state.tokens for state in states]),
            outputs={name: torch.cat([state.outputs[name] for state in states]) for name in first.outputs},
        )


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv + LayerNorm; pads the image right/bottom to a multiple of the patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images: [B, 3, H, W] -> tokens [B, ceil(H/p)*ceil(W/p), C] and the token grid size."""
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % self.patch_size, (-width) % self.patch_size
        x = self.proj(F.pad(images, (0, pad_w, 0, pad_h)))
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (padding odd sizes) -> LayerNorm(4C) -> Linear(4C -> 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C] and the new grid size."""
        height, width = size
        x = x.view(x.shape[0], height, width, -1)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        new_size = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.flatten(1, 2))), new_size


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer(
            "relative_position_index", get_relative_position_index(window_size, window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """[1, heads, N, N] with N = window_size**2."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)[None]

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: [B, nW, N, C]; mask: [nW, N, N] additive or None. Returns [B, nW, N, C].

        Runs as one 4D attention over B*nW windows with a 4D bias: scaled_dot_product_attention takes its fast CPU
        path for those (5D inputs or a 3D bias were 2-3x slower when measured).
        """
        batch, num_windows, n, channels = windows.shape
        bias = self.relative_position_bias()
        if mask is not None:
            bias = (bias + mask[:, None]).repeat(batch, 1, 1, 1)  # [B*nW, heads, N, N], windows batch-major
        query, key, value = self.qkv(windows.flatten(0, 1)).chunk(3, dim=-1)
        attended = multi_head_attention(query, key, value, self.num_heads, bias=bias)
        return self.proj(attended).view(batch, num_windows, n, channels)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block; pads its grid to a multiple of the window and crops back.

    x~ = W-MSA(LN1(x)) [+ alpha * CrossAttn(x~, text) when fused]; x = x + x~; x = x + MLP(LN2(x)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool,
        mlp_ratio: float,
        drop_path: float,
        text_dim: int | None = None,
        i2t_query_norm: bool = False,
        unshift_single_window: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shifted = shifted
        self.unshift_single_window = unshift_single_window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.i2t = (
            ImageToTextAttention(dim, num_heads, text_dim, with_query_norm=i2t_query_norm)
            if text_dim is not None
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        size: tuple[int, int],
        shift_mask: torch.Tensor | None,
        text: torch.Tensor | None = None,
        text_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, H*W, C]; shift_mask: [nW, N, N] (used when this block is shifted); text: [B, T, D] or None."""
        height, width = size
        batch, _, channels = x.shape
        win = self.window_size
        shift = self.shift_size(size)
        y = self.norm1(x).view(batch, height, width, channels)
        y = F.pad(y, (0, 0, 0, (-width) % win, 0, (-height) % win))
        padded_h, padded_w = y.shape[1], y.shape[2]
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, (win, win)).view(batch, -1, win * win, channels)
        windows = self.attn(windows, shift_mask if shift else None)
        y = window_reverse(windows.view(-1, win, win, channels), (win, win), padded_h, padded_w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :height, :width].reshape(batch, height * width, channels)
        if text is not None:
            if self.i2t is None:
                raise ValueError("text was given to a Swin block that has no image-to-text attention")
            y = self.i2t(y, text, text_bias)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def shift_size(self, size: tuple[int, int]) -> int:
        """Half a window for odd blocks (none where `unshift_single_window` and the grid fits in one window)."""
        if not self.shifted or (self.unshift_single_window and max(size) <= self.window_size):
            return 0
        return self.window_size // 2


def shifted_window_mask(size: tuple[int, int], window_size: int, device: torch.device) -> torch.Tensor:
    """[nW, N, N] additive mask for shifted windows over a grid padded to a multiple of the window.

    Tokens that came from different regions of the rolled grid get SHIFTED_WINDOW_MASK_VALUE.
    """
    shift = window_size // 2
    padded_h = -(-size[0] // window_size) * window_size
    padded_w = -(-size[1] // window_size) * window_size
    region = torch.zeros((1, padded_h, padded_w, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        region[:, rows, cols, :] = index
    region = window_partition(region, (window_size, window_size)).view(-1, window_size * window_size)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFTED_WINDOW_MASK_VALUE)


class SwinStage(nn.Module):
    """The blocks of one resolution, then the patch merging into the next (none after the last stage)."""

    def __init__(self, blocks: Sequence[SwinBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class SwinTransformer(nn.Module):
    """Swin image encoder.

    Args:
        embed_dim: channels of stage 1 (doubles each stage); depths/num_heads: per stage; window_size: in tokens.
        fused_blocks: number of top blocks (counted over all stages) that get an image-to-text attention.
        text_dim: text hidden size the fused blocks attend to. i2t_query_norm: FIBER v3 / coarse LayerNorm.
        out_features: stage outputs to return ("res2".."res5", strides 4..32), each after its own LayerNorm.
        unshift_single_window: skip the shift where a stage's grid fits in one window (timm's classification Swin,
            which FIBER's coarse stage uses); the detection Swin always shifts odd blocks.
        ape_grid: G > 0 adds Swin's absolute position embedding (`ape`, off in FIBER): a learnable [C, G, G] grid
            added to the patch embeddings, resized (bicubic) to each image's token grid. 0: none.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        patch_size: int = 4,
        fused_blocks: int = 0,
        text_dim: int = 768,
        i2t_query_norm: bool = False,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        unshift_single_window: bool = False,
        ape_grid: int = 0,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length")
        total = sum(depths)
        if not 0 <= fused_blocks <= total:
            raise ValueError(f"fused_blocks={fused_blocks} must lie in [0, {total}] (the number of Swin blocks)")
        self.window_size = window_size
        self.gradient_checkpointing = False  # recompute each block in the backward pass (saves activation memory)
        self.depths = tuple(depths)
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.stage_names = [f"res{i + 2}" for i in range(len(depths))]
        self.strides = {name: patch_size * 2**i for i, name in enumerate(self.stage_names)}
        unknown = sorted(set(out_features) - set(self.stage_names))
        if unknown:
            raise ValueError(f"unknown Swin out_features {unknown}; choose from {self.stage_names}")
        self.out_features = [name for name in self.stage_names if name in out_features]

        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.absolute_pos_embed = None
        if ape_grid > 0:
            grid = torch.zeros(1, embed_dim, ape_grid, ape_grid)
            self.absolute_pos_embed = nn.Parameter(trunc_normal_(grid, std=0.02))
        drop_path = torch.linspace(0, drop_path_rate, total).tolist()
        first_fused = total - fused_blocks
        layers, index = [], 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = self.num_features[stage]
            blocks = []
            for block in range(depth):
                fused = index >= first_fused
                blocks.append(
                    SwinBlock(
                        dim,
                        heads,
                        window_size,
                        shifted=block % 2 == 1,
                        mlp_ratio=mlp_ratio,
                        drop_path=drop_path[index],
                        text_dim=text_dim if fused else None,
                        i2t_query_norm=i2t_query_norm,
                        unshift_single_window=unshift_single_window,
                    )
                )
                index += 1
            last = stage == len(depths) - 1
            layers.append(SwinStage(blocks, None if last else PatchMerging(dim)))
        self.layers = nn.ModuleList(layers)
        self.out_norms = nn.ModuleDict(
            {name: nn.LayerNorm(self.num_features[self.stage_names.index(name)]) for name in self.out_features}
        )
        self.apply(_init_weights)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def feature_dims(self) -> list[int]:
        """Channels of the tokens entering each block, in running order."""
        return [self.num_features[stage] for stage, depth in enumerate(self.depths) for _ in range(depth)]

    def embed(self, images: torch.Tensor) -> ImageState:
        """images: [B, 3, H, W] (normalised) -> the state before the first block."""
        if images.dim() != 4 or images.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f"images must be [batch, 3, height, width], got {tuple(images.shape)}")
        tokens, size = self.patch_embed(images)
        if self.absolute_pos_embed is not None:
            grid = self.absolute_pos_embed
            if tuple(grid.shape[-2:]) != size:
                grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
            tokens = tokens + grid.flatten(2).transpose(1, 2)
        return self._enter_stage(tokens, size, stage=0, outputs={})

    def step(
        self, state: ImageState, text: torch.Tensor | None = None, text_bias: torch.Tensor | None = None
    ) -> ImageState:
        """Run the next block (fused when `text` is given); after a stage's last block, record it and downsample."""
        if state.stage >= len(self.layers):
            raise RuntimeError("every Swin block has already run")
        stage = self.layers[state.stage]
        block = stage.blocks[state.block]
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            tokens = checkpoint(block, state.tokens, state.size, state.shift_mask, text, text_bias, use_reentrant=False)
        else:
            tokens = block(state.tokens, state.size, state.shift_mask, text=text, text_bias=text_bias)
        if state.block + 1 < len(stage.blocks):
            return dataclasses.replace(state, tokens=tokens, block=state.block + 1)
        outputs = dict(state.outputs)
        name = self.stage_names[state.stage]
        if name in self.out_norms:
            height, width = state.size
            normed = self.out_norms[name](tokens)
            outputs[name] = normed.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
        if stage.downsample is None:
            return ImageState(tokens, state.size, state.stage + 1, 0, outputs)
        tokens, size = stage.downsample(tokens, state.size)
        return self._enter_stage(tokens, size, state.stage + 1, outputs)

    def run(self, state: ImageState, num_blocks: int) -> ImageState:
        """Run `num_blocks` more blocks without text."""
        for _ in range(num_blocks):
            state = self.step(state)
        return state

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unfused image encoder: images [B, 3, H, W] -> {name: [B, C, H/stride, W/stride]}."""
        return self.run(self.embed(images), self.num_blocks).outputs

    def _enter_stage(
        self, tokens: torch.Tensor, size: tuple[int, int], stage: int, outputs: dict[str, torch.Tensor]
    ) -> ImageState:
        """State at block 0 of `stage`, with that stage's shifted-window mask."""
        shifts = any(block.shift_size(size) for block in self.layers[stage].blocks)
        mask = shifted_window_mask(size, self.window_size, tokens.device) if shifts else None
        return ImageState(tokens, size, stage, 0, outputs, mask)


def _init_weights(module: nn.Module) -> None:
    """Swin's init: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
