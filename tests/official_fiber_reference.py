"""An independent, functional reference of the official FIBER forwards, for tests. It shares no code with fiber_d2.

It reads official-layout state dicts directly and follows the official computation step by step: explicit softmax
attention, the shifted-window mask value -100, image-to-text attention inside each window with the text keys repeated
per window, the text cross-attention between the self-attention output projection and its LayerNorm, and the
parallel update of both streams in the fused steps.
  fine stage (`fusion_backbone.backbone.body.*`, `fusion_backbone.language_backbone.body.model.*`): written from
      microsoft/FIBER's fine_grained fusion_swin_transformer_v2/_v3.py and roberta_fused_model_v2.py;
  coarse stage (`vit_model.*`, `text_transformer.*` and the heads): written from coarse_grained/fiber/modules/
      fiber_module.py (`infer`), objectives.py, heads.py, swin_transformer.py and roberta.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BODY = "fusion_backbone.backbone.body."
TEXT = "fusion_backbone.language_backbone.body.model."


def _linear(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def _layer_norm(sd, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _relative_index(window):
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # 2, N
    delta = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (delta[0] + window - 1) * (2 * window - 1) + (delta[1] + window - 1)


def _to_windows(x, window):
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def _from_windows(windows, window, batch, height, width):
    x = windows.view(batch, height // window, width // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, -1)


def _shift_mask(height, width, window):
    shift = window // 2
    padded_h, padded_w = math.ceil(height / window) * window, math.ceil(width / window) * window
    regions = torch.zeros(1, padded_h, padded_w, 1)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, rows, cols, :] = label
            label += 1
    regions = _to_windows(regions, window).squeeze(-1)  # nW, N
    different = (regions[:, None, :] - regions[:, :, None]) != 0
    return torch.where(different, torch.tensor(-100.0), torch.tensor(0.0))


def _swin_block(sd, prefix, x, size, heads, window, shifted, text, text_mask, query_norm):
    batch, _, channels = x.shape
    height, width = size
    head_dim = channels // heads
    shortcut = x
    x = _layer_norm(sd, prefix + "norm1", x, 1e-5).view(batch, height, width, channels)
    x = F.pad(x, (0, 0, 0, (window - width % window) % window, 0, (window - height % window) % window))
    padded_h, padded_w = x.shape[1:3]
    shift = window // 2 if shifted else 0
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    windows = _to_windows(x, window)
    num_windows, n = windows.shape[0] // batch, window * window
    q, k, v = _linear(sd, prefix + "attn.qkv", windows).view(-1, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    logits = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    table = sd[prefix + "attn.relative_position_bias_table"]
    logits = logits + table[_relative_index(window).flatten()].view(n, n, heads).permute(2, 0, 1)[None]
    if shift:
        mask = _shift_mask(height, width, window)
        logits = (logits.view(batch, num_windows, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, channels)
    out = _linear(sd, prefix + "attn.proj", out)
    if text is not None:
        length = text.shape[1]
        kv = _linear(sd, prefix + "attn.qkv_text_i2t", text).view(batch, length, 2, heads, head_dim)
        text_k, text_v = kv.permute(2, 0, 3, 1, 4)
        text_k = text_k.repeat_interleave(num_windows, 0)
        text_v = text_v.repeat_interleave(num_windows, 0)
        query_in = _layer_norm(sd, prefix + "attn.norm_i2t_i", out, 1e-5) if query_norm else out
        query = _linear(sd, prefix + "attn.qkv_i2t", query_in).view(-1, n, heads, head_dim).transpose(1, 2)
        cross = (query * head_dim**-0.5) @ text_k.transpose(-2, -1)
        cross = cross + text_mask.view(batch, 1, 1, length).repeat_interleave(num_windows, 0)
        attended = (cross.softmax(-1) @ text_v).transpose(1, 2).reshape(-1, n, channels)
        out = out + sd[prefix + "attn.alpha_i2t"] * _linear(sd, prefix + "attn.proj_i2t", attended)
    x = _from_windows(out, window, batch, padded_h, padded_w)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    x = shortcut + x[:, :height, :width].reshape(batch, height * width, channels)
    hidden = F.gelu(_linear(sd, prefix + "mlp.fc1", _layer_norm(sd, prefix + "norm2", x, 1e-5)))
    return x + _linear(sd, prefix + "mlp.fc2", hidden)


def _patch_merging(sd, prefix, x, size):
    batch, _, channels = x.shape
    height, width = size
    x = x.view(batch, height, width, channels)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    x = x.view(batch, -1, 4 * channels)
    return _linear(sd, prefix + "reduction", _layer_norm(sd, prefix + "norm", x, 1e-5))


def _text_embed(sd, prefix, ids, pad_id, eps):
    real = (ids != pad_id).long()
    positions = torch.cumsum(real, 1) * real + pad_id
    embedded = (
        sd[prefix + "embeddings.word_embeddings.weight"][ids]
        + sd[prefix + "embeddings.position_embeddings.weight"][positions]
        + sd[prefix + "embeddings.token_type_embeddings.weight"][0]
    )
    return _layer_norm(sd, prefix + "embeddings.LayerNorm", embedded, eps)


def _heads(x, heads):
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _attend(q, k, v, heads, mask=None):
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits + mask
    out = logits.softmax(-1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], -1, q.shape[1] * q.shape[-1])


def _text_layer(sd, text_prefix, index, hidden, mask, heads, image, eps, last_norm=True):
    """One RoBERTa layer; `last_norm=False` leaves out its output LayerNorm (the coarse fused loop's last layer)."""
    prefix = f"{text_prefix}encoder.layer.{index}."
    attended = _attend(
        _linear(sd, prefix + "attention.self.query", hidden),
        _linear(sd, prefix + "attention.self.key", hidden),
        _linear(sd, prefix + "attention.self.value", hidden),
        heads,
        mask,
    )
    a = _linear(sd, prefix + "attention.output.dense", attended)
    if image is not None:
        cross = prefix + "crossattention_t2i."
        c = _attend(
            _linear(sd, cross + "self.query", a),
            _linear(sd, cross + "self.key", image),
            _linear(sd, cross + "self.value", image),
            heads,
        )
        a = sd[prefix + "alpha_t2i"] * _linear(sd, cross + "output.dense", c) + a
    hidden = _layer_norm(sd, prefix + "attention.output.LayerNorm", a + hidden, eps)
    inner = F.gelu(_linear(sd, prefix + "intermediate.dense", hidden))
    out = _linear(sd, prefix + "output.dense", inner) + hidden
    return _layer_norm(sd, prefix + "output.LayerNorm", out, eps) if last_norm else out


@torch.no_grad()
def official_fine_backbone_forward(
    sd, images, input_ids, attention_mask, *, depths, heads, window, text_layers, text_heads, num_fused,
    query_norm=False, pad_id=1, text_eps=1e-5,
):
    """Official fused forward on an official-layout state dict (no `module.` prefix).

    images [B, 3, H, W] with H, W multiples of 32; returns ({"res{i+2}": [B, C, h, w]} for the body.norm{i} the
    state dict holds, final text hidden states [B, T, D]).
    """
    x = F.conv2d(images, sd[BODY + "patch_embed.proj.weight"], sd[BODY + "patch_embed.proj.bias"], stride=4)
    size = tuple(x.shape[2:])
    x = _layer_norm(sd, BODY + "patch_embed.norm", x.flatten(2).transpose(1, 2), 1e-5)
    text_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    text = _text_embed(sd, TEXT, input_ids, pad_id, text_eps)
    first_fused_layer = text_layers - num_fused
    for index in range(first_fused_layer):
        text = _text_layer(sd, TEXT, index, text, text_mask, text_heads, None, text_eps)
    first_fused_block = sum(depths) - num_fused
    outputs, block_index = {}, 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"{BODY}layers.{stage}.blocks.{block}."
            step = block_index - first_fused_block
            if step < 0:
                x = _swin_block(sd, prefix, x, size, heads[stage], window, block % 2 == 1, None, None, query_norm)
            else:  # both streams read the other's state from before this step
                new_x = _swin_block(
                    sd, prefix, x, size, heads[stage], window, block % 2 == 1, text, text_mask, query_norm
                )
                text = _text_layer(sd, TEXT, first_fused_layer + step, text, text_mask, text_heads, x, text_eps)
                x = new_x
            block_index += 1
        norm = f"{BODY}norm{stage}"
        if norm + ".weight" in sd:
            normed = _layer_norm(sd, norm, x, 1e-5)
            outputs[f"res{stage + 2}"] = normed.transpose(1, 2).reshape(x.shape[0], -1, *size)
        if stage < len(depths) - 1:
            x = _patch_merging(sd, f"{BODY}layers.{stage}.downsample.", x, size)
            size = (size[0] // 2, size[1] // 2)
    return outputs, text


# ----- coarse stage -----

VIT = "vit_model."
ROBERTA = "text_transformer."
MLM_EPS = 1e-12  # heads.MLMHead: BertPredictionHeadTransform on a RobertaConfig left at its default layer_norm_eps


def _coarse_swin_block(sd, stage, block, x, size, heads, window, text=None, text_mask=None):
    """timm's classification Swin as the coarse stage builds it: a grid that fits in one window is one unshifted
    window of the grid's side; image-to-text queries have their LayerNorm (norm_i2t_i)."""
    fits = min(size) <= window
    return _swin_block(
        sd, f"{VIT}layers.{stage}.blocks.{block}.", x, size, heads, min(size) if fits else window,
        block % 2 == 1 and not fits, text, text_mask, query_norm=True,
    )


def _pool(sd, name, x):
    return torch.tanh(_linear(sd, name + ".dense", x))


@torch.no_grad()
def official_coarse_forward(
    sd, images, input_ids, attention_mask, *, depths, heads, window, text_layers, text_heads, num_fused,
    pad_id=1, text_eps=1e-5,
):
    """FIBERTransformerSS in eval mode on an official coarse state dict (Lightning `state_dict`, no `module.`).

    images [B, 3, S, S] (S/4 divisible by the window, or each grid fitting in one); input_ids, attention_mask [B, T].
    Returns {
      "itc_image" [B, D], "itc_text" [B, D]: `infer(image_only=True)` / `infer(text_only=True)`: every block or layer
          unfused, the image after Swin's final `norm`, the text after every layer's output LayerNorm; the `_itc`
          projections and poolers (image: the mean token), L2-normalised;
      "text_feats" [B, T, D], "cls_feats" [B, 2D]: the fused `infer`: the top `num_fused` blocks and layers in lock
          step, the last text layer without its output LayerNorm, the image tokens with no final `norm`, then
          cross_modal_{text,image}_transform and the poolers (text token 0, image mean) concatenated text first;
      "itm_logits" [B, 2] (itm_score on cls_feats), "mlm_logits" [B, T, V] (mlm_score on text_feats: dense, GELU,
          LayerNorm eps 1e-12, decoder + bias), and "vqa_logits" [B, A] when the state dict has vqa_classifier
          (Linear, LayerNorm eps 1e-5, GELU, Linear on cls_feats)
    }.
    """
    x = F.conv2d(images, sd[VIT + "patch_embed.proj.weight"], sd[VIT + "patch_embed.proj.bias"], stride=4)
    size = tuple(x.shape[2:])
    patches = _layer_norm(sd, VIT + "patch_embed.norm", x.flatten(2).transpose(1, 2), 1e-5)
    text_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    embedded = _text_embed(sd, ROBERTA, input_ids, pad_id, text_eps)

    # image_only / text_only: the dual encoder
    x, grid = patches, size
    for stage, depth in enumerate(depths):
        for block in range(depth):
            x = _coarse_swin_block(sd, stage, block, x, grid, heads[stage], window)
        if stage < len(depths) - 1:
            x = _patch_merging(sd, f"{VIT}layers.{stage}.downsample.", x, grid)
            grid = (grid[0] // 2, grid[1] // 2)
    image = _linear(sd, "cross_modal_image_transform_itc", _layer_norm(sd, VIT + "norm", x, 1e-5))
    itc_image = F.normalize(_pool(sd, "cross_modal_image_pooler_itc", image.mean(1)), dim=-1)
    text = embedded
    for index in range(text_layers):
        text = _text_layer(sd, ROBERTA, index, text, text_mask, text_heads, None, text_eps)
    text = _linear(sd, "cross_modal_text_transform_itc", text)
    itc_text = F.normalize(_pool(sd, "cross_modal_text_pooler_itc", text[:, 0]), dim=-1)

    # fused
    x, grid, text = patches, size, embedded
    first_fused_layer = text_layers - num_fused
    for index in range(first_fused_layer):
        text = _text_layer(sd, ROBERTA, index, text, text_mask, text_heads, None, text_eps)
    first_fused_block, block_index = sum(depths) - num_fused, 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            step = block_index - first_fused_block
            if step < 0:
                x = _coarse_swin_block(sd, stage, block, x, grid, heads[stage], window)
            else:  # both streams read the other's state from before this step
                new_x = _coarse_swin_block(sd, stage, block, x, grid, heads[stage], window, text, text_mask)
                index = first_fused_layer + step
                text = _text_layer(
                    sd, ROBERTA, index, text, text_mask, text_heads, x, text_eps, last_norm=index < text_layers - 1
                )
                x = new_x
            block_index += 1
        if stage < len(depths) - 1:
            x = _patch_merging(sd, f"{VIT}layers.{stage}.downsample.", x, grid)
            grid = (grid[0] // 2, grid[1] // 2)
    text_feats = _linear(sd, "cross_modal_text_transform", text)
    image_feats = _linear(sd, "cross_modal_image_transform", x)
    pooled_text = _pool(sd, "cross_modal_text_pooler", text_feats[:, 0])
    cls_feats = torch.cat([pooled_text, _pool(sd, "cross_modal_image_pooler", image_feats.mean(1))], dim=-1)
    transformed = F.gelu(_linear(sd, "mlm_score.transform.dense", text_feats))
    transformed = _layer_norm(sd, "mlm_score.transform.LayerNorm", transformed, MLM_EPS)
    out = {
        "itc_image": itc_image,
        "itc_text": itc_text,
        "text_feats": text_feats,
        "cls_feats": cls_feats,
        "itm_logits": _linear(sd, "itm_score.fc", cls_feats),
        "mlm_logits": F.linear(transformed, sd["mlm_score.decoder.weight"]) + sd["mlm_score.bias"],
    }
    if "vqa_classifier.0.weight" in sd:
        hidden = _layer_norm(sd, "vqa_classifier.1", _linear(sd, "vqa_classifier.0", cls_feats), 1e-5)
        out["vqa_logits"] = _linear(sd, "vqa_classifier.3", F.gelu(hidden))
    return out
