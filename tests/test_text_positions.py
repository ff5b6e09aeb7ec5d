"""Image positions for the text side's cross-attention (MODEL.FIBER.FUSION.TEXT_READS_POSITIONS; off in FIBER): the
code's values, no parameter when off, no effect at its zero init, and a text token that reads where things are."""
import math

import pytest
import torch

from fiber_d2.modeling import FiberBackbone, FusionMode
from fiber_d2.modeling.backbone.attention import TextToImageAttention, grid_position_code

from test_fused_backbone import set_gates, text_batch, tiny_cfg


def test_code_values_and_resolution_independence():
    code = grid_position_code((2, 4), 8, torch.device("cpu"))
    assert code.shape == (8, 8)
    # Row-major cell (row 1, column 2): centre x = 2.5 / 4, y = 1.5 / 2; features sin(x), sin(2x), cos(x), cos(2x),
    # then the same for y, at frequencies pi and 2 pi.
    x, y = 2.5 / 4, 1.5 / 2
    expected = [math.sin(math.pi * x), math.sin(2 * math.pi * x), math.cos(math.pi * x), math.cos(2 * math.pi * x)]
    expected += [math.sin(math.pi * y), math.sin(2 * math.pi * y), math.cos(math.pi * y), math.cos(2 * math.pi * y)]
    torch.testing.assert_close(code[1 * 4 + 2], torch.tensor(expected))
    # The centre cell of a 3 x 3 grid and of a 5 x 5 grid lie at the same place, so they get the same code.
    cpu = torch.device("cpu")
    torch.testing.assert_close(grid_position_code((3, 3), 16, cpu)[4], grid_position_code((5, 5), 16, cpu)[12])
    # cos(pi x) falls from left to right: the code orders columns.
    assert torch.all(grid_position_code((1, 6), 4, torch.device("cpu"))[:, 1].diff() < 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        grid_position_code((2, 2), 6, torch.device("cpu"))


def test_off_by_default_and_zero_at_init():
    plain = FiberBackbone(tiny_cfg())
    assert not any("position_kv" in name for name in plain.state_dict())
    torch.manual_seed(0)
    with_positions = FiberBackbone(tiny_cfg(**{"MODEL.FIBER.FUSION.TEXT_READS_POSITIONS": 16}))
    names = [name for name in with_positions.state_dict() if "position_kv" in name]
    assert names == [f"text.t2i.{index}.position_kv.weight" for index in (1, 2, 3)]
    missing, unexpected = with_positions.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == names and unexpected == []
    assert all(not with_positions.state_dict()[name].any() for name in names)  # zero at init: no effect yet
    plain.eval(), with_positions.eval()
    set_gates(plain, 0.5), set_gates(with_positions, 0.5)
    images = torch.randn(2, 3, 64, 96)
    ids, mask = text_batch()
    with torch.no_grad():
        outputs = [
            model.fuse(model.encode_image_lower(images), model.encode_text_lower(ids, mask), FusionMode.ON)[1].hidden
            for model in (plain, with_positions)
        ]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def test_text_reads_where_image_tokens_are():
    """Without positions, a text query's cross-attention treats the image tokens as a set: exchanging two of them
    changes nothing. With positions, it does, and the grid size must match the tokens."""
    torch.manual_seed(0)
    attention = TextToImageAttention(16, 2, 8, attention_dropout=0.0, dropout=0.0, position_features=8).eval()
    torch.nn.init.normal_(attention.position_kv.weight)
    with torch.no_grad():
        attention.alpha.fill_(1.0)
    text, image = torch.randn(1, 3, 16), torch.randn(1, 6, 8)
    swapped = image[:, [5, 1, 2, 3, 4, 0]]  # the first and last tokens of a 2 x 3 grid exchanged
    with torch.no_grad():
        assert not torch.allclose(attention(text, image, (2, 3)), attention(text, swapped, (2, 3)), atol=1e-4)
        attention.position_kv.weight.zero_()
        torch.testing.assert_close(attention(text, image, (2, 3)), attention(text, swapped, (2, 3)))
    with pytest.raises(ValueError, match=r"grid size \(3, 3\) does not match 6 image tokens"):
        attention(text, image, (3, 3))


def test_cached_code_made_in_inference_mode_trains():
    """The code is cached per grid size: one first made under inference mode (evaluation) must still let a later
    training step save it for the projection's gradient."""
    torch.manual_seed(1)
    attention = TextToImageAttention(16, 2, 8, attention_dropout=0.0, dropout=0.0, position_features=8)
    with torch.no_grad():
        attention.alpha.fill_(1.0)
    text, image = torch.randn(1, 3, 16), torch.randn(1, 35, 8)
    with torch.inference_mode():
        attention(text, image, (5, 7))
    assert grid_position_code((5, 7), 8, torch.device("cpu")) is grid_position_code((5, 7), 8, torch.device("cpu"))
    attention(text, image, (5, 7)).sum().backward()
    assert attention.position_kv.weight.grad is not None and attention.position_kv.weight.grad.abs().sum() > 0
