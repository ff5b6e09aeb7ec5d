"""Swin's absolute position embedding (MODEL.FIBER.SWIN.APE_GRID; off in FIBER): off adds no parameter, a zero grid
changes nothing, and a grid is resized to each image's token grid and added to the patch embeddings."""
import torch
import torch.nn.functional as F

from fiber_d2.modeling.backbone.swin import SwinTransformer

TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, out_features=("res2", "res3"))


def test_off_by_default_adds_no_parameter():
    assert not any("absolute_pos_embed" in name for name in SwinTransformer(**TINY).state_dict())


def test_zero_grid_gives_the_model_without_it():
    torch.manual_seed(0)
    plain = SwinTransformer(**TINY).eval()
    with_ape = SwinTransformer(**TINY, ape_grid=8).eval()
    missing, unexpected = with_ape.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["absolute_pos_embed"] and unexpected == []
    assert with_ape.absolute_pos_embed.shape == (1, 16, 8, 8) and with_ape.absolute_pos_embed.abs().max() > 0
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with_ape.absolute_pos_embed.zero_()
        assert all(torch.equal(a, b) for a, b in zip(plain(images).values(), with_ape(images).values()))


def test_grid_is_resized_to_the_token_grid_and_added():
    torch.manual_seed(1)
    model = SwinTransformer(**TINY, ape_grid=8).eval()
    images = torch.randn(1, 3, 48, 40)  # a 12 x 10 token grid
    with torch.no_grad():
        tokens, size = model.patch_embed(images)
        state = model.embed(images)
        grid = F.interpolate(model.absolute_pos_embed, size=(12, 10), mode="bicubic", align_corners=False)
    assert size == (12, 10)
    torch.testing.assert_close(state.tokens, tokens + grid.flatten(2).transpose(1, 2))
    # At the grid's own size, no resizing: position (i, j) gets grid[:, :, i, j].
    with torch.no_grad():
        state = model.embed(images[..., :32, :32])
        tokens, _ = model.patch_embed(images[..., :32, :32])
    torch.testing.assert_close(state.tokens[0, 3 * 8 + 5], tokens[0, 3 * 8 + 5] + model.absolute_pos_embed[0, :, 3, 5])
