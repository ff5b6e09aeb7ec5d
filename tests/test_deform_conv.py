"""The CPU gather formulation of the modulated deformable convolution against torchvision's kernel: outputs and the
gradients wrt x, offset, mask, weight and bias, on both contraction paths (autograd: matrix multiply; inference:
stride-k convolution of the column image)."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from fiber_d2.modeling.grounding import deform_conv
from fiber_d2.modeling.grounding.deform_conv import (
    BilinearSampling,
    axis_corners,
    bilinear_corners,
    deform_conv_sampled,
    deform_convs_sampled,
    column_positions,
    modulated_deform_conv,
    pad_rows,
    sample_padded,
)

NAMES = ("x", "offset", "mask", "weight", "bias")


def _inputs(batch, channels, height, width, stride, out_channels=5, offset_scale=2.0, dtype=torch.float64, seed=0):
    """Random (x, offset, mask, weight, bias) needing gradients; offsets of `offset_scale` pixels (std) put samples
    between pixels and outside the image."""
    generator = torch.Generator().manual_seed(seed)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    tensors = (
        torch.randn(batch, channels, height, width, generator=generator, dtype=dtype),
        torch.randn(batch, 18, out_h, out_w, generator=generator, dtype=dtype) * offset_scale,
        torch.rand(batch, 9, out_h, out_w, generator=generator, dtype=dtype),
        torch.randn(out_channels, channels, 3, 3, generator=generator, dtype=dtype) / (3 * channels**0.5),
        torch.randn(out_channels, generator=generator, dtype=dtype),
    )
    return tuple(tensor.requires_grad_() for tensor in tensors)


def _torchvision(x, offset, mask, weight, bias, stride=1):
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)


def _gradients(output, inputs, seed=1):
    """Gradients of <output, random cotangent> wrt the inputs."""
    cotangent = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return torch.autograd.grad((output * cotangent).sum(), inputs)


SHAPES = [(2, 8, 7, 9, 1), (2, 8, 13, 11, 2), (1, 4, 1, 2, 1), (1, 3, 6, 6, 2), (3, 5, 10, 4, 1)]


@pytest.mark.parametrize("batch,channels,height,width,stride", SHAPES)
def test_float64_outputs_and_gradients_match_torchvision(batch, channels, height, width, stride):
    inputs = _inputs(batch, channels, height, width, stride, seed=batch * 100 + height)
    expected = _torchvision(*inputs, stride=stride)
    ours = deform_conv_sampled(*inputs, stride=stride, padding=1)  # the autograd (matrix multiply) path
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    for name, a, b in zip(NAMES, _gradients(ours, inputs), _gradients(expected, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)
    with torch.no_grad():  # the inference (stride-k convolution) path
        torch.testing.assert_close(deform_conv_sampled(*inputs, stride=stride), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_float32_matches_torchvision_outputs_to_1e4_and_gradients_to_1e3(stride):
    # Non-square maps; offsets of 3 pixels (std) put many samples partly or wholly outside the image.
    inputs = _inputs(2, 32, 19, 12, stride, out_channels=24, offset_scale=3.0, dtype=torch.float32, seed=stride)
    expected = _torchvision(*inputs, stride=stride)
    ours = modulated_deform_conv(*inputs, stride=stride)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(modulated_deform_conv(*inputs, stride=stride), expected, rtol=0, atol=1e-4)
    for name, a, b in zip(NAMES, _gradients(ours, inputs), _gradients(expected, inputs)):
        assert b.abs().max() > 0.1, name  # the gradients are not trivially small
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3, msg=name)


@pytest.mark.parametrize("offsets", ["zero", "integer", "half"])
def test_gradients_at_pixel_and_half_pixel_positions_match_torchvision(offsets):
    # The DyHead's offset conv starts at zero: every sample sits on a pixel, where bilinear interpolation has a kink.
    # The gradient wrt the offsets is then the one-sided one of the DCN kernels (corners floor(p) and floor(p) + 1).
    x, offset, mask, weight, bias = _inputs(2, 4, 5, 7, 1)
    generator = torch.Generator().manual_seed(3)
    values = {
        "zero": torch.zeros(offset.shape, dtype=offset.dtype),
        "integer": torch.randint(-3, 4, offset.shape, generator=generator).to(offset.dtype),
        "half": torch.randint(-6, 7, offset.shape, generator=generator).to(offset.dtype) / 2,
    }[offsets]
    inputs = (x, values.requires_grad_(), mask, weight, bias)
    expected, ours = _torchvision(*inputs), deform_conv_sampled(*inputs)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    for name, a, b in zip(NAMES, _gradients(ours, inputs), _gradients(expected, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_inference_uses_the_stride_k_convolution_and_autograd_the_matrix_multiply(monkeypatch):
    calls = []
    conv2d = F.conv2d

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(deform_conv.F, "conv2d", spy)
    inputs = _inputs(1, 4, 6, 5, 1)
    with torch.no_grad():
        inference = deform_conv_sampled(*inputs)
    assert calls == [{"stride": (3, 3)}]
    training = deform_conv_sampled(*inputs)
    assert len(calls) == 1 and training.requires_grad
    torch.testing.assert_close(inference, training.detach(), rtol=0, atol=1e-12)
    assert inference.is_contiguous() and training.is_contiguous()


def test_no_bias_and_offset_views():
    # The DyHead passes channel slices of one offset conv output; bias None.
    x, _, _, weight, _ = _inputs(2, 4, 6, 5, 1)
    offset_mask = torch.randn(2, 27, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
    expected = _torchvision(x, offset, mask, weight, None)
    torch.testing.assert_close(deform_conv_sampled(x, offset, mask, weight, None), expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(deform_conv_sampled(x, offset, mask, weight, None), expected, rtol=0, atol=1e-10)
        # offsets and masks in channels-last memory (no view splits their channels): the same outputs
        channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (offset, mask)]
        expected = deform_conv_sampled(x, offset, mask, weight, None)
        assert torch.equal(deform_conv_sampled(x, *channels_last, weight, None), expected)


def test_bilinear_corners_of_one_sample():
    # A 2x3 image. Sample 0 at (0.25, 1.5) blends pixels (0, 1), (0, 2), (1, 1), (1, 2); sample 1 at (-2, -1) has every
    # corner outside: weight 0, indices clamped into the image. Image 1's rows start at 6.
    position = torch.tensor([[[0.25, 1.5], [-2.0, -1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    mask = torch.full((2, 2), 0.5)
    index, weight = bilinear_corners(position, mask, 2, 3)
    y, x = axis_corners(position[..., 0], 2), axis_corners(position[..., 1], 3)
    assert index.shape == weight.shape == (4, 4)
    assert index[0].tolist() == [1, 2, 4, 5]
    torch.testing.assert_close(weight[0], 0.5 * torch.tensor([0.75 * 0.5, 0.75 * 0.5, 0.25 * 0.5, 0.25 * 0.5]))
    assert weight[1].tolist() == [0.0] * 4 and 0 <= index[1].min() and index[1].max() < 6
    # sample 1: y rows -2, -1 both outside; x columns -1 (outside) and 0 (inside), clamped to 0
    assert (y.low_inside[0, 1].item(), y.high_inside[0, 1].item()) == (0.0, 0.0)
    assert (x.low_inside[0, 1].item(), x.high_inside[0, 1].item()) == (0.0, 1.0)
    assert (x.low[0, 1].item(), x.high[0, 1].item(), y.low[0, 1].item(), y.high[0, 1].item()) == (0, 0, 0, 0)
    # The corner weights are the products of the per-axis ones.
    axis_y = torch.stack([y.low_weight[0, 0], y.high_weight[0, 0]])
    axis_x = torch.stack([x.low_weight[0, 0], x.high_weight[0, 0]])
    torch.testing.assert_close(weight[0], 0.5 * (axis_y[:, None] * axis_x[None]).flatten())
    # Image 1, whole pixel (1, 0): weight on its own row 6 + 3; the corners below / right (outside) get 0.
    assert index[2].tolist()[0] == 9 and weight[2].tolist() == [0.5, 0.0, 0.0, 0.0]


def test_inference_gather_equals_the_autograd_gather_to_the_bit_at_and_beyond_the_border():
    # A 4x5 image; positions on the border lines (-1, H, W), just inside them, whole and half pixels, far outside.
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    rows = x.permute(0, 2, 3, 1).reshape(-1, 3)
    edges = torch.tensor(
        [-1e6, -3.0, -1.0, -0.999, -0.5, 0.0, 0.25, 2.0, 2.5, 3.0, 3.5, 3.999, 4.0, 4.5, 5.0, 7.0, 1e6]
    )
    position = torch.stack(torch.meshgrid(edges, edges, indexing="ij"), dim=-1).reshape(1, -1, 2).repeat(2, 1, 1)
    mask = torch.rand(2, position.shape[1], generator=torch.Generator().manual_seed(1))
    expected = BilinearSampling.apply(rows, position, mask, 4, 5)
    assert torch.equal(sample_padded(pad_rows(x), (4, 5), position[..., 0], position[..., 1], mask), expected)
    outside = ((position < -1 + 1e-9) | (position[..., :1] >= 4) | (position[..., 1:] >= 5)).any(-1).flatten()
    assert outside.any() and expected[outside].abs().max() == 0  # at or beyond the border lines: 0, as DCN reads


def test_zero_offsets_and_unit_mask_are_a_plain_convolution():
    x = torch.randn(2, 4, 6, 5)
    weight, bias = torch.randn(3, 4, 3, 3), torch.randn(3)
    expected = F.conv2d(x, weight, bias, padding=1)
    offset, mask = torch.zeros(2, 18, 6, 5), torch.ones(2, 9, 6, 5)
    torch.testing.assert_close(modulated_deform_conv(x, offset, mask, weight, bias), expected, atol=1e-5, rtol=1e-5)
    weight.requires_grad_()
    torch.testing.assert_close(modulated_deform_conv(x, offset, mask, weight, bias), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_uses_torchvision():
    inputs = [tensor.detach().float().cuda() for tensor in _inputs(1, 4, 6, 5, 1)]
    expected = _torchvision(*inputs)
    torch.testing.assert_close(modulated_deform_conv(*inputs), expected, rtol=0, atol=0)


def test_bfloat16_offsets_are_placed_at_float32_positions():
    # Under autocast the offset conv gives bfloat16 offsets; the sample at column 150 + 0.25 must keep its 0.25
    # (bfloat16 spacing between 128 and 256 is 1). One output at x = 150 (1x1 kernel).
    offset = torch.zeros(1, 2, 1, 151, dtype=torch.bfloat16)
    offset[0, 1, 0, 150] = 0.25
    y, x = column_positions(offset, (1, 1), stride=1, padding=0)  # the inference path's layout
    assert x.dtype == torch.float32 and (y[0, 0, 0, 150, 0].item(), x[0, 0, 0, 150, 0].item()) == (0.0, 150.25)
    # the autograd path: a 1-channel image of value (column - 150), exact in bfloat16; sampled at 150.25 it blends to
    # 0.25, where a position rounded to bfloat16 (150) would give 0
    image = (torch.arange(152) - 150).to(torch.bfloat16).view(1, 1, 1, 152).requires_grad_()
    weight = torch.ones(1, 1, 1, 1, dtype=torch.bfloat16)
    job = deform_conv.DeformJob(0, offset, torch.ones(1, 1, 1, 151, dtype=torch.bfloat16), weight, None, 1)
    assert deform_convs_sampled([image], [job], padding=0)[0][0, 0, 0, 150].item() == 0.25


def test_column_positions_are_the_offsets_plus_the_kernel_grid_in_column_image_order():
    # (b, i, tap_y, j, tap_x): y = i * stride - padding + tap_y + dy, x likewise, for a 3x3 kernel at stride 2 and an
    # offset view as the DyHead's
    offset_mask = torch.randn(2, 27, 4, 3, generator=torch.Generator().manual_seed(5))
    offset = offset_mask[:, :18]
    y, x = column_positions(offset, (3, 3), stride=2, padding=1)
    assert y.is_contiguous() and x.is_contiguous() and y.shape == (2, 4, 3, 3, 3)
    for b, i, tap_y, j, tap_x in [(0, 0, 0, 0, 0), (1, 3, 2, 2, 1), (0, 2, 1, 1, 2), (1, 1, 0, 0, 2)]:
        tap = tap_y * 3 + tap_x
        assert y[b, i, tap_y, j, tap_x].item() == pytest.approx(i * 2 - 1 + tap_y + offset[b, 2 * tap, i, j].item())
        assert x[b, i, tap_y, j, tap_x].item() == pytest.approx(j * 2 - 1 + tap_x + offset[b, 2 * tap + 1, i, j].item())


def test_bfloat16_gradients_are_within_bfloat16_rounding_of_float32():
    """The autograd path on bfloat16 inputs (as under autocast): the sample weights' gradient is taken in float32,
    the others in bfloat16; all within bfloat16 rounding of the float32 gradients."""
    low = tuple(tensor.detach().bfloat16().requires_grad_() for tensor in _inputs(2, 16, 9, 11, 1, out_channels=8))
    inputs = tuple(tensor.detach().float().requires_grad_() for tensor in low)  # the same values in float32
    reference = _gradients(deform_conv_sampled(*inputs), inputs)
    ours = _gradients(deform_conv_sampled(*low), low)
    for name, a, b in zip(NAMES, ours, reference):
        assert a.dtype == torch.bfloat16, name
        scale = b.abs().max().item()
        assert (a.float() - b).abs().max().item() <= 0.02 * scale, name  # measured: at most 0.0055


def test_several_convolutions_in_one_gather_equal_each_alone_in_float64():
    """`deform_convs_sampled`: inputs of three sizes, strides 1 and 2, a shared weight (one product for the run) and
    one without bias: outputs and every gradient equal torchvision's convolution by convolution."""
    generator = torch.Generator().manual_seed(7)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    inputs = [rand(2, 4, 9, 7), rand(2, 4, 5, 4), rand(2, 4, 3, 2)]
    weights = [rand(3, 4, 3, 3, scale=0.3), rand(3, 4, 3, 3, scale=0.3)]
    bias = rand(3)
    plan = [(0, 1, weights[0], bias), (1, 1, weights[0], bias), (0, 2, weights[1], None), (2, 1, weights[1], None)]
    jobs = []
    for source, stride, weight, job_bias in plan:
        height, width = ((size - 1) // stride + 1 for size in inputs[source].shape[-2:])
        jobs.append(deform_conv.DeformJob(source, rand(2, 18, height, width, scale=2.0),
                                          torch.rand(2, 9, height, width, generator=generator,
                                                     dtype=torch.float64).requires_grad_(),
                                          weight, job_bias, stride))
    ours = deform_conv.deform_convs_sampled(inputs, jobs)
    expected = [_torchvision(inputs[j.input], j.offset, j.mask, j.weight, j.bias, stride=j.stride) for j in jobs]
    leaves = [*inputs, *weights, bias, *(t for j in jobs for t in (j.offset, j.mask))]
    cotangents = [torch.randn(e.shape, generator=generator, dtype=torch.float64) for e in expected]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    ours_grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ours, cotangents)), leaves)
    expected_grads = torch.autograd.grad(sum((e * c).sum() for e, c in zip(expected, cotangents)), leaves,
                                         retain_graph=True)
    for index, (a, b) in enumerate(zip(ours_grads, expected_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=f"leaf {index}")
    # only the first weight's outputs in the loss: the second's columns get no gradient, the rest as torchvision's
    ours = deform_conv.deform_convs_sampled(inputs, jobs)
    leaves = [*inputs[:2], weights[0], bias, *(t for j in jobs[:2] for t in (j.offset, j.mask))]
    ours_grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ours[:2], cotangents)), leaves)
    expected_grads = torch.autograd.grad(sum((e * c).sum() for e, c in zip(expected[:2], cotangents)), leaves)
    for index, (a, b) in enumerate(zip(ours_grads, expected_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=f"leaf {index}, first weight only")


def test_a_dyhead_layer_samples_all_its_convolutions_in_one_gather(monkeypatch):
    from fiber_d2.modeling.grounding.dyhead import DyHeadLayer

    layer = DyHeadLayer(8, norm_groups=2)
    levels = [torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3), torch.randn(1, 8, 2, 2)]
    calls = []
    apply = BilinearSampling.apply
    monkeypatch.setattr(BilinearSampling, "apply", lambda *args: calls.append(args) or apply(*args))
    layer(levels)  # training: 3 + 2 + 2 convolutions
    assert len(calls) == 1 and calls[0][1].shape == (1, 9 * (36 + 9 + 4 + 9 + 4 + 9 + 4), 2)
