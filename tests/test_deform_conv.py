"""The CPU sampling formulation of the modulated deformable convolution against torchvision's kernel."""
import pytest
import torch
from torchvision.ops import deform_conv2d

from fiber_d2.modeling.deform_conv import deform_conv_sampled, modulated_deform_conv


@pytest.mark.parametrize(
    "batch,channels,height,width,stride",
    [(2, 8, 7, 9, 1), (2, 8, 13, 11, 2), (1, 4, 1, 2, 1), (1, 3, 6, 6, 2)],
)
def test_outputs_and_gradients_match_torchvision(batch, channels, height, width, stride):
    generator = torch.Generator().manual_seed(batch * 100 + height)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    x = rand(batch, channels, height, width)
    offset = rand(batch, 18, out_h, out_w, scale=2.0)  # samples land between pixels and outside the image
    mask = torch.rand(batch, 9, out_h, out_w, generator=generator, dtype=torch.float64).requires_grad_()
    weight, bias = rand(5, channels, 3, 3), rand(5)
    inputs = (x, offset, mask, weight, bias)
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    ours = deform_conv_sampled(x, offset, mask, weight, bias, stride=stride, padding=1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    grads_expected = torch.autograd.grad(expected.square().sum(), inputs)
    grads_ours = torch.autograd.grad(ours.square().sum(), inputs)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads_ours, grads_expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_zero_offsets_and_unit_mask_are_a_plain_convolution():
    x = torch.randn(2, 4, 6, 5)
    weight, bias = torch.randn(3, 4, 3, 3), torch.randn(3)
    out = modulated_deform_conv(x, torch.zeros(2, 18, 6, 5), torch.ones(2, 9, 6, 5), weight, bias)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5)


def test_float32_matches_torchvision_to_1e4():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 12, 10, generator=generator)
    offset = torch.randn(1, 18, 12, 10, generator=generator) * 3
    mask = torch.rand(1, 9, 12, 10, generator=generator)
    weight, bias = torch.randn(16, 16, 3, 3, generator=generator) * 0.1, torch.randn(16, generator=generator)
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(modulated_deform_conv(x, offset, mask, weight, bias), expected, atol=1e-4, rtol=1e-4)
