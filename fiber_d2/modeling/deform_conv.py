"""Modulated deformable 3x3 convolution (DCNv2) with a fast CPU path.

torchvision's `deform_conv2d` is exact but its CPU kernels (the backward pass above all) are slow: they made the
DyHead most of a training step on 2 cores. On CPU we sample the input at the deformed kernel positions with one
`grid_sample` call (bilinear, zeros outside the image, the same rule as the DCN kernels), weight the samples by the
mask, and contract them with the weights in one matrix multiply; autograd gives the gradients. On GPU torchvision's
op is used. `modulated_deform_conv` picks the path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


def deform_conv_sampled(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> torch.Tensor:
    """DCNv2 by sampling + matmul. x [B, C, H, W]; offset [B, 2*k*k, Ho, Wo] as (dy, dx) per kernel position
    (row-major); mask [B, k*k, Ho, Wo]; weight [C', C, k, k] -> [B, C', Ho, Wo]. One offset group, no dilation."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kernel_h * kernel_w
    device, dtype = x.device, x.dtype
    base_y = torch.arange(out_h, device=device, dtype=dtype) * stride - padding
    base_x = torch.arange(out_w, device=device, dtype=dtype) * stride - padding
    kernel_y, kernel_x = torch.meshgrid(
        torch.arange(kernel_h, device=device, dtype=dtype),
        torch.arange(kernel_w, device=device, dtype=dtype),
        indexing="ij",
    )
    offset = offset.view(batch, taps, 2, out_h, out_w)
    y = base_y.view(1, 1, out_h, 1) + kernel_y.reshape(1, taps, 1, 1) + offset[:, :, 0]  # [B, taps, Ho, Wo]
    x_pos = base_x.view(1, 1, 1, out_w) + kernel_x.reshape(1, taps, 1, 1) + offset[:, :, 1]
    # Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False: pixel i is centred at (2i + 1) / size - 1).
    grid = torch.stack([(2 * x_pos + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    samples = F.grid_sample(
        x, grid.view(batch, taps * out_h, out_w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [B, C, taps*Ho, Wo]
    columns = samples.view(batch, channels, taps, out_h * out_w) * mask.reshape(batch, 1, taps, out_h * out_w)
    out = weight.view(out_channels, channels * taps) @ columns.view(batch, channels * taps, out_h * out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(batch, out_channels, out_h, out_w)


def modulated_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> torch.Tensor:
    """DCNv2 (see `deform_conv_sampled` for shapes): the sampling path on CPU, torchvision's kernel elsewhere."""
    if x.device.type == "cpu":
        return deform_conv_sampled(x, offset, mask, weight, bias, stride, padding)
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
