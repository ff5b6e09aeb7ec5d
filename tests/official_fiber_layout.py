"""Official FIBER state dicts written from our models, with the official names spelled out by hand (microsoft/FIBER:
fine_grained/.../fusion_swin_transformer_v2.py/_v3.py, roberta_fused_model_v2.py, fpn.py; coarse_grained/fiber/modules/
fiber_module.py, swin_transformer.py, roberta.py), plus the official extras: `module.` prefixes, buffers, anchors,
queues. The inverse of the converter, written independently of it, for the conversion and equivalence tests.
"""
import torch

NUM_QUEUE = 16

# Our fusion module names -> the official ones (hand-written from the official source).
I2T_OFFICIAL = {"query": "qkv_i2t", "text_kv": "qkv_text_i2t", "proj": "proj_i2t", "norm": "norm_i2t_i"}
T2I_OFFICIAL = {
    "query": "crossattention_t2i.self.query",
    "key": "crossattention_t2i.self.key",
    "value": "crossattention_t2i.self.value",
    "dense": "crossattention_t2i.output.dense",
}


def official_swin(image, prefix):
    out = {f"{prefix}patch_embed.{name}": t for name, t in image.patch_embed.state_dict().items()}
    for s, stage in enumerate(image.layers):
        for b, block in enumerate(stage.blocks):
            block_prefix = f"{prefix}layers.{s}.blocks.{b}."
            for name, tensor in block.state_dict().items():
                if name.startswith("i2t."):
                    module, _, param = name[len("i2t.") :].partition(".")
                    name = "attn.alpha_i2t" if module == "alpha" else f"attn.{I2T_OFFICIAL[module]}.{param}"
                out[block_prefix + name] = tensor
            out[block_prefix + "attn.relative_position_index"] = block.attn.relative_position_index
        if stage.downsample is not None:
            out.update({f"{prefix}layers.{s}.downsample.{n}": t for n, t in stage.downsample.state_dict().items()})
    return out


def official_roberta(text, prefix, coarse):
    """fine: roberta_fused_model_v2 (cross-attention and alpha_t2i on fused layers only, cross LayerNorm = Identity);
    coarse: roberta.py (alpha_t2i on every layer, a cross LayerNorm, HF pooler)."""
    hidden = text.hidden_size
    out = {f"{prefix}embeddings.{name}": t for name, t in text.model.embeddings.state_dict().items()}
    out[f"{prefix}embeddings.position_ids"] = torch.arange(text.model.config.max_position_embeddings)[None]
    for i, layer in enumerate(text.model.encoder.layer):
        layer_prefix = f"{prefix}encoder.layer.{i}."
        out.update({layer_prefix + name: t for name, t in layer.state_dict().items()})
        if str(i) in text.t2i:
            t2i = text.t2i[str(i)]
            for ours, official in T2I_OFFICIAL.items():
                out.update({f"{layer_prefix}{official}.{p}": t for p, t in getattr(t2i, ours).state_dict().items()})
            out[layer_prefix + "alpha_t2i"] = t2i.alpha
            if coarse:
                out[layer_prefix + "crossattention_t2i.output.LayerNorm.weight"] = torch.rand(hidden)
                out[layer_prefix + "crossattention_t2i.output.LayerNorm.bias"] = torch.rand(hidden)
        elif coarse:
            out[layer_prefix + "alpha_t2i"] = torch.zeros(1)
    if coarse:
        out[f"{prefix}pooler.dense.weight"] = torch.rand(hidden, hidden)
        out[f"{prefix}pooler.dense.bias"] = torch.rand(hidden)
    return out


def params_of(prefix, module):
    return {f"{prefix}.{p}": t for p, t in module.state_dict().items()}


def official_fine_model(model):
    """A maskrcnn_benchmark GeneralizedVLRCNN state dict (DDP `module.` prefixes included), without rpn.head."""
    body, fpn = "fusion_backbone.backbone.body.", "fusion_backbone.backbone.fpn."
    bottom_up = model.backbone.bottom_up
    out = official_swin(bottom_up.image, body)
    for name, norm in bottom_up.image.out_norms.items():  # norm{i} normalises stage i (res{i+2})
        out.update(params_of(f"{body}norm{int(name[len('res'):]) - 2}", norm))
    out.update(official_roberta(bottom_up.text, "fusion_backbone.language_backbone.body.model.", coarse=False))
    for level in (3, 4, 5):  # official FPN index 1 is C2 (skipped), so C3..C5 are fpn_inner/fpn_layer 2..4
        out.update(params_of(f"{fpn}fpn_inner{level - 1}", getattr(model.backbone, f"fpn_lateral{level}")))
        out.update(params_of(f"{fpn}fpn_layer{level - 1}", getattr(model.backbone, f"fpn_output{level}")))
    for name in ("p6", "p7"):
        out.update(params_of(f"{fpn}top_blocks.{name}", getattr(model.backbone.top_block, name)))
    for level in range(5):
        out[f"rpn.anchor_generator.cell_anchors.{level}"] = torch.tensor([[-32.0, -32.0, 32.0, 32.0]]) * 2**level
    return {"module." + key: value.detach().clone() for key, value in out.items()}


def official_coarse_model(model):
    """A FIBERTransformerSS (Lightning) state dict: vit_model, text_transformer, heads, rank_output, queues."""
    image, text, hidden = model.backbone.image, model.backbone.text, model.backbone.text.hidden_size
    out = official_swin(image, "vit_model.")
    for s, stage in enumerate(image.layers):
        for b in range(1, len(stage.blocks), 2):  # shifted blocks register their mask as a buffer
            out[f"vit_model.layers.{s}.blocks.{b}.attn_mask"] = torch.zeros(4, 49, 49)
    out.update(params_of("vit_model.norm", image.out_norms["res5"]))
    out.update(official_roberta(text, "text_transformer.", coarse=True))
    heads = model.heads
    for side in ("text", "image"):
        out.update(params_of(f"cross_modal_{side}_transform", getattr(heads.fused, f"{side}_transform")))
        out.update(params_of(f"cross_modal_{side}_transform_itc", getattr(heads.itc, f"{side}_transform")))
        out.update(params_of(f"cross_modal_{side}_pooler.dense", getattr(heads.fused, f"{side}_pooler").dense))
        out.update(params_of(f"cross_modal_{side}_pooler_itc.dense", getattr(heads.itc, f"{side}_pooler").dense))
    out.update(params_of("mlm_score.transform.dense", heads.mlm.dense))
    out.update(params_of("mlm_score.transform.LayerNorm", heads.mlm.layer_norm))
    out["mlm_score.decoder.weight"], out["mlm_score.bias"] = heads.mlm.decoder.weight, heads.mlm.bias
    out.update(params_of("itm_score.fc", heads.itm))
    out["rank_output.weight"], out["rank_output.bias"] = heads.itm.weight[1:], heads.itm.bias[1:]
    out["temp"] = heads.temperature
    for i in (0, 1, 3):
        out.update(params_of(f"vqa_classifier.{i}", heads.vqa[i]))
    out["image_queue"], out["text_queue"] = torch.randn(hidden, NUM_QUEUE), torch.randn(hidden, NUM_QUEUE)
    out["image_input_queue"] = torch.randn(NUM_QUEUE, 3, 8, 8)
    out["text_input_queue"] = torch.zeros(NUM_QUEUE, 5, dtype=torch.long)
    out["text_input_mask_queue"] = torch.zeros(NUM_QUEUE, 5, dtype=torch.long)
    out["queue_ptr"], out["queue_total"] = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    return {key: value.detach().clone() for key, value in out.items()}
