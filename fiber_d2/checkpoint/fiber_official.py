"""Official FIBER checkpoints (microsoft/FIBER) -> fiber_d2 parameter names, as an ordered table of regex rules.

Each official key (after stripping DDP's `module.` prefixes) goes through the table of its stage; the first rule
whose pattern matches the whole key decides: a target name (a rename), or no target (dropped on purpose, reported
under the rule's reason). Keys no rule matches are reported as unmapped; nothing is ever dropped silently.

Target names (the contract with the models that load the converted files):

Fine stage (maskrcnn_benchmark `model` / `model_ema`: `fusion_backbone.*`, `rpn.*`), for a Detectron2 model whose
`backbone` is an FPN over FiberBackbone (`backbone.bottom_up`):
    backbone.bottom_up.image.patch_embed.{proj,norm}
    backbone.bottom_up.image.layers.{s}.blocks.{b}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,
                                                    norm2,mlp.fc1,mlp.fc2}
    backbone.bottom_up.image.layers.{s}.blocks.{b}.i2t.{query,text_kv,proj,alpha,norm}  (attn.qkv_i2t, qkv_text_i2t,
                                                    proj_i2t, alpha_i2t, norm_i2t_i; norm in v3 only)
    backbone.bottom_up.image.layers.{s}.downsample.{norm,reduction}                      (merging at the end of stage s)
    backbone.bottom_up.image.out_norms.res{i+2}                                          (official body.norm{i})
    backbone.bottom_up.text.model.{embeddings,encoder.layer.{i}}.*                       (Hugging Face RobertaModel)
    backbone.bottom_up.text.t2i.{i}.{query,key,value,dense,alpha}  (layer i's crossattention_t2i.self.{query,key,
                                                    value}, crossattention_t2i.output.dense and alpha_t2i)
    backbone.fpn_lateral{3,4,5}, backbone.fpn_output{3,4,5}        (official fpn.fpn_inner{2,3,4}, fpn.fpn_layer{2,3,4})
    backbone.top_block.{p6,p7}                                     (official fpn.top_blocks.{p6,p7})
    head.tower.layers.{i}.convs.{j}.{conv,norm}    (rpn.head.dyhead_tower.{i}.DyConv.{j}.{conv,bn}; j: 0 coarser level,
                                                    1 same level, 2 finer level)
    head.tower.layers.{i}.{offset,scale_attention.1,dyrelu.fc.{0,2}}   (offset, AttnConv.1, relu.fc.{0,2})
    head.{bbox_pred,centerness,scales.{l}.scale,log_scale,bias_lang,bias0}   (the same names under rpn.head)
    head.text_projection                                           (rpn.head.dot_product_projection_text)

Coarse stage (Lightning `state_dict` of fiber_pretrain.ckpt or a fine-tuned VQA checkpoint), for a coarse
model (`FiberCoarseModel`, `FiberVQAModel`: `backbone` is FiberBackbone without FPN, `heads` is CoarseHeads):
    backbone.image.*, backbone.text.*     as above (vit_model.*, text_transformer.*); the final Swin `norm` ->
                                          backbone.image.out_norms.res5 (the merging is at the end of each stage too)
    heads.fused.{text,image}_transform    Linear 768->768, 1024->768 (cross_modal_{text,image}_transform)
    heads.itc.{text,image}_transform      the same shapes (cross_modal_{text,image}_transform_itc)
    heads.fused.{text,image}_pooler.dense Linear 768->768 (cross_modal_{text,image}_pooler.dense)
    heads.itc.{text,image}_pooler.dense   Linear 768->768 (cross_modal_{text,image}_pooler_itc.dense)
    heads.mlm.dense, heads.mlm.layer_norm Hugging Face RobertaLMHead (mlm_score.transform.{dense,LayerNorm})
    heads.mlm.decoder.weight, heads.mlm.bias   Linear 768->vocab (mlm_score.decoder.weight) and the official separate
                                          `mlm_score.bias`, also written as heads.mlm.decoder.bias (tied)
    heads.itm                             Linear 1536->2 (itm_score.fc)
    heads.temperature                     scalar (temp)
    heads.vqa.{0,1,3}                     the VQA classifier Linear, LayerNorm, Linear (vqa_classifier.{0,1,3})

Dropped on purpose: non-persistent buffers we rebuild (relative_position_index, attn_mask, RoBERTa position_ids /
token_type_ids, rpn.anchor_generator cell anchors), GLIP's frozen class head `rpn.head.cls_logits` (its loss weight is
0; FIBER scores boxes by token alignment only), the ITC queues and their pointers, `rank_output` (a copy of row 1 of
the ITM head), the unused LayerNorm inside each text cross-attention, the RoBERTa pooler, and the `alpha_t2i` that the
coarse RoBERTa creates on layers without a cross-attention.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Literal, Mapping

import torch

from .io import CheckpointLayoutError, describe_keys

Stage = Literal["fine", "coarse", "auto"]

STAGES = ("fine", "coarse")
# A checkpoint is of a stage when one of its keys (module. stripped) starts with one of these.
STAGE_MARKERS = {"fine": ("fusion_backbone.",), "coarse": ("vit_model.", "text_transformer.")}

_FUSED_TEXT_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.crossattention_t2i\.")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the table.

    pattern: regex matched against the whole official key; its named groups feed `target`.
    target: str.format template over the named groups (after adding `offsets` to integer groups); None drops the key.
    reason: the group a dropped key is reported under (required for drops, empty for renames).
    fused_layer_only: match only text layers that have a cross-attention (`{i}` of encoder.layer.{i}).
    """

    pattern: str
    target: str | None
    reason: str = ""
    offsets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    fused_layer_only: bool = False
    regex: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.target is None) == (not self.reason):
            raise ValueError(f"rule {self.pattern!r}: a drop rule needs a reason and a rename rule none")
        object.__setattr__(self, "regex", re.compile(self.pattern))

    def apply(self, key: str, fused_layers: frozenset[int]) -> tuple[bool, str | None]:
        """(matched, target name or None for a drop)."""
        match = self.regex.fullmatch(key)
        if match is None:
            return False, None
        groups = match.groupdict()
        if self.fused_layer_only and int(groups["i"]) not in fused_layers:
            return False, None
        if self.target is None:
            return True, None
        values = dict(groups)
        for name, offset in self.offsets.items():
            values[name] = int(values[name]) + offset
        return True, self.target.format(**values)


_W = r"(?P<p>weight|bias)"
_BLOCK = r"layers\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\."
_LAYER = r"encoder\.layer\.(?P<i>\d+)\."

DROP_INDEX = "relative_position_index buffers (rebuilt)"
DROP_ATTN_MASK = "shifted-window attn_mask buffers (rebuilt)"
DROP_TEXT_BUFFERS = "RoBERTa position_ids/token_type_ids buffers (rebuilt)"
DROP_CROSS_NORM = "unused LayerNorms of the text cross-attention"
DROP_UNFUSED_ALPHA = "alpha_t2i of text layers without cross-attention (unused)"
DROP_POOLER = "RoBERTa pooler (unused by FIBER)"
DROP_ANCHORS = "anchor generator buffers (rebuilt)"
DROP_CLASS_HEAD = "GLIP's frozen class head rpn.head.cls_logits (loss weight 0, unused)"
DROP_QUEUES = "ITC queues and queue pointers"
DROP_RANK_OUTPUT = "rank_output (a copy of the ITM head's row 1)"


def _swin_rules(src: str, dst: str) -> list[Rule]:
    """The Swin body under official prefix `src` (a regex) -> our SwinTransformer under `dst`."""
    return [
        Rule(src + _BLOCK + r"attn\.relative_position_index", None, DROP_INDEX),
        Rule(src + _BLOCK + r"attn_mask", None, DROP_ATTN_MASK),
        Rule(src + r"patch_embed\.(?P<m>proj|norm)\." + _W, dst + "patch_embed.{m}.{p}"),
        Rule(
            src + _BLOCK + r"(?P<m>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\." + _W,
            dst + "layers.{s}.blocks.{b}.{m}.{p}",
        ),
        Rule(
            src + _BLOCK + r"attn\.relative_position_bias_table",
            dst + "layers.{s}.blocks.{b}.attn.relative_position_bias_table",
        ),
        Rule(src + _BLOCK + r"attn\.qkv_i2t\." + _W, dst + "layers.{s}.blocks.{b}.i2t.query.{p}"),
        Rule(src + _BLOCK + r"attn\.qkv_text_i2t\." + _W, dst + "layers.{s}.blocks.{b}.i2t.text_kv.{p}"),
        Rule(src + _BLOCK + r"attn\.proj_i2t\." + _W, dst + "layers.{s}.blocks.{b}.i2t.proj.{p}"),
        Rule(src + _BLOCK + r"attn\.alpha_i2t", dst + "layers.{s}.blocks.{b}.i2t.alpha"),
        Rule(src + _BLOCK + r"attn\.norm_i2t_i\." + _W, dst + "layers.{s}.blocks.{b}.i2t.norm.{p}"),
        Rule(
            src + r"layers\.(?P<s>\d+)\.downsample\.(?P<m>norm|reduction)\." + _W,
            dst + "layers.{s}.downsample.{m}.{p}",
        ),
    ]


def _roberta_rules(src: str, dst: str) -> list[Rule]:
    """The fused RoBERTa under official prefix `src` (a regex) -> our RobertaTextEncoder under `dst`."""
    return [
        Rule(src + r"embeddings\.(?:position_ids|token_type_ids)", None, DROP_TEXT_BUFFERS),
        Rule(
            src + r"embeddings\.(?P<m>word_embeddings|position_embeddings|token_type_embeddings)\.weight",
            dst + "model.embeddings.{m}.weight",
        ),
        Rule(src + r"embeddings\.LayerNorm\." + _W, dst + "model.embeddings.LayerNorm.{p}"),
        Rule(src + r"pooler\.dense\." + _W, None, DROP_POOLER),
        Rule(src + _LAYER + r"crossattention_t2i\.self\.(?P<m>query|key|value)\." + _W, dst + "t2i.{i}.{m}.{p}"),
        Rule(src + _LAYER + r"crossattention_t2i\.output\.dense\." + _W, dst + "t2i.{i}.dense.{p}"),
        Rule(src + _LAYER + r"crossattention_t2i\.output\.LayerNorm\." + _W, None, DROP_CROSS_NORM),
        Rule(src + _LAYER + r"alpha_t2i", dst + "t2i.{i}.alpha", fused_layer_only=True),
        Rule(src + _LAYER + r"alpha_t2i", None, DROP_UNFUSED_ALPHA),
        Rule(
            src
            + _LAYER
            + r"(?P<m>attention\.self\.(?:query|key|value)|attention\.output\.(?:dense|LayerNorm)"
            + r"|intermediate\.dense|output\.(?:dense|LayerNorm))\."
            + _W,
            dst + "model.encoder.layer.{i}.{m}.{p}",
        ),
    ]


FINE_RULES: list[Rule] = [
    *_swin_rules(r"fusion_backbone\.backbone\.body\.", "backbone.bottom_up.image."),
    Rule(
        r"fusion_backbone\.backbone\.body\.norm(?P<i>\d)\." + _W,
        "backbone.bottom_up.image.out_norms.res{i}.{p}",
        offsets={"i": 2},
    ),
    *_roberta_rules(r"fusion_backbone\.language_backbone\.body\.model\.", "backbone.bottom_up.text."),
    Rule(r"fusion_backbone\.backbone\.fpn\.fpn_inner(?P<i>\d)\." + _W, "backbone.fpn_lateral{i}.{p}", offsets={"i": 1}),
    Rule(r"fusion_backbone\.backbone\.fpn\.fpn_layer(?P<i>\d)\." + _W, "backbone.fpn_output{i}.{p}", offsets={"i": 1}),
    Rule(r"fusion_backbone\.backbone\.fpn\.top_blocks\.(?P<m>p6|p7)\." + _W, "backbone.top_block.{m}.{p}"),
    Rule(r"rpn\.anchor_generator\..+", None, DROP_ANCHORS),
    Rule(
        r"rpn\.head\.dyhead_tower\.(?P<i>\d+)\.DyConv\.(?P<j>\d)\.conv\." + _W,
        "head.tower.layers.{i}.convs.{j}.conv.{p}",
    ),
    Rule(
        r"rpn\.head\.dyhead_tower\.(?P<i>\d+)\.DyConv\.(?P<j>\d)\.bn\." + _W, "head.tower.layers.{i}.convs.{j}.norm.{p}"
    ),
    Rule(r"rpn\.head\.dyhead_tower\.(?P<i>\d+)\.offset\." + _W, "head.tower.layers.{i}.offset.{p}"),
    Rule(r"rpn\.head\.dyhead_tower\.(?P<i>\d+)\.AttnConv\.1\." + _W, "head.tower.layers.{i}.scale_attention.1.{p}"),
    Rule(
        r"rpn\.head\.dyhead_tower\.(?P<i>\d+)\.relu\.fc\.(?P<k>[02])\." + _W, "head.tower.layers.{i}.dyrelu.fc.{k}.{p}"
    ),
    Rule(r"rpn\.head\.(?P<m>bbox_pred|centerness)\." + _W, "head.{m}.{p}"),
    Rule(r"rpn\.head\.scales\.(?P<l>\d+)\.scale", "head.scales.{l}.scale"),
    Rule(r"rpn\.head\.dot_product_projection_text\." + _W, "head.text_projection.{p}"),
    Rule(r"rpn\.head\.(?P<m>log_scale|bias_lang|bias0)", "head.{m}"),
    Rule(r"rpn\.head\.cls_logits\." + _W, None, DROP_CLASS_HEAD),
]

COARSE_RULES: list[Rule] = [
    *_swin_rules(r"vit_model\.", "backbone.image."),
    Rule(r"vit_model\.norm\." + _W, "backbone.image.out_norms.res5.{p}"),
    *_roberta_rules(r"text_transformer\.", "backbone.text."),
    Rule(r"cross_modal_(?P<m>text|image)_transform\." + _W, "heads.fused.{m}_transform.{p}"),
    Rule(r"cross_modal_(?P<m>text|image)_transform_itc\." + _W, "heads.itc.{m}_transform.{p}"),
    Rule(r"cross_modal_(?P<m>text|image)_pooler\.dense\." + _W, "heads.fused.{m}_pooler.dense.{p}"),
    Rule(r"cross_modal_(?P<m>text|image)_pooler_itc\.dense\." + _W, "heads.itc.{m}_pooler.dense.{p}"),
    Rule(r"mlm_score\.transform\.dense\." + _W, "heads.mlm.dense.{p}"),
    Rule(r"mlm_score\.transform\.LayerNorm\." + _W, "heads.mlm.layer_norm.{p}"),
    Rule(r"mlm_score\.decoder\.weight", "heads.mlm.decoder.weight"),
    Rule(r"mlm_score\.bias", "heads.mlm.bias"),
    Rule(r"itm_score\.fc\." + _W, "heads.itm.{p}"),
    Rule(r"temp", "heads.temperature"),
    Rule(r"vqa_classifier\.(?P<i>[013])\." + _W, "heads.vqa.{i}.{p}"),
    Rule(r"rank_output\." + _W, None, DROP_RANK_OUTPUT),
    Rule(
        r"(?:image|text)_queue|(?:image|text)_input_queue|text_input_mask_queue|queue_ptr|queue_total",
        None,
        DROP_QUEUES,
    ),
]

RULES: dict[str, list[Rule]] = {"fine": FINE_RULES, "coarse": COARSE_RULES}
# Names our models tie to another converted name (one tensor under both, as the model's state dict has it).
TIED_NAMES: dict[str, dict[str, str]] = {"fine": {}, "coarse": {"heads.mlm.bias": "heads.mlm.decoder.bias"}}


@dataclasses.dataclass
class ConversionReport:
    """What `convert_official_state_dict` did.

    state_dict: converted tensors under our names; unmapped: official keys no rule matched (in input order);
    dropped: reason -> official keys dropped on purpose; stage: "fine" or "coarse".
    """

    stage: str
    state_dict: dict[str, torch.Tensor]
    unmapped: list[str]
    dropped: dict[str, list[str]]

    @property
    def num_dropped(self) -> int:
        return sum(len(keys) for keys in self.dropped.values())


def strip_module_prefix(key: str) -> str:
    """`module.module.x` -> `x` (DistributedDataParallel / DataParallel wrappers)."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def detect_stage(keys: list[str]) -> str:
    """The stage ("fine" or "coarse") the key prefixes (module. stripped) show; CheckpointLayoutError when neither or
    both do."""
    found = [stage for stage in STAGES if any(key.startswith(STAGE_MARKERS[stage]) for key in keys)]
    if len(found) == 1:
        return found[0]
    if not found:
        markers = ", ".join(marker + "*" for stage in STAGES for marker in STAGE_MARKERS[stage])
        raise CheckpointLayoutError(
            f"not an official FIBER checkpoint: no key starts with {markers}; first keys: {describe_keys(keys)}"
        )
    raise CheckpointLayoutError("the checkpoint mixes fine (fusion_backbone.*) and coarse (vit_model.*) keys")


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], *, stage: Stage = "auto") -> ConversionReport:
    """Rename an official FIBER state dict (fine `model`/`model_ema`, or coarse Lightning `state_dict`) to ours.

    Tensors are passed through unchanged (same shapes; no copies). Raises CheckpointLayoutError when the keys are not
    of the requested stage, or when two official keys land on the same name.
    """
    if stage not in (*STAGES, "auto"):
        raise ValueError(f"stage must be 'fine', 'coarse' or 'auto', got {stage!r}")
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = strip_module_prefix(key)
        if name in stripped:
            raise CheckpointLayoutError(f"key {name!r} appears both with and without a 'module.' prefix")
        stripped[name] = value
    keys = list(stripped)
    if stage == "auto":
        stage = detect_stage(keys)
    elif not any(key.startswith(STAGE_MARKERS[stage]) for key in keys):
        raise CheckpointLayoutError(
            f"not a {stage} FIBER checkpoint: no key starts with {' or '.join(STAGE_MARKERS[stage])}; "
            f"first keys: {describe_keys(keys)}"
        )
    fused_layers = frozenset(int(match.group(1)) for key in keys if (match := _FUSED_TEXT_LAYER.search(key)))
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmapped: list[str] = []
    dropped: dict[str, list[str]] = {}
    for key in keys:
        for rule in RULES[stage]:
            matched, target = rule.apply(key, fused_layers)
            if not matched:
                continue
            if target is None:
                dropped.setdefault(rule.reason, []).append(key)
            elif target in sources:
                raise CheckpointLayoutError(f"official keys {sources[target]!r} and {key!r} both map to {target!r}")
            else:
                converted[target] = stripped[key]
                sources[target] = key
            break
        else:
            unmapped.append(key)
    for name, tied in TIED_NAMES[stage].items():
        if name in converted:
            converted[tied] = converted[name]
    return ConversionReport(stage=stage, state_dict=converted, unmapped=unmapped, dropped=dropped)
