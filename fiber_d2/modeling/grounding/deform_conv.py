"""Modulated deformable convolution (DCNv2) with a fast CPU path.

torchvision's `deform_conv2d` is exact but its CPU kernels (the backward pass above all) are slow: they made the
DyHead most of a training step on 2 cores. On CPU, `deform_conv_sampled` splits the convolution into two parts:
- a gather (`BilinearSampling`). Every (output position, kernel tap) sample is a bilinear blend of 4 input pixels.
  Their row indices in the channels-last input [B*H*W, C] and their weights are computed once per sample. The mask is
  folded into the weights, and a corner outside the image gets weight 0 (index clamped), which is the DCN kernels'
  rule. One `F.embedding_bag(mode="sum")` call then blends whole C-rows: it gives the columns, one C-row per sample.
- a contraction of the columns with the weights. With autograd (training), the columns form a matrix
  [B*Ho*Wo, k*k*C] and the contraction is one matrix multiply. Without autograd (inference), the columns form an image
  [B, C, k*Ho, k*Wo] in which output (i, j) reads the k x k block at (k*i, k*j), and the contraction is a k x k
  convolution with stride k. oneDNN's convolution is about 1.25x faster than the matrix multiply there, but its
  weight gradient at stride k is about 4x slower, which is why training uses the matrix multiply.
Inference (`sample_padded`) gathers from the input with a zero border instead: sample positions are clamped to the
border, where every corner reads 0 as in the DCN kernels, so no corner needs a validity test (the same values to the
bit; about 7% less model time for the zoo detector on referring expressions, docs/EXPERIMENTS.md).
The gather's backward is written out (`BilinearSampling.backward`): the input gradient is the transposed gather (the
samples grouped by the input row they read, by a stable int32 sort, then one `embedding_bag` over the column
gradients), and the sample weights' gradient gives the offsets' and the mask's through the bilinear formula, which at
a whole-pixel position is the one-sided derivative of the DCN kernels (corners floor(p) and floor(p) + 1). On 2 CPU
cores this is about 1.5x faster than autograd through `embedding_bag` and the weight formula. On GPU, torchvision's
op is used. `modulated_deform_conv` picks the path. docs/BENCHMARKS.md (`dcn`) has the timings.
Several convolutions with autograd (the 13 of a DyHead layer over 5 FPN levels) run as one gather over the rows of
all their inputs and one matrix multiply per weight (`deform_convs_sampled`, `modulated_deform_convs`): the same
values, with the per-call work (sort, sample-weight gradient, dispatch of some 100 small operations) done once.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


class AxisCorners(NamedTuple):
    """One axis of samples [B, S]: the low and high corner's coordinate clamped into the image (long), their bilinear
    weights (0 for a corner outside the image) and whether each lies inside it (1.0 or 0.0)."""

    low: torch.Tensor
    high: torch.Tensor
    low_weight: torch.Tensor
    high_weight: torch.Tensor
    low_inside: torch.Tensor
    high_inside: torch.Tensor


def axis_corners(position: torch.Tensor, size: int | torch.Tensor) -> AxisCorners:
    """Sample coordinates [B, S] along an axis of `size` pixels (an int, or a long tensor broadcastable to [B, S]:
    each sample's own) -> their `AxisCorners`. Every step runs on whole [B, S] tensors: PyTorch's elementwise loops
    do not vectorise small trailing axes such as (low, high)."""
    low = position.floor()
    fraction = position - low
    low_inside = ((low >= 0) & (low < size)).to(position.dtype)
    high_inside = ((low >= -1) & (low < size - 1)).to(position.dtype)
    low = low.long()
    return AxisCorners(
        low.clamp_min(0).clamp_max(size - 1), (low + 1).clamp_min(0).clamp_max(size - 1), (1 - fraction) * low_inside,
        fraction * high_inside, low_inside, high_inside,
    )


def bilinear_corners(
    position: torch.Tensor,
    mask: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 bilinear corners of samples of an image batch of height x width (no autograd).

    position [B, S, 2] as (y, x) in pixels of image b; mask [B, S] -> index [B*S, 4]: rows of the input as
    [B*H*W, C] (image b's rows start at b*H*W), corners (y0, x0), (y0, x1), (y1, x0), (y1, x1); weight [B*S, 4]: the
    bilinear weight times the mask, 0 for a corner outside the image (its index is clamped). Samples of images of
    several sizes: height, width and start (the row of the sample's image's first pixel), long tensors [B, S].
    """
    batch = mask.shape[0]
    y, x = axis_corners(position[..., 0], height), axis_corners(position[..., 1], width)
    if start is None:
        start = (torch.arange(batch, device=position.device) * (height * width)).view(batch, 1)
    top, bottom = y.low * width + start, y.high * width + start
    index = torch.stack([top + x.low, top + x.high, bottom + x.low, bottom + x.high], dim=-1)
    top, bottom = y.low_weight * mask, y.high_weight * mask  # the mask goes with the y weights
    weight = torch.stack([top * x.low_weight, top * x.high_weight, bottom * x.low_weight, bottom * x.high_weight], -1)
    return index.view(-1, 4), weight.view(-1, 4)


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> its rows channels last with a zero border, 1 pixel before and 2 after each axis:
    [B*(H+3)*(W+3), C] (the input of `sample_padded`)."""
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2, 1, 2)).reshape(-1, x.shape[1])


def sample_padded(
    rows: torch.Tensor, size: tuple[int, int], y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The gather of `BilinearSampling` without autograd, from `pad_rows` of a batch of H x W images (size (H, W)):
    y, x, mask, each [B, ...] (sample positions in pixels of image b, the mask) -> columns [B*..., C] in their order.
    Positions are clamped to [-1, H] x [-1, W]: a sample at or beyond -1 or H (W) then blends border pixels only,
    i.e. 0, the DCN kernels' rule, and the 4 corners of every sample are in the padded image. Each step runs on
    whole [B, ...] tensors (not on small (y, x) or corner axes, which PyTorch's elementwise loops do not vectorise)."""
    height, width = size
    batch = y.shape[0]
    padded_width = width + 3
    y, x = y.clamp(-1, height), x.clamp(-1, width)
    low_y, low_x = y.floor(), x.floor()
    fraction_y, fraction_x = y.sub_(low_y), x.sub_(low_x)
    # The (y0, x0) corner's row, computed in floating point: exact while the rows fit the mantissa.
    exact = torch.float64 if rows.shape[0] >= 2**24 else low_y.dtype
    start = torch.arange(batch, device=y.device, dtype=exact) * ((height + 3) * padded_width) + padded_width + 1
    start = start.view((batch,) + (1,) * (y.dim() - 1))
    first = (low_y.to(exact) * padded_width).add_(start).add_(low_x).long()
    index = torch.stack([first, first + 1, first + padded_width, first + (padded_width + 1)], dim=-1)
    top, bottom = (1 - fraction_y).mul_(mask), fraction_y * mask  # the mask goes with the y weights
    left, right = 1 - fraction_x, fraction_x
    weight = torch.stack([top * left, top * right, bottom * left, bottom * right], dim=-1)
    return F.embedding_bag(index.view(-1, 4), rows, per_sample_weights=weight.view(-1, 4).to(rows.dtype), mode="sum")


class BilinearSampling(torch.autograd.Function):
    """rows [B*H*W, C] (images of height x width, channels last), position [B, S, 2] (y, x), mask [B, S] ->
    columns [B*S, C] = mask x the bilinear blend of each sample's 4 corners (0 outside the image).

    Images of several sizes in one call (`deform_convs_sampled`): height, width and start are long tensors [B, S]
    (see `bilinear_corners`). With `splits` (sample counts summing to B*S), the columns come as one tensor per part:
    each part's gradient then arrives on its own, with no concatenation of the parts' gradients."""

    @staticmethod
    def forward(
        ctx,
        rows: torch.Tensor,
        position: torch.Tensor,
        mask: torch.Tensor,
        height: int | torch.Tensor,
        width: int | torch.Tensor,
        start: torch.Tensor | None = None,
        splits: tuple[int, ...] | None = None,
    ):
        index, weight = bilinear_corners(position, mask, height, width, start)
        ctx.save_for_backward(rows, index, weight, position, mask)
        ctx.size, ctx.splits = (height, width), splits
        weight = weight.to(rows.dtype)
        if splits is None:
            return F.embedding_bag(index, rows, per_sample_weights=weight, mode="sum")
        return tuple(F.embedding_bag(part, rows, per_sample_weights=part_weight, mode="sum")
                     for part, part_weight in zip(index.split(splits), weight.split(splits)))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        rows, index, weight, position, mask = ctx.saved_tensors
        splits = ctx.splits or (index.shape[0],)
        parts = list(zip(grads, index.split(splits), weight.split(splits)))  # a grad is None for an unused part
        grad_rows = grad_position = grad_mask = None
        if ctx.needs_input_grad[0]:  # the transposed gather: each row sums the column gradients of its samples
            for grad, part, part_weight in parts:
                if grad is None:
                    continue
                flat = part.view(-1)
                order = torch.argsort(flat.int(), stable=True)  # int32: PyTorch's radix sort
                counts = torch.bincount(flat, minlength=rows.shape[0])
                sample_weights = part_weight.view(-1)[order].to(grad.dtype)
                part_rows = F.embedding_bag(order // 4, grad.contiguous(), counts.cumsum(0) - counts,
                                            per_sample_weights=sample_weights, mode="sum")
                grad_rows = part_rows if grad_rows is None else grad_rows.add_(part_rows)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # d loss / d weight[n, c] = <grad[n], rows[index[n, c]]>, embedding_bag's own per-sample-weight gradient,
            # in float32 at least: the CPU kernel takes 2x as long in bfloat16 as in float32, conversions included
            wide_rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
            corner_grads = []
            for grad, part, part_weight in parts:
                if grad is None:
                    corner_grads.append(part_weight.new_zeros(part_weight.numel()))
                    continue
                bags = torch.arange(part.shape[0], device=part.device)
                wide_grad = grad.contiguous().to(wide_rows.dtype)
                corner_grads.append(torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    wide_grad, wide_rows, part.view(-1), bags * 4, bags.repeat_interleave(4), 0, -1
                ))
            corner_grad = corner_grads[0] if len(corner_grads) == 1 else torch.cat(corner_grads)
            # one contiguous [B, S] tensor per corner (y0, x0), (y0, x1), (y1, x0), (y1, x1)
            corners = corner_grad.to(weight.dtype).view(-1, 4).t().contiguous().view((4,) + mask.shape)
            y, x = axis_corners(position[..., 0], ctx.size[0]), axis_corners(position[..., 1], ctx.size[1])
            along_x = (corners[0] * x.low_weight + corners[1] * x.high_weight,  # per y corner
                       corners[2] * x.low_weight + corners[3] * x.high_weight)
            if ctx.needs_input_grad[2]:
                grad_mask = along_x[0] * y.low_weight + along_x[1] * y.high_weight
            if ctx.needs_input_grad[1]:  # d weight / d fraction = (-inside_low, inside_high) on each axis
                along_y = (corners[0] * y.low_weight + corners[2] * y.high_weight,  # per x corner
                           corners[1] * y.low_weight + corners[3] * y.high_weight)
                grad_position = torch.stack(
                    [
                        (along_x[1] * y.high_inside - along_x[0] * y.low_inside) * mask,
                        (along_y[1] * x.high_inside - along_y[0] * x.low_inside) * mask,
                    ],
                    dim=-1,
                )
        return grad_rows, grad_position, grad_mask, None, None, None, None


def column_positions(
    offset: torch.Tensor, kernel: tuple[int, int], stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """offset [B, 2*k*k, Ho, Wo] as (dy, dx) per tap (row-major) -> the sample positions as two tensors y, x, each
    [B, Ho, k_h, Wo, k_w] (the column image's order), contiguous, in float32 at least (under autocast too: a bfloat16
    position 100 px from the origin would be 0.5 px coarse)."""
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel
    device = offset.device
    dtype = torch.promote_types(offset.dtype, torch.float32)
    offset = offset.reshape(batch, kernel_h, kernel_w, 2, out_h, out_w).permute(3, 0, 4, 1, 5, 2).to(dtype)
    rows = torch.arange(out_h, device=device) * stride - padding
    columns = torch.arange(out_w, device=device) * stride - padding
    grid_y = (rows.view(out_h, 1, 1, 1) + torch.arange(kernel_h, device=device).view(kernel_h, 1, 1)).to(dtype)
    grid_x = (columns.view(out_w, 1) + torch.arange(kernel_w, device=device)).to(dtype)
    shape = (batch, out_h, kernel_h, out_w, kernel_w)
    # out= keeps the result in this order (the offsets' own strides would otherwise decide it)
    y = torch.add(offset[0], grid_y, out=offset.new_empty(shape))
    x = torch.add(offset[1], grid_x, out=offset.new_empty(shape))
    return y, x


class DeformJob(NamedTuple):
    """One modulated deformable convolution of `deform_convs_sampled`: it reads inputs[input]; offset
    [B, 2*k*k, Ho, Wo] as (dy, dx) per kernel position (row-major), mask [B, k*k, Ho, Wo], weight [C', C, k, k],
    bias [C'] or None, stride."""

    input: int
    offset: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int


@functools.lru_cache(maxsize=8)
def sample_grid(
    layout: tuple[tuple[int, ...], ...], kernel: tuple[int, int], padding: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data-independent part of the samples of several convolutions, in matrix order (convolution, b, i, j,
    tap_y, tap_x). layout: per convolution (batch, input height, input width, first input row, Ho, Wo, stride) ->
    long tensors: the undeformed positions [S, 2] (y, x) and, each [S], the input's height and width and the row of
    the sample's image's first pixel. Cached: the DyHead's layers share their levels' sizes."""
    kernel_h, kernel_w = kernel
    grids, heights, widths, starts = [], [], [], []
    for batch, height, width, first_row, out_h, out_w, stride in layout:
        rows = torch.arange(out_h, device=device) * stride - padding
        columns = torch.arange(out_w, device=device) * stride - padding
        shape = (batch, out_h, out_w, kernel_h, kernel_w)
        grid_y = (rows.view(out_h, 1, 1, 1) + torch.arange(kernel_h, device=device).view(kernel_h, 1)).expand(shape)
        grid_x = (columns.view(out_w, 1, 1) + torch.arange(kernel_w, device=device)).expand(shape)
        grids.append(torch.stack([grid_y, grid_x], dim=-1).reshape(-1, 2))
        samples = grids[-1].shape[0]
        heights.append(torch.full((samples,), height, device=device))
        widths.append(torch.full((samples,), width, device=device))
        image_start = torch.arange(batch, device=device) * (height * width) + first_row
        starts.append(image_start.view(batch, 1).expand(batch, samples // batch).reshape(-1))
    return torch.cat(grids), torch.cat(heights), torch.cat(widths), torch.cat(starts)


def deform_convs_sampled(
    inputs: Sequence[torch.Tensor], jobs: Sequence[DeformJob], padding: int = 1
) -> list[torch.Tensor]:
    """Several DCNv2 with autograd in one gather: inputs [B, C, H_i, W_i] (one batch, one channel count), jobs ->
    outputs [B, C', Ho, Wo] in their order. One `BilinearSampling` over the rows of all inputs, then one matrix
    multiply per run of consecutive jobs that share a weight tensor (the DyHead's 13 convolutions per layer: one
    gather and 3 products instead of 13 each). One offset group, no dilation."""
    _, kernel_h, kernel_w = jobs[0].weight.shape[1:]
    taps = kernel_h * kernel_w
    parts = [x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in inputs]  # channels last
    rows = parts[0] if len(parts) == 1 else torch.cat(parts)
    first_rows = [0]
    for x in inputs:
        first_rows.append(first_rows[-1] + x.numel() // x.shape[1])
    layout = tuple(
        (*inputs[job.input].shape[:1], *inputs[job.input].shape[2:], first_rows[job.input], *job.offset.shape[2:],
         job.stride)
        for job in jobs
    )
    grid, height, width, start = sample_grid(layout, (kernel_h, kernel_w), padding, rows.device)
    # positions in float32 at least (under autocast too: a bfloat16 position 100 px from the origin is 0.5 px coarse)
    dtype = torch.promote_types(jobs[0].offset.dtype, torch.float32)
    offsets = torch.cat([job.offset.reshape(job.offset.shape[0], taps, 2, *job.offset.shape[2:])
                         .permute(0, 3, 4, 1, 2).reshape(-1, 2) for job in jobs])
    masks = torch.cat([job.mask.reshape(job.mask.shape[0], taps, *job.mask.shape[2:]).permute(0, 2, 3, 1).reshape(-1)
                       for job in jobs])
    position = offsets.to(dtype) + grid
    groups = _runs_of_one_weight(jobs)
    sizes = [[job.offset.shape[0] * job.offset.shape[2] * job.offset.shape[3] for job in group] for group in groups]
    columns = BilinearSampling.apply(rows, position[None], masks.to(dtype)[None], height[None], width[None],
                                     start[None], tuple(taps * sum(group_sizes) for group_sizes in sizes))
    outputs: list[torch.Tensor] = []
    for group, group_sizes, part in zip(groups, sizes, columns):
        part = part.view(-1, taps * rows.shape[1])  # one row of k*k*C columns per output position
        weight, bias = group[0].weight, group[0].bias
        matrix = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t()  # [(tap_y, tap_x, c), C']
        out = part @ matrix if bias is None else torch.addmm(bias, part, matrix)
        for job, piece in zip(group, out.split(group_sizes)):
            batch, _, out_h, out_w = job.offset.shape
            outputs.append(piece.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2).contiguous())
    return outputs


def _runs_of_one_weight(jobs: Sequence[DeformJob]) -> list[list[DeformJob]]:
    """Consecutive jobs grouped while they share their weight and bias tensors."""
    runs: list[list[DeformJob]] = []
    for job in jobs:
        if runs and runs[-1][0].weight is job.weight and runs[-1][0].bias is job.bias:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


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
    _, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    if _needs_autograd(x, offset, mask, weight, bias):
        return deform_convs_sampled([x], [DeformJob(0, offset, mask, weight, bias, stride)], padding)[0]
    # column image order (b, i, tap_y, j, tap_x)
    sample_y, sample_x = column_positions(offset, (kernel_h, kernel_w), stride, padding)
    mask = mask.reshape(batch, kernel_h, kernel_w, out_h, out_w).permute(0, 3, 1, 4, 2).to(sample_y.dtype)
    columns = sample_padded(pad_rows(x), (height, width), sample_y, sample_x, mask)
    image = columns.view(batch, out_h * kernel_h, out_w * kernel_w, channels).permute(0, 3, 1, 2)
    return F.conv2d(image, weight, bias, stride=(kernel_h, kernel_w)).contiguous()


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


def modulated_deform_convs(
    inputs: Sequence[torch.Tensor], jobs: Sequence[DeformJob], padding: int = 1
) -> list[torch.Tensor]:
    """Several DCNv2 over `inputs` (see `DeformJob`) -> their outputs in order: on CPU with autograd one gather
    (`deform_convs_sampled`), otherwise each convolution on its own (`modulated_deform_conv`)."""
    tensors = (*inputs, *(t for job in jobs for t in (job.offset, job.mask, job.weight, job.bias)))
    if inputs[0].device.type == "cpu" and _needs_autograd(*tensors):
        return deform_convs_sampled(inputs, jobs, padding)
    return [
        modulated_deform_conv(inputs[job.input], job.offset, job.mask, job.weight, job.bias, job.stride, padding)
        for job in jobs
    ]


def _needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors (None entries ignored)."""
    return torch.is_grad_enabled() and any(tensor is not None and tensor.requires_grad for tensor in tensors)
