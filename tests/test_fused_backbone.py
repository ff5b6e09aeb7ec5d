"""The fused Swin/RoBERTa backbone: fusion semantics, lower/upper split, padding, sizes, weights and config."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList
from timm.models.swin_transformer import SwinTransformer as TimmSwin
from transformers import RobertaModel

from fiber_d2.checkpoint import CheckpointLayoutError
from fiber_d2.config import add_fiber_config
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling import FiberBackbone, FusionMode
from fiber_d2.modeling.backbone import SwinTransformer
from fiber_d2.modeling.backbone.swin_weights import load_swin_weights, resize_relative_position_table

ATOL = 1e-5


def tiny_cfg(**overrides):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    fiber = cfg.MODEL.FIBER
    fiber.SWIN.EMBED_DIM, fiber.SWIN.WINDOW_SIZE = 16, 4
    fiber.TEXT.HIDDEN_SIZE, fiber.TEXT.INTERMEDIATE_SIZE, fiber.TEXT.VOCAB_SIZE = 32, 64, 100
    fiber.TEXT.DROPOUT = 0.0
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


def tiny_backbone(seed=0, gates=None, **overrides) -> FiberBackbone:
    torch.manual_seed(seed)
    backbone = FiberBackbone(tiny_cfg(**overrides)).eval()
    if gates is not None:
        set_gates(backbone, gates)
    return backbone


def set_gates(backbone, value):
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if name.endswith(".alpha"):
                parameter.fill_(value)


def text_batch(seed=1, batch=2, length=9, real=(9, 6)):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=generator)
    ids[:, 0] = 0
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, n in enumerate(real):
        mask[row, :n] = 1
        ids[row, n:] = 1
    return ids, mask


def images(seed=2, batch=2, height=96, width=128):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_features_close(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0)


def max_change(a, b):
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_fresh_model_is_exactly_the_two_unimodal_encoders():
    backbone = tiny_backbone()
    alphas = [p for n, p in backbone.named_parameters() if n.endswith(".alpha")]
    assert len(alphas) == 6 and all(a.shape == (1,) and a.item() == 0 for a in alphas)
    ids, mask = text_batch()
    pixels = images()
    with torch.no_grad():
        features, text = backbone(pixels, ids, mask)
        # Same Swin without any fusion layer, same weights.
        plain = SwinTransformer(
            embed_dim=16, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8), window_size=4, fused_blocks=0
        ).eval()
        missing, unexpected = plain.load_state_dict(backbone.image.state_dict(), strict=False)
        assert missing == [] and all(".i2t." in key for key in unexpected) and unexpected
        assert_features_close(features, plain(pixels))
        # Same weights in Hugging Face's own RoBERTa forward.
        reference = RobertaModel(backbone.text.model.config, add_pooling_layer=False).eval()
        reference.load_state_dict(backbone.text.model.state_dict())
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(text[real], expected[real], atol=ATOL, rtol=0)


def test_fusion_off_keeps_the_streams_independent_even_with_open_gates():
    backbone = tiny_backbone(gates=0.7)
    ids, mask = text_batch()
    other_ids, other_mask = text_batch(seed=5)
    pixels, other_pixels = images(), images(seed=7)
    with torch.no_grad():
        features, text = backbone(pixels, ids, mask, fusion=FusionMode.OFF)
        features_other_text, _ = backbone(pixels, other_ids, other_mask, fusion="off")
        _, text_other_image = backbone(other_pixels, ids, mask, fusion="off")
    assert_features_close(features, features_other_text, atol=0)
    torch.testing.assert_close(text, text_other_image, atol=0, rtol=0)


def test_open_gates_mix_the_modalities_both_ways():
    backbone = tiny_backbone(gates=0.7)
    ids, mask = text_batch()
    other_ids, other_mask = text_batch(seed=5)
    pixels, other_pixels = images(), images(seed=7)
    with torch.no_grad():
        features, text = backbone(pixels, ids, mask)
        features_other_text, _ = backbone(pixels, other_ids, other_mask)
        _, text_other_image = backbone(other_pixels, ids, mask)
        unfused_features, unfused_text = backbone(pixels, ids, mask, fusion="off")
    assert max_change(features, features_other_text) > 1e-3
    assert (text - text_other_image)[mask.bool()].abs().max() > 1e-3
    assert max_change(features, unfused_features) > 1e-3 and (text - unfused_text).abs().max() > 1e-3
    # Only the fused (top) stages change with the text: res3 lies below the fused blocks.
    torch.testing.assert_close(features["res3"], features_other_text["res3"], atol=0, rtol=0)


def test_text_to_image_mode_fuses_only_the_text_stream():
    backbone = tiny_backbone(gates=0.7)
    ids, mask = text_batch()
    pixels = images()
    with torch.no_grad():
        features, text = backbone(pixels, ids, mask, fusion=FusionMode.TEXT_TO_IMAGE)
        unfused_features, unfused_text = backbone(pixels, ids, mask, fusion=FusionMode.OFF)
        _, text_other_image = backbone(images(seed=7), ids, mask, fusion=FusionMode.TEXT_TO_IMAGE)
    assert_features_close(features, unfused_features, atol=0)
    assert (text - unfused_text).abs().max() > 1e-3
    assert (text - text_other_image).abs().max() > 1e-3


def test_gradients_reach_every_gate_and_both_encoders_even_at_init():
    backbone = tiny_backbone()
    backbone.train()
    ids, mask = text_batch()
    features, text = backbone(images(), ids, mask)
    (sum(f.square().mean() for f in features.values()) + text.square().mean()).backward()
    for name, parameter in backbone.named_parameters():
        if name.endswith(".alpha"):
            assert parameter.grad is not None and parameter.grad.abs().item() > 0, name
    assert backbone.image.patch_embed.proj.weight.grad.abs().sum() > 0
    assert backbone.text.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    fused_block = backbone.image.layers[-1].blocks[0]
    assert fused_block.i2t.query.weight.grad.abs().sum() == 0  # gate 0: the cross-attention is not used yet
    assert fused_block.i2t.alpha.grad.abs().item() > 0


def test_a_frozen_closed_gate_skips_its_cross_attention_with_the_same_outputs():
    backbone = tiny_backbone(gates=0.5)
    backbone.freeze(0, -1)  # the detector's frozen text encoder: alpha_t2i frozen
    ids, mask = text_batch()
    with torch.no_grad():
        for attention in backbone.text.t2i.values():
            attention.alpha.zero_()
    reference = tiny_backbone(gates=0.5)
    reference.load_state_dict(backbone.state_dict())  # alpha_t2i 0 but trainable: computed, as before
    outputs = []
    for model in (backbone, reference):
        pixels = images().requires_grad_()
        features, text = model(pixels, ids, mask)
        outputs.append((features, text, pixels))
    assert_features_close(outputs[0][0], outputs[1][0], atol=0)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=0, rtol=0)
    assert all(attention.gate_closed() for attention in backbone.text.t2i.values())
    assert not any(attention.gate_closed() for attention in reference.text.t2i.values())
    assert not outputs[0][1].requires_grad  # skipped: the frozen text stream no longer depends on the image
    assert outputs[1][1].requires_grad
    # An open frozen gate, or one opened by a checkpoint load, is computed again.
    state = {**backbone.state_dict(), "text.t2i.1.alpha": torch.tensor([0.25])}
    backbone.load_state_dict(state)
    assert not backbone.text.t2i["1"].gate_closed() and backbone.text.t2i["2"].gate_closed()
    _, text = backbone(images().requires_grad_(), ids, mask)
    assert text.requires_grad


def test_lower_once_then_upper_equals_the_full_forward_for_many_prompts():
    backbone = tiny_backbone(gates=0.5)
    pixels = images(batch=1)
    prompts = [text_batch(seed=s, batch=1, real=(9,)) for s in (1, 2, 3)]
    with torch.no_grad():
        image_state = backbone.encode_image_lower(pixels)
        for ids, mask in prompts:
            features, text = backbone.encode_upper(image_state, backbone.encode_text_lower(ids, mask))
            full_features, full_text = backbone(pixels, ids, mask)
            assert_features_close(features, full_features, atol=0)
            torch.testing.assert_close(text, full_text, atol=0, rtol=0)
        # One image state shared by a batch of three prompts.
        ids = torch.cat([p[0] for p in prompts])
        mask = torch.cat([p[1] for p in prompts])
        batched, batched_text = backbone.encode_upper(image_state, backbone.encode_text_lower(ids, mask))
        for row, (single_ids, single_mask) in enumerate(prompts):
            single, single_text = backbone(pixels, single_ids, single_mask)
            for name in single:
                torch.testing.assert_close(batched[name][row : row + 1], single[name], atol=ATOL, rtol=0)
            torch.testing.assert_close(batched_text[row : row + 1], single_text, atol=ATOL, rtol=0)


def test_padding_tokens_do_not_change_real_outputs():
    backbone = tiny_backbone(gates=0.7)
    ids, mask = text_batch(batch=1, length=6, real=(6,))
    padded_ids = torch.cat([ids, torch.ones(1, 10, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    pixels = images(batch=1)
    with torch.no_grad():
        features, text = backbone(pixels, ids, mask)
        padded_features, padded_text = backbone(pixels, padded_ids, padded_mask)
    assert_features_close(features, padded_features)
    torch.testing.assert_close(padded_text[:, :6], text, atol=ATOL, rtol=0)


def test_odd_sizes_and_batches_of_different_sizes():
    backbone = tiny_backbone(gates=0.3)
    ids, mask = text_batch(batch=1, real=(9,))
    with torch.no_grad():
        features, text = backbone(images(batch=1, height=333, width=517), ids, mask)
    # Patch embedding pads to a multiple of 4, patch merging rounds odd grids up.
    assert features["res3"].shape == (1, 32, 42, 65)
    assert features["res4"].shape == (1, 64, 21, 33)
    assert features["res5"].shape == (1, 128, 11, 17)
    assert all(torch.isfinite(f).all() for f in features.values()) and text.shape == (1, 9, 32)
    batch = ImageList.from_tensors(
        [images(batch=1, height=333, width=517)[0], images(batch=1, height=200, width=150)[0]],
        size_divisibility=backbone.size_divisibility,
    )
    ids, mask = text_batch()
    with torch.no_grad():
        features, _ = backbone(batch.tensor, ids, mask)
    assert batch.tensor.shape[-2:] == (352, 544)
    assert features["res5"].shape == (2, 128, 11, 17)
    assert backbone.output_shape()["res4"].stride == 16 and backbone.output_shape()["res5"].channels == 128


def test_causal_text_ignores_later_tokens():
    backbone = tiny_backbone(gates=0.5)
    ids, mask = text_batch(batch=1, real=(9,))
    changed = ids.clone()
    changed[0, 6:] = 7
    with torch.no_grad():
        state = backbone.text.run(backbone.text.embed(ids, mask, causal=True), backbone.text.num_layers)
        changed_state = backbone.text.run(backbone.text.embed(changed, mask, causal=True), 4)
    torch.testing.assert_close(state.hidden[:, :6], changed_state.hidden[:, :6], atol=ATOL, rtol=0)
    assert (state.hidden[:, 6:] - changed_state.hidden[:, 6:]).abs().max() > 1e-3


def test_our_swin_matches_timm_and_loads_its_checkpoints(tmp_path):
    torch.manual_seed(0)
    reference = TimmSwin(
        img_size=128, window_size=4, embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), num_classes=10
    ).eval()
    path = tmp_path / "timm_swin.pth"
    torch.save(reference.state_dict(), path)
    # timm's classification Swin does not shift a stage that fits in one window (here the 4x4 stage 4).
    ours = SwinTransformer(
        embed_dim=16,
        depths=(1, 1, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        out_features=("res2", "res3", "res4", "res5"),
        unshift_single_window=True,
    ).eval()
    load_swin_weights(ours, str(path))
    pixels = images(batch=2, height=128, width=128)
    with torch.no_grad():
        expected = reference.forward_intermediates(pixels, norm=False, intermediates_only=True)
        state = ours.run(ours.embed(pixels), ours.num_blocks)
    for name, target in zip(("res2", "res3", "res4"), expected):
        normed = ours.out_norms[name](target.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(target.shape)
        torch.testing.assert_close(state.outputs[name], normed, atol=ATOL, rtol=0)
    # The classifier's final norm initialises the res5 output norm.
    torch.testing.assert_close(ours.out_norms["res5"].weight, reference.norm.weight)
    final = reference.norm(expected[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(state.outputs["res5"], final, atol=ATOL, rtol=0)


def test_official_swin_layout_loads_with_resized_position_tables(tmp_path):
    torch.manual_seed(0)
    source = SwinTransformer(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
    official = {k: v for k, v in source.state_dict().items() if not k.startswith("out_norms")}
    official["norm.weight"], official["norm.bias"] = torch.full((128,), 2.0), torch.zeros(128)
    official["head.weight"] = torch.zeros(10, 128)
    path = tmp_path / "swin_official.pth"
    torch.save({"model": official}, path)
    target = SwinTransformer(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=12)
    load_swin_weights(target, str(path))
    table = target.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 1)
    torch.testing.assert_close(target.layers[2].downsample.reduction.weight, source.layers[2].downsample.reduction.weight)
    assert torch.all(target.out_norms["res5"].weight == 2.0)
    # Same window: unchanged; constant tables stay constant through the bicubic resize.
    original = source.layers[0].blocks[0].attn.relative_position_bias_table.detach()
    assert resize_relative_position_table(original, 7) is original
    torch.testing.assert_close(resize_relative_position_table(torch.full((169, 3), 0.25), 12), torch.full((529, 3), 0.25))


def test_swin_checkpoint_of_the_wrong_layout_names_its_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    encoder = SwinTransformer(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    with pytest.raises(CheckpointLayoutError, match=r"resnet\.pth.*unexpected keys: conv1\.weight"):
        load_swin_weights(encoder, str(path))
    wider = tmp_path / "wider.pth"
    torch.save(SwinTransformer(embed_dim=32, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=4).state_dict(), wider)
    with pytest.raises(CheckpointLayoutError, match=r"shape mismatches: .*\(32, 3, 4, 4\) vs \(16, 3, 4, 4\)"):
        load_swin_weights(encoder, str(wider))


def test_config_builds_through_the_registry_with_local_weights(tmp_path):
    torch.manual_seed(0)
    text_dir = tmp_path / "roberta"
    donor = tiny_backbone(seed=3)
    donor.text.model.save_pretrained(text_dir)
    swin_path = tmp_path / "swin.pth"
    torch.save({"model": {k: v for k, v in donor.image.state_dict().items() if ".i2t." not in k}}, swin_path)
    cfg = tiny_cfg()
    cfg.MODEL.FIBER.TEXT.WEIGHTS = str(text_dir)
    cfg.MODEL.FIBER.SWIN.WEIGHTS = str(swin_path)
    cfg.MODEL.FIBER.FREEZE.IMAGE_STAGES = 2
    backbone = build_backbone(cfg)
    assert isinstance(backbone, FiberBackbone)
    torch.testing.assert_close(
        backbone.text.model.encoder.layer[2].attention.self.query.weight,
        donor.text.model.encoder.layer[2].attention.self.query.weight,
    )
    torch.testing.assert_close(backbone.image.layers[2].blocks[1].attn.qkv.weight, donor.image.layers[2].blocks[1].attn.qkv.weight)
    assert not backbone.image.patch_embed.proj.weight.requires_grad
    assert not backbone.image.layers[1].blocks[0].attn.qkv.weight.requires_grad
    assert backbone.image.layers[2].blocks[0].attn.qkv.weight.requires_grad
    assert {name: shape.channels for name, shape in backbone.output_shape().items()} == {"res3": 32, "res4": 64, "res5": 128}
    cfg.MODEL.FIBER.TEXT.WEIGHTS = str(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        build_backbone(cfg)


def test_fiber_b_has_the_official_fusion_layout():
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-B.yaml"))
    with torch.device("meta"):
        backbone = FiberBackbone(cfg)
    shapes = {name: tuple(p.shape) for name, p in backbone.named_parameters()}
    fused_image = sorted({".".join(n.split(".")[:5]) for n in shapes if ".i2t." in n})
    assert fused_image == [f"image.layers.2.blocks.{b}" for b in (14, 15, 16, 17)] + [
        f"image.layers.3.blocks.{b}" for b in (0, 1)
    ]
    assert sorted({int(n.split(".")[2]) for n in shapes if n.startswith("text.t2i.")}) == list(range(6, 12))
    assert shapes["image.layers.2.blocks.14.i2t.text_kv.weight"] == (1024, 768)
    assert shapes["image.layers.3.blocks.1.i2t.text_kv.weight"] == (2048, 768)
    assert shapes["image.layers.3.blocks.0.i2t.query.weight"] == (1024, 1024)
    assert shapes["text.t2i.6.key.weight"] == (768, 512) and shapes["text.t2i.10.value.weight"] == (768, 1024)
    assert shapes["image.layers.2.blocks.0.attn.relative_position_bias_table"] == (529, 16)
    assert shapes["text.model.embeddings.word_embeddings.weight"] == (50265, 768)
    assert all(shapes[n] == (1,) for n in shapes if n.endswith(".alpha"))
    assert not any(".i2t.norm." in n for n in shapes)  # v2: no query LayerNorm
    assert {n: s.channels for n, s in backbone.output_shape().items()} == {"res3": 256, "res4": 512, "res5": 1024}


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        backbone = tiny_backbone(gates=0.4, **{"MODEL.FIBER.GRADIENT_CHECKPOINTING": checkpointing})
        backbone.train()
        ids, mask = text_batch()
        features, text = backbone(images(), ids, mask)
        (sum(f.square().mean() for f in features.values()) + text.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_bad_inputs_are_named():
    backbone = tiny_backbone()
    ids, mask = text_batch()
    with pytest.raises(ValueError, match=r"images must be \[batch, 3, height, width\], got \(3, 64, 64\)"):
        backbone(torch.zeros(3, 64, 64), ids, mask)
    with pytest.raises(ValueError, match=r"must both be \[batch, tokens\]"):
        backbone(images(), ids, mask[:, :5])
    limit = 130 - 2
    long_ids = torch.full((2, limit + 1), 5)
    with pytest.raises(ValueError, match=rf"prompt of {limit + 1} tokens is longer than .* {limit} positions"):
        backbone(images(), long_ids, torch.ones_like(long_ids))
    with torch.no_grad():
        backbone(images(), long_ids[:, :limit], torch.ones(2, limit, dtype=torch.long))  # the limit itself works
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\).*\[5, 100\]"):
        backbone(images(), torch.tensor([[5, 100]] * 2), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="image batch 2 and text batch 3 differ"):
        backbone(images(), *text_batch(batch=3, real=(9, 9, 9)))


def test_attention_with_a_trained_bias_equals_scaled_dot_product_attention():
    from fiber_d2.modeling.backbone.attention import merge_heads, multi_head_attention, split_heads

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 49, 32, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3))
    table = torch.randn(1, 4, 49, 49, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(6, 1, 49, 49, dtype=torch.float64)
    mask[:, :, :10, 20:] = -100.0  # a shifted window's mask
    ours = multi_head_attention(q, k, v, 4, bias=table + mask)  # written out: the bias needs a gradient
    reference = merge_heads(torch.nn.functional.scaled_dot_product_attention(
        *(split_heads(x, 4) for x in (q, k, v)), attn_mask=table + mask))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), (q, k, v, table)),
                    torch.autograd.grad((reference * weights).sum(), (q, k, v, table))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_attention_under_cpu_autocast_is_written_out_and_close_to_float32(monkeypatch):
    """Under bfloat16 autocast the CPU attention skips scaled_dot_product_attention (its bfloat16 kernel is the slow
    one) and stays within bfloat16 rounding of the float32 attention, padding bias included."""
    from fiber_d2.modeling.backbone import attention
    from fiber_d2.modeling.backbone.attention import multi_head_attention, padding_bias

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 30, 64, generator=generator)
    k, v = (torch.randn(2, 12, 64, generator=generator) for _ in range(2))
    bias = padding_bias(torch.tensor([[1] * 12, [1] * 7 + [0] * 5]), torch.float32)
    reference = multi_head_attention(q, k, v, 4, bias=bias)
    calls = []
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = multi_head_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4, bias=bias)
    assert calls == [] and ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), reference, rtol=0.03, atol=0.03)
    # the padded keys of the second sample get no weight: changing them changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, 7:], v2[1, 7:] = 100.0, -100.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = multi_head_attention(q.bfloat16(), k2.bfloat16(), v2.bfloat16(), 4, bias=bias)
    assert torch.equal(ours, again)
