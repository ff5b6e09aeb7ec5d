"""DyHead tower: shapes, DCN wiring, the official offset memory layout of the coarser branch, DyReLU, gradients, init
and the official parameter names. Small channel counts keep everything fast on CPU."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from fiber_d2.modeling.grounding.dyhead import (
    OFFICIAL_RENAMES,
    DyHeadConv,
    DyHeadLayer,
    DyHeadTower,
    DynamicReLU,
    hard_sigmoid,
    official_offset_layout,
)

C, GROUPS = 16, 4
# Odd sizes, each level the ceil-half of the previous one (as FPN's stride-2 convs give).
SIZES = [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # module inits are random: every test sees the same values


def _features(batch: int, sizes=SIZES, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, C, h, w, generator=generator) for h, w in sizes]


def _randomise(module: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Non-trivial values for every parameter (GroupNorm affine included), offsets of about a pixel."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            scale = 0.05 if "offset" in name else std
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
            if name.endswith("norm.weight"):
                parameter.add_(1.0)


# ---- an independent functional reference of the official DyConv forward ------------------------------------------


def _official_view(tensor: torch.Tensor, image: int, channels: int, height: int, width: int) -> torch.Tensor:
    """What the official CUDA kernel reads for image `image`: `tensor[image].data_ptr()` indexed as a contiguous
    [channels, height, width] array (csrc/cuda/deform_conv_kernel_cuda.cu, modulated_deformable_im2col_gpu_kernel)."""
    return torch.as_strided(
        tensor,
        (1, channels, height, width),
        (channels * height * width, height * width, width, 1),
        tensor.storage_offset() + image * tensor.stride(0),
    )


def _official_dcn(x, offset, mask, weight, bias, stride):
    height, width = (x.shape[-2] - 1) // stride + 1, (x.shape[-1] - 1) // stride + 1
    outputs = []
    for image in range(x.shape[0]):
        outputs.append(
            deform_conv2d(
                x[image : image + 1],
                _official_view(offset, image, 18, height, width),
                weight,
                bias,
                stride=stride,
                padding=1,
                mask=_official_view(mask, image, 9, height, width),
            )
        )
    return torch.cat(outputs)


def _official_dyrelu(x, fc0, fc2):
    channels = x.shape[1]
    y = F.relu6(F.linear(F.relu(F.linear(x.mean(dim=(2, 3)), fc0.weight, fc0.bias)), fc2.weight, fc2.bias) + 3) / 6
    y = y[:, :, None, None]
    a1, b1, a2, b2 = (y[:, k * channels : (k + 1) * channels] for k in range(4))
    a1 = (a1 - 0.5) * 2.0 + 1.0
    a2 = (a2 - 0.5) * 2.0 + 0.0
    b1 = b1 - 0.5 + 0.0
    b2 = b2 - 0.5 + 0.0
    return torch.max(x * a1 + b1, x * a2 + b2)


def _official_layer(layer: DyHeadLayer, features: list[torch.Tensor]) -> list[torch.Tensor]:
    def branch(index, x, offset, mask):
        conv = layer.convs[index]
        stride = (1, 1, 2)[index]
        out = _official_dcn(x, offset, mask, conv.conv.weight, conv.conv.bias, stride)
        return F.group_norm(out, GROUPS, conv.norm.weight, conv.norm.bias)

    attention_conv = layer.scale_attention[1]
    outputs = []
    for level, feature in enumerate(features):
        offset_mask = F.conv2d(feature, layer.offset.weight, layer.offset.bias, padding=1)
        offset, mask = offset_mask[:, :18, :, :], offset_mask[:, 18:, :, :].sigmoid()
        branches = [branch(1, feature, offset, mask)]
        if level > 0:
            branches.append(branch(2, features[level - 1], offset, mask))
        if level < len(features) - 1:
            coarse = branch(0, features[level + 1], offset, mask)
            branches.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
        weights = [
            F.relu6(F.relu(F.conv2d(b.mean(dim=(2, 3), keepdim=True), attention_conv.weight, attention_conv.bias)) + 3)
            / 6
            for b in branches
        ]
        mean = torch.mean(torch.stack([b * w for b, w in zip(branches, weights)]), dim=0)
        outputs.append(_official_dyrelu(mean, layer.dyrelu.fc[0], layer.dyrelu.fc[2]))
    return outputs


# ---- tests -----------------------------------------------------------------------------------------------------


def test_output_shapes_match_inputs_for_five_odd_sized_levels():
    tower = DyHeadTower(C, num_layers=2, norm_groups=GROUPS)
    features = _features(batch=2)
    with torch.no_grad():
        outputs = tower(features)
    assert [o.shape for o in outputs] == [f.shape for f in features]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_single_level_input_uses_only_the_same_level_branch():
    layer = DyHeadLayer(C, GROUPS)
    _randomise(layer)
    (feature,) = _features(batch=1, sizes=[(5, 7)])
    with torch.no_grad():
        (out,) = layer([feature])
        same = layer.convs[1](feature, layer.offset(feature)[:, :18], layer.offset(feature)[:, 18:].sigmoid())
        expected = layer.dyrelu(same * hard_sigmoid(layer.scale_attention(same)))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_offsets_and_half_mask_give_half_a_plain_conv(stride):
    conv = DyHeadConv(C, stride=stride, norm_groups=GROUPS, deformable=True)
    _randomise(conv)
    x = torch.randn(2, C, 7, 9)
    height, width = conv.output_size(7, 9)
    offset = torch.zeros(2, 18, height, width)
    mask = torch.full((2, 9, height, width), torch.sigmoid(torch.tensor(0.0)).item())
    with torch.no_grad():
        out = conv(x, offset, mask)
        plain = 0.5 * F.conv2d(x, conv.conv.weight, stride=stride, padding=1) + conv.conv.bias[:, None, None]
        expected = F.group_norm(plain, GROUPS, conv.norm.weight, conv.norm.bias)
    assert out.shape == (2, C, height, width)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_zero_initialised_offset_conv_layer_equals_plain_convolution_reference():
    """With the offset conv zeroed, every branch is 0.5 x a plain conv: the whole layer against F.conv2d by hand."""
    layer = DyHeadLayer(C, GROUPS)
    _randomise(layer)
    with torch.no_grad():
        layer.offset.weight.zero_()
        layer.offset.bias.zero_()
    features = _features(batch=2, sizes=SIZES[:3])

    def branch(index, x):
        conv = layer.convs[index]
        out = 0.5 * F.conv2d(x, conv.conv.weight, stride=(1, 1, 2)[index], padding=1) + conv.conv.bias[:, None, None]
        return F.group_norm(out, GROUPS, conv.norm.weight, conv.norm.bias)

    with torch.no_grad():
        outputs = layer(features)
        for level, feature in enumerate(features):
            branches = [branch(1, feature)]
            if level > 0:
                branches.append(branch(2, features[level - 1]))
            if level < len(features) - 1:
                coarse = branch(0, features[level + 1])
                branches.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            weighted = [b * hard_sigmoid(layer.scale_attention(b)) for b in branches]
            expected = _official_dyrelu(sum(weighted) / len(weighted), layer.dyrelu.fc[0], layer.dyrelu.fc[2])
            torch.testing.assert_close(outputs[level], expected, rtol=1e-4, atol=1e-5)


def test_coarser_branch_reads_offsets_with_the_official_per_image_memory_layout():
    """Offsets computed at 7x9 for an output of 4x5: each image's first 18*4*5 offset values (9*4*5 mask values)."""
    conv = DyHeadConv(C, stride=1, norm_groups=GROUPS, deformable=True)
    _randomise(conv)
    x = torch.randn(2, C, 4, 5)  # the coarser level
    # A 27-channel offset+mask tensor at the finer size with distinct values (offsets within about +-2 pixels).
    offset_mask = torch.sin(torch.arange(2 * 27 * 7 * 9, dtype=torch.float32) * 0.37).view(2, 27, 7, 9) * 2.0
    offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
    with torch.no_grad():
        out = conv(x, offset, mask)
        reference = _official_dcn(x, offset, mask, conv.conv.weight, conv.conv.bias, 1)
        reference = F.group_norm(reference, GROUPS, conv.norm.weight, conv.norm.bias)
        # The same by hand with flat indices: image b's offsets as [18 * 63] values, the first 18 * 20 reshaped.
        by_hand = []
        for b in range(2):
            o = offset[b].reshape(-1)[: 18 * 20].view(1, 18, 4, 5)
            m = mask[b].reshape(-1)[: 9 * 20].view(1, 9, 4, 5)
            by_hand.append(deform_conv2d(x[b : b + 1], o, conv.conv.weight, conv.conv.bias, padding=1, mask=m))
        by_hand = F.group_norm(torch.cat(by_hand), GROUPS, conv.norm.weight, conv.norm.bias)
        cropped = conv(x, offset[:, :, :4, :5].contiguous(), mask[:, :, :4, :5].contiguous())
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, by_hand, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, cropped, atol=1e-3)  # a crop of the offset map is a different (wrong) reading
    # Batch elements do not mix: image 0 alone gives image 0 of the batch.
    with torch.no_grad():
        alone = conv(x[:1], offset[:1], mask[:1])
    torch.testing.assert_close(alone, out[:1], rtol=1e-5, atol=1e-6)


def test_official_offset_layout_helper():
    values = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    same = official_offset_layout(values, 3, 4, 4)
    assert same is values
    small = official_offset_layout(values, 3, 2, 3)
    assert small.shape == (2, 3, 2, 3)
    assert small[0].flatten().tolist() == list(range(18))
    assert small[1].flatten().tolist() == list(range(48, 66))
    with pytest.raises(ValueError, match="read past the image"):
        official_offset_layout(values, 3, 5, 4)


def test_layer_matches_official_reference_with_random_offsets_and_batches_do_not_mix():
    layer = DyHeadLayer(C, GROUPS)
    _randomise(layer)
    features = _features(batch=2, sizes=SIZES[:4])
    with torch.no_grad():
        outputs = layer(features)
        expected = _official_layer(layer, features)
        alone = layer([f[:1] for f in features])
    for out, ref, single in zip(outputs, expected, alone):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(single, out[:1], rtol=1e-5, atol=1e-6)


def test_hard_sigmoid_values():
    x = torch.tensor([-5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0])
    assert hard_sigmoid(x).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_dynamic_relu_formula_by_hand():
    """C = 4 (hidden 1); fc.0 zeroed so the coefficients are hard_sigmoid(fc.2.bias), chosen per channel."""
    relu = DynamicReLU(4)
    # fc.2 output order: [a1 x 4, b1 x 4, a2 x 4, b2 x 4] (pre hard-sigmoid).
    raw_a1 = [3.0, 0.0, -3.0, 1.5]  # s = 1, 0.5, 0, 0.75 -> a1 = 2, 1, 0, 1.5
    raw_b1 = [0.0, 3.0, -3.0, 0.0]  # s = 0.5, 1, 0, 0.5 -> b1 = 0, 0.5, -0.5, 0
    raw_a2 = [0.0, -3.0, 3.0, -1.5]  # s = 0.5, 0, 1, 0.25 -> a2 = 0, -1, 1, -0.5
    raw_b2 = [-3.0, 0.0, 1.5, 3.0]  # s = 0, 0.5, 0.75, 1 -> b2 = -0.5, 0, 0.25, 0.5
    with torch.no_grad():
        relu.fc[0].weight.zero_()
        relu.fc[0].bias.zero_()
        relu.fc[2].weight.normal_()  # multiplied by a zero hidden unit
        relu.fc[2].bias.copy_(torch.tensor(raw_a1 + raw_b1 + raw_a2 + raw_b2))
    a1, b1, a2, b2 = [2.0, 1.0, 0.0, 1.5], [0.0, 0.5, -0.5, 0.0], [0.0, -1.0, 1.0, -0.5], [-0.5, 0.0, 0.25, 0.5]
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).repeat(1, 4, 1, 1)  # [1, 4, 1, 5]
    with torch.no_grad():
        out = relu(x)
    for c in range(4):
        for i, v in enumerate([-2.0, -0.5, 0.0, 1.0, 3.0]):
            expected = max(v * a1[c] + b1[c], v * a2[c] + b2[c])
            assert out[0, c, 0, i].item() == pytest.approx(expected, abs=1e-6), (c, v)


def test_dynamic_relu_uses_the_pooled_input_per_image():
    relu = DynamicReLU(8)
    _randomise(relu, std=0.5)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        out = relu(x)
        expected = _official_dyrelu(x, relu.fc[0], relu.fc[2])
        alone = relu(x[1:])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(alone, out[1:])
    # Default coefficients are those of a plain ReLU-like identity when fc outputs 0: a1 = 1, b1 = 0, a2 = 0, b2 = 0.
    with torch.no_grad():
        for p in relu.parameters():
            p.zero_()
        torch.testing.assert_close(relu(x), torch.maximum(x, torch.zeros_like(x)))


def test_gradients_reach_every_parameter():
    tower = DyHeadTower(C, num_layers=2, norm_groups=GROUPS)
    with torch.no_grad():
        for layer in tower.layers:
            layer.scale_attention[1].bias.fill_(0.5)  # keep the attention ReLU active
            layer.dyrelu.fc[0].bias.fill_(0.5)  # and DyReLU's hidden ReLU (4 units at C = 16)
    features = [f.requires_grad_() for f in _features(batch=2, sizes=SIZES[:3])]
    outputs = tower(features)
    generator = torch.Generator().manual_seed(3)
    # A random projection (a plain sum is flat through GroupNorm).
    loss = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)
    loss.backward()
    for name, parameter in tower.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)


def test_plain_conv_variant_has_no_offset_and_matches_conv2d():
    tower = DyHeadTower(C, num_layers=2, norm_groups=GROUPS, deformable=False)
    assert not any("offset" in name for name, _ in tower.named_parameters())
    features = _features(batch=2)
    with torch.no_grad():
        outputs = tower(features)
        conv = tower.layers[0].convs[2]
        expected = F.conv2d(features[0], conv.conv.weight, conv.conv.bias, stride=2, padding=1)
        expected = F.group_norm(expected, GROUPS, conv.norm.weight, conv.norm.bias)
        torch.testing.assert_close(conv(features[0]), expected)
    assert [o.shape for o in outputs] == [f.shape for f in features]
    # Plain convs: normal(0, 0.01) init, as the official init_weights gives nn.Conv2d.
    assert 0.007 < conv.conv.weight.std().item() < 0.013


def test_dyrelu_off_uses_relu():
    layer = DyHeadLayer(C, GROUPS, dyrelu=False)
    assert isinstance(layer.dyrelu, torch.nn.ReLU)
    with torch.no_grad():
        outputs = layer(_features(batch=1, sizes=SIZES[:2]))
    assert all((o >= 0).all() for o in outputs)


def test_official_initialisation():
    layer = DyHeadLayer(C, GROUPS)
    bound = 1.0 / math.sqrt(9 * C)
    for conv in layer.convs:
        assert conv.conv.weight.abs().max() <= bound
        assert conv.conv.weight.abs().max() > 0.8 * bound  # uniform over the whole range, not normal(0.01)
        assert (conv.conv.bias == 0).all()
        assert (conv.norm.weight == 1).all() and (conv.norm.bias == 0).all()
    assert (layer.scale_attention[1].bias == 0).all()
    # Deviation from the official default init (documented): zero offsets and 0.5 masks at the start.
    assert (layer.offset.weight == 0).all() and (layer.offset.bias == 0).all()


def test_parameter_names_map_one_to_one_onto_the_official_ones():
    """Official per-layer tensors (vldyhead.py DyConv, Conv3x3Norm, DYReLU), renamed, are exactly ours, same shapes."""
    channels, layers = 32, 2
    tower = DyHeadTower(channels, num_layers=layers, norm_groups=GROUPS)
    official = {}
    for i in range(layers):
        prefix = f"{i}."
        for j in range(3):
            official[prefix + f"DyConv.{j}.conv.weight"] = (channels, channels, 3, 3)
            official[prefix + f"DyConv.{j}.conv.bias"] = (channels,)
            official[prefix + f"DyConv.{j}.bn.weight"] = (channels,)
            official[prefix + f"DyConv.{j}.bn.bias"] = (channels,)
        official[prefix + "AttnConv.1.weight"] = (1, channels, 1, 1)
        official[prefix + "AttnConv.1.bias"] = (1,)
        official[prefix + "relu.fc.0.weight"] = (channels // 4, channels)
        official[prefix + "relu.fc.0.bias"] = (channels // 4,)
        official[prefix + "relu.fc.2.weight"] = (4 * channels, channels // 4)
        official[prefix + "relu.fc.2.bias"] = (4 * channels,)
        official[prefix + "offset.weight"] = (27, channels, 3, 3)
        official[prefix + "offset.bias"] = (27,)

    def rename(key: str) -> str:
        for old, new in OFFICIAL_RENAMES:
            key = key.replace(old, new, 1)
        return "layers." + key

    ours = {name: tuple(tensor.shape) for name, tensor in tower.state_dict().items()}
    renamed = {rename(key): shape for key, shape in official.items()}
    assert renamed == ours


def test_box_and_centerness_products_equal_the_one_by_one_convolutions():
    from fiber_d2.modeling.grounding.head import GroundingHead

    torch.manual_seed(0)
    head = GroundingHead(channels=16, text_dim=8, num_levels=2, num_convs=1, norm_groups=4).double()
    for layer in (head.bbox_pred, head.centerness):
        torch.nn.init.normal_(layer.bias)
    levels = [torch.randn(2, 16, 6, 5, dtype=torch.float64), torch.randn(2, 16, 3, 3, dtype=torch.float64)]
    text, mask = torch.randn(2, 4, 8, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool)
    _, box_deltas, centerness = head(levels, text, mask)
    for level, feature in enumerate(head.tower(levels)):
        expected_boxes = head.scales[level](head.bbox_pred(feature)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(box_deltas[level], expected_boxes, rtol=0, atol=1e-14)
        torch.testing.assert_close(centerness[level], head.centerness(feature).flatten(1), rtol=0, atol=1e-14)
