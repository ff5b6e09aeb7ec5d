"""The DyHead tower of FIBER's grounding head (GLIP's VLDyHead without language inside the head; Dai et al. 2021).

One layer (official `DyConv` in `maskrcnn_benchmark/modeling/rpn/vldyhead.py`), for every FPN level l (finest first):
- spatial attention: three 3x3 modulated deformable convolutions (DCNv2) + GroupNorm: `convs[1]` on level l
  (stride 1), `convs[2]` on the finer level l-1 (stride 2) and `convs[0]` on the coarser level l+1 (stride 1, then
  resized to level l's size with `F.upsample_bilinear`, i.e. bilinear with align_corners=True). All three use the
  offsets and masks of one 3x3 conv on level l (`offset`, 27 channels: 18 offsets as (dy, dx) pairs per kernel tap,
  9 mask logits that go through a sigmoid);
- scale attention: each branch is weighted by hard_sigmoid(ReLU(conv1x1(avgpool(branch)))), then the branches
  (1 to 3 of them) are averaged;
- task attention: dynamic ReLU (K=2), max(x * a1 + b1, x * a2 + b2) with per-channel a, b from the pooled input.

Offsets for an output of another size (the coarser branch). The official DCN (`ModulatedDeformConv`, CUDA kernel
`modulated_deform_conv_cuda_forward` in `csrc/cuda/deform_conv_cuda.cu`) does not check the offset's or the mask's
shape: for each image b it hands `offset[b]` / `mask[b]` to `modulated_deformable_im2col_cuda`, which indexes them
as contiguous [18, h_out, w_out] / [9, h_out, w_out] arrays. The coarser branch's output (level l+1's size) is
smaller than the offsets (level l's size), so it reads the first 18*h_out*w_out (9*h_out*w_out) values of image b's
offsets (masks), in (channel, row, column) order, as if they were laid out for the small output; images never mix.
`official_offset_layout` reproduces exactly that reading, so official weights give the official outputs.
torchvision's op checks shapes; an output larger than the offsets (the official kernel would read past the image)
raises a ValueError. The finer branch's stride-2 output has level l's size for FPN maps (ceil halving).

Initialisation follows the official code (`DyConv.init_weights`, `ModulatedDeformConv.reset_parameters`), whose
init only touches `nn.Conv2d` modules inside `DyConv` and `AttnConv`:
- deformable convs (not `nn.Conv2d` in the official code): weight uniform(+-1/sqrt(9*C)), bias 0;
- plain convs (`deformable=False`): weight normal(0, 0.01), bias 0;
- scale-attention conv: normal(0, 0.01), bias 0;
- the dynamic ReLU's linear layers: PyTorch's default init; GroupNorm: weight 1, bias 0.
One deliberate deviation: the offset conv is zero-initialised (offsets 0, masks 0.5: training starts from a plain
convolution), as DCNv2's own `ModulatedDeformConvPack.init_offset` does. The official DyConv leaves it at PyTorch's
default init, i.e. random offsets at the start; with that, a 60-step one-batch overfit of the micro detector no longer
brings the box loss down enough. Loaded official weights overwrite it either way.

Parameter names map 1:1 onto the official ones by renaming (`OFFICIAL_RENAMES`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import DeformJob, modulated_deform_convs

OFFSET_CHANNELS = 18  # (dy, dx) for each of the 9 kernel taps
MASK_CHANNELS = 9

# Official key fragment (under `rpn.head.dyhead_tower.{i}.`) -> ours (under `layers.{i}.`); plain substring renames,
# applied once each, map every official tower tensor onto ours (`.weight` / `.bias` suffixes unchanged).
OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("DyConv.", "convs."),  # DyConv.{0,1,2} -> convs.{0,1,2}; `.conv.` stays
    (".bn.", ".norm."),  # GroupNorm of each conv
    ("AttnConv.", "scale_attention."),  # AttnConv.1 (the 1x1 conv) -> scale_attention.1
    ("relu.fc.", "dyrelu.fc."),  # DYReLU fc.0 / fc.2 (fc.1 ReLU, fc.3 h_sigmoid have no tensors)
    # `offset.` is unchanged
)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6: 0 at or below -3, 1 at or above 3, linear between."""
    return F.relu6(x + 3.0) / 6.0


def official_offset_layout(values: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """[B, channels, H, W] -> [B, channels, height, width] as the official kernel reads it (see the module doc).

    Per image: the first channels*height*width values, in (channel, row, column) order. Identity when the sizes match.
    """
    if tuple(values.shape[-2:]) == (height, width):
        return values
    batch, available = values.shape[0], values.shape[1] * values.shape[2] * values.shape[3]
    needed = channels * height * width
    if needed > available:
        raise ValueError(
            f"deformable conv output {height}x{width} needs {needed} offset values per image, the offsets "
            f"{tuple(values.shape[1:])} have {available} (the official kernel would read past the image)"
        )
    return values.reshape(batch, available)[:, :needed].reshape(batch, channels, height, width)


class DyHeadConv(nn.Module):
    """3x3 convolution (modulated deformable, or plain) + GroupNorm; official `Conv3x3Norm` (`conv`, `bn`)."""

    def __init__(self, channels: int, stride: int, norm_groups: int, deformable: bool) -> None:
        super().__init__()
        self.stride = stride
        self.deformable = deformable
        # The same parameters (weight [C, C, 3, 3], bias [C]) either way; the deformable path only reads them.
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(norm_groups, channels)
        if deformable:
            bound = 1.0 / math.sqrt(channels * 9)
            nn.init.uniform_(self.conv.weight, -bound, bound)
        else:
            nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output map size for an input map of height x width (3x3, padding 1)."""
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, C, H, W]; offset [B, 18, h, w], mask [B, 9, h, w] (deformable only) -> [B, C, Ho, Wo]."""
        if not self.deformable:
            return self.norm(self.conv(x))
        if offset is None or mask is None:
            raise ValueError("a deformable DyHeadConv needs offset and mask")
        return self.norm(modulated_deform_convs([x], [self.deform_job(0, x.shape[-2:], offset, mask)])[0])

    def deform_job(
        self, source: int, size: tuple[int, int], offset: torch.Tensor, mask: torch.Tensor
    ) -> DeformJob:
        """This DCNv2 3x3 (padding 1) on input `source` of size (H, W), with offsets [B, 18, h, w] and masks
        [B, 9, h, w] laid out for its output as the official kernel reads them. On CPU a bilinear gather + one
        contraction (`deform_conv.py`: the same outputs, a much faster backward); torchvision's op elsewhere."""
        height, width = self.output_size(*size)
        return DeformJob(
            source,
            official_offset_layout(offset, OFFSET_CHANNELS, height, width),
            official_offset_layout(mask, MASK_CHANNELS, height, width),
            self.conv.weight,
            self.conv.bias,
            self.stride,
        )


class DynamicReLU(nn.Module):
    """DyReLU-B, K=2 (official `DYReLU`, lambda_a 1 -> 2, init_a (1, 0), init_b (0, 0)): x [B, C, H, W] -> same.

    (s_a1, s_b1, s_a2, s_b2) = split(hard_sigmoid(fc(avgpool(x))), C), in that order; then
    a1 = (s_a1 - 0.5) * 2 + 1, b1 = s_b1 - 0.5, a2 = (s_a2 - 0.5) * 2, b2 = s_b2 - 0.5 and
    out = max(x * a1 + b1, x * a2 + b2), per image and channel.
    """

    lambda_a = 2.0
    init_a = (1.0, 0.0)
    init_b = (0.0, 0.0)

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(), nn.Linear(channels // reduction, 4 * channels)
        )

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> a1, b1, a2, b2, each [B, C, 1, 1]."""
        s = hard_sigmoid(self.fc(x.mean(dim=(2, 3))))[:, :, None, None]
        s_a1, s_b1, s_a2, s_b2 = torch.split(s, self.channels, dim=1)
        a1 = (s_a1 - 0.5) * self.lambda_a + self.init_a[0]
        a2 = (s_a2 - 0.5) * self.lambda_a + self.init_a[1]
        b1 = s_b1 - 0.5 + self.init_b[0]
        b2 = s_b2 - 0.5 + self.init_b[1]
        return a1, b1, a2, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1, b1, a2, b2 = self.coefficients(x)
        return torch.maximum(x * a1 + b1, x * a2 + b2)


class DyHeadLayer(nn.Module):
    """One DyHead layer over all FPN levels (official `DyConv`: `DyConv.{0,1,2}`, `AttnConv`, `relu`, `offset`)."""

    def __init__(self, channels: int, norm_groups: int = 16, deformable: bool = True, dyrelu: bool = True) -> None:
        super().__init__()
        self.deformable = deformable
        # convs[0]: the coarser level (stride 1, then resized up); convs[1]: the same level; convs[2]: the finer level.
        self.convs = nn.ModuleList(DyHeadConv(channels, stride, norm_groups, deformable) for stride in (1, 1, 2))
        # The official module (its parameter names); `scale_weight` computes it.
        self.scale_attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, 1), nn.ReLU())
        nn.init.normal_(self.scale_attention[1].weight, std=0.01)
        nn.init.zeros_(self.scale_attention[1].bias)
        self.dyrelu: nn.Module = DynamicReLU(channels) if dyrelu else nn.ReLU()
        if deformable:
            self.offset = nn.Conv2d(channels, OFFSET_CHANNELS + MASK_CHANNELS, 3, padding=1)
            nn.init.zeros_(self.offset.weight)  # official: PyTorch's default init (see the module doc)
            nn.init.zeros_(self.offset.bias)

    def branch_inputs(self, num_levels: int) -> list[tuple[int, int, int]]:
        """The spatial-attention convolutions of one layer as (conv index, input level, output level), grouped by
        conv: `convs[1]` on every level, `convs[2]` from each finer level, `convs[0]` from each coarser level."""
        return (
            [(1, level, level) for level in range(num_levels)]
            + [(2, level - 1, level) for level in range(1, num_levels)]
            + [(0, level + 1, level) for level in range(num_levels - 1)]
        )

    def branches(self, features: list[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """Every spatial-attention convolution of the layer -> {(conv index, output level): [B, C, h, w]} (before the
        coarser branch is resized). Deformable: all in one `modulated_deform_convs` call (one gather on a CPU in
        training), each with the offsets and masks of its output level."""
        branches = self.branch_inputs(len(features))
        if not self.deformable:
            return {(conv, out): self.convs[conv](features[source]) for conv, source, out in branches}
        offsets, masks = [], []
        for feature in features:
            offset_mask = self.offset(feature)
            offsets.append(offset_mask[:, :OFFSET_CHANNELS])
            masks.append(offset_mask[:, OFFSET_CHANNELS:].sigmoid())
        jobs = [self.convs[conv].deform_job(source, features[source].shape[-2:], offsets[out], masks[out])
                for conv, source, out in branches]
        outputs = modulated_deform_convs(features, jobs)
        return {
            (conv, out): self.convs[conv].norm(output) for (conv, _, out), output in zip(branches, outputs)
        }

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: levels [B, C, H_l, W_l], finest first (level l+1 = ceil-halved level l) -> the same shapes."""
        computed = self.branches(features)
        outputs = []
        for level, feature in enumerate(features):
            branches = [computed[1, level]]
            if level > 0:
                branches.append(computed[2, level])
            if level < len(features) - 1:
                coarser = computed[0, level]
                branches.append(F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            # The mean of the branches, each weighted by its scale attention [B, 1, 1, 1].
            mixed = sum(branch * self.scale_weight(branch) for branch in branches) / len(branches)
            outputs.append(self.dyrelu(mixed))
        return outputs

    def scale_weight(self, branch: torch.Tensor) -> torch.Tensor:
        """branch [B, C, H, W] -> hard_sigmoid(ReLU(conv1x1(avgpool(branch)))) [B, 1, 1, 1]. The 1x1 convolution of a
        1x1 map is computed as the matrix product it is (in bfloat16 oneDNN's convolution took 0.34 ms per call here,
        against 0.09 in float32)."""
        conv = self.scale_attention[1]
        pooled = branch.mean(dim=(2, 3))
        return hard_sigmoid(F.relu(F.linear(pooled, conv.weight.flatten(1), conv.bias)))[:, :, None, None]


class DyHeadTower(nn.Module):
    """`num_layers` DyHead layers (official `dyhead_tower`): FPN levels [B, C, H_l, W_l] -> the same shapes."""

    def __init__(
        self, channels: int, num_layers: int, norm_groups: int = 16, deformable: bool = True, dyrelu: bool = True
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DyHeadLayer(channels, norm_groups, deformable, dyrelu) for _ in range(num_layers))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: levels [B, C, H_l, W_l], finest first -> the same shapes."""
        features = list(features)
        for layer in self.layers:
            features = layer(features)
        return features
