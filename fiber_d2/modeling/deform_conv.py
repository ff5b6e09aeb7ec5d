"""Modulated deformable convolution (DCNv2) with a fast CPU path.

torchvision's `deform_conv2d` is exact but its CPU kernels (the backward pass above all) are slow: they made the
DyHead most of a training step on 2 cores. On CPU, `deform_conv_sampled` splits the convolution into two parts:
- a gather. Every (output position, kernel tap) sample is a bilinear blend of 4 input pixels. Their row indices in the
  channels-last input [B*H*W, C] and their weights are computed once per sample. The mask is folded into the weights,
  and a corner outside the image gets weight 0 (index clamped), which is the DCN kernels' rule. One
  `F.embedding_bag(mode="sum")` call then blends whole C-rows: it gives the columns, one C-row per sample.
- a contraction of the columns with the weights. With autograd (training), the columns form a matrix
  [B*Ho*Wo, k*k*C] and the contraction is one matrix multiply. Without autograd (inference), the columns form an image
  [B, C, k*Ho, k*Wo] in which output (i, j) reads the k x k block at (k*i, k*j), and the contraction is a k x k
  convolution with stride k. oneDNN's convolution is about 1.25x faster than the matrix multiply there, but its
  weight gradient at stride k is about 4x slower, which is why training uses the matrix multiply.
Autograd gives the gradients: the scatter of `embedding_bag`'s backward and two matrix multiplies. On GPU,
torchvision's op is used. `modulated_deform_conv` picks the path. docs/BENCHMARKS.md (`dcn`) has the timings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


def bilinear_corners(
    offset: torch.Tensor, mask: torch.Tensor, height: int, width: int, kernel: tuple[int, int], stride: int,
    padding: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 bilinear corners of every deformed sample of a DCN over an input of height x width.

    offset [B, 2*k*k, Ho, Wo] as (dy, dx) per tap (row-major); mask [B, k*k, Ho, Wo] ->
    (index, weight), each [B, k*k, Ho, Wo, 4]. index: rows of the input as [B*H*W, C] (image b's rows start at
    b*H*W); weight: the bilinear weight times the mask, 0 for a corner outside the image (its index is clamped).
    Only `weight` carries gradients (to offset and mask).
    """
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel
    taps = kernel_h * kernel_w
    device = offset.device
    tap_y, tap_x = torch.meshgrid(torch.arange(kernel_h, device=device), torch.arange(kernel_w, device=device),
                                  indexing="ij")
    grid_y = tap_y.reshape(taps, 1, 1) + (torch.arange(out_h, device=device) * stride - padding).view(1, out_h, 1)
    grid_x = tap_x.reshape(taps, 1, 1) + (torch.arange(out_w, device=device) * stride - padding).view(1, 1, out_w)
    undeformed = torch.stack(torch.broadcast_tensors(grid_y, grid_x), dim=1)  # [taps, 2, Ho, Wo] as (y, x)
    # At least float32, under autocast too: a bfloat16 position 100 px from the origin would be 0.5 px coarse.
    dtype = torch.promote_types(offset.dtype, torch.float32)
    position = offset.reshape(batch, taps, 2, out_h, out_w).to(dtype) + undeformed.to(dtype)
    low = position.detach().floor()
    fraction = position - low
    # Per axis, the corners below and above the sample and their weights: [B, taps, 2 (y, x), Ho, Wo, 2].
    corner = low.long().unsqueeze(-1) + torch.arange(2, device=device)
    size = torch.tensor([height, width], device=device).view(2, 1, 1, 1)
    axis_weight = torch.stack([1 - fraction, fraction], dim=-1) * ((corner >= 0) & (corner < size))
    corner = torch.minimum(corner.clamp(min=0), size - 1)
    index = corner[:, :, 0, ..., :, None] * width + corner[:, :, 1, ..., None, :]  # [B, taps, Ho, Wo, 2, 2]
    index = index + (torch.arange(batch, device=device) * (height * width)).view(batch, 1, 1, 1, 1, 1)
    weight = axis_weight[:, :, 0, ..., :, None] * axis_weight[:, :, 1, ..., None, :]
    weight = weight * mask.reshape(batch, taps, out_h, out_w, 1, 1).to(dtype)
    return index.view(batch, taps, out_h, out_w, 4), weight.view(batch, taps, out_h, out_w, 4)


def deform_conv_sampled(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> torch.Tensor:
    """DCNv2 by a bilinear gather + one contraction (see the module doc). x [B, C, H, W]; offset [B, 2*k*k, Ho, Wo]
    as (dy, dx) per kernel position (row-major); mask [B, k*k, Ho, Wo]; weight [C', C, k, k]; bias [C'] or None ->
    [B, C', Ho, Wo]. One offset group, no dilation."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    index, corner_weight = bilinear_corners(offset, mask, height, width, (kernel_h, kernel_w), stride, padding)
    rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, channels)
    corner_weight = corner_weight.to(rows.dtype)  # the gather in the input's dtype (e.g. under autocast)
    with_autograd = torch.is_grad_enabled() and any(
        tensor is not None and tensor.requires_grad for tensor in (x, offset, mask, weight, bias)
    )
    # Column order: (b, i, j, tap_y, tap_x) for the matrix, (b, i, tap_y, j, tap_x) for the image.
    order = (0, 3, 4, 1, 2, 5) if with_autograd else (0, 3, 1, 4, 2, 5)
    index, corner_weight = (
        tensor.view(batch, kernel_h, kernel_w, out_h, out_w, 4).permute(order).reshape(-1, 4)
        for tensor in (index, corner_weight)
    )
    columns = F.embedding_bag(index, rows, per_sample_weights=corner_weight, mode="sum")  # [B*Ho*Wo*k*k, C]
    if not with_autograd:
        image = columns.view(batch, out_h * kernel_h, out_w * kernel_w, channels).permute(0, 3, 1, 2)
        return F.conv2d(image, weight, bias, stride=(kernel_h, kernel_w)).contiguous()
    matrix = weight.permute(0, 2, 3, 1).reshape(out_channels, -1).t()  # [(tap_y, tap_x, c), C']
    columns = columns.view(batch * out_h * out_w, -1)
    out = columns @ matrix if bias is None else torch.addmm(bias, columns, matrix)
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2).contiguous()


def modulated_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> torch.Tensor:
    """DCNv2 (see `deform_conv_sampled` for shapes): the gather path on CPU, torchvision's kernel elsewhere."""
    if x.device.type == "cpu":
        return deform_conv_sampled(x, offset, mask, weight, bias, stride, padding)
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
