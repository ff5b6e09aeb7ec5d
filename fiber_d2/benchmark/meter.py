"""A METER-style fusion baseline (Dou et al., CVPR 2022) on FIBER's encoders: the two unimodal encoders, then
K co-attention layers per stream on top. The `backbone` benchmark compares its cost with FIBER's fusion."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbone import FiberBackbone, FusionMode
from ..modeling.backbone.attention import multi_head_attention, padding_bias


class MeterAttention(nn.Module):
    """BERT attention block: LN(x + Dense(MHA(Q x, K ctx, V ctx))); ctx = x for self-attention."""

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, hidden], context [B, S, hidden], context_bias: additive key bias or None -> [B, L, hidden]."""
        attended = multi_head_attention(
            self.query(x),
            self.key(context),
            self.value(context),
            self.num_heads,
            bias=context_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.norm(x + self.dropout(self.dense(attended)))


class MeterCoAttentionLayer(nn.Module):
    """METER's BertCrossLayer for one stream: self-attention, cross-attention to the other stream, FFN (BERT style)."""

    def __init__(self, hidden: int = 768, num_heads: int = 12, intermediate: int = 3072, dropout: float = 0.1):
        super().__init__()
        self.self_attention = MeterAttention(hidden, num_heads, dropout)
        self.cross_attention = MeterAttention(hidden, num_heads, dropout)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(
        self, x: torch.Tensor, x_bias: torch.Tensor | None, other: torch.Tensor, other_bias: torch.Tensor | None
    ) -> torch.Tensor:
        """x: [B, L, hidden] this stream; other: [B, S, hidden]; *_bias: additive key-padding biases or None."""
        x = self.self_attention(x, x, x_bias)
        x = self.cross_attention(x, other, other_bias)
        return self.norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class MeterFusion(nn.Module):
    """METER's fusion module: projections into `hidden`, modality-type embeddings, and `num_layers` co-attention
    layers per stream. Both streams update in parallel (each layer reads the other stream's previous state)."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate: int = 3072,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, hidden)
        self.text_proj = nn.Linear(text_dim, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.image_layers = nn.ModuleList(
            MeterCoAttentionLayer(hidden, num_heads, intermediate, dropout) for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            MeterCoAttentionLayer(hidden, num_heads, intermediate, dropout) for _ in range(num_layers)
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(
        self, image_tokens: torch.Tensor, text: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens [B, N, image_dim] (no mask, as in METER); text [B, T, text_dim]; attention_mask [B, T].

        Returns (fused image [B, N, hidden], fused text [B, T, hidden]).
        """
        y = self.image_proj(image_tokens) + self.token_type.weight[1]
        x = self.text_proj(text) + self.token_type.weight[0]
        text_bias = padding_bias(attention_mask, x.dtype)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            x, y = text_layer(x, text_bias, y, None), image_layer(y, None, x, text_bias)
        return y, x


class MeterBaseline(nn.Module):
    """METER-style model on FIBER's encoders: the backbone with fusion OFF (two unimodal encoders), then the final
    Swin stage's tokens (after its LayerNorm) and the text hidden states go through `MeterFusion`.

    forward(images, ids, mask) -> (*unfused image features, unfused text, fused image [B, N, hidden], fused text).
    `for_backbone` sizes the fusion like the text encoder (FIBER-B: hidden 768, 12 heads, FFN 3072, 6 layers = METER).
    """

    @classmethod
    def for_backbone(cls, backbone: FiberBackbone) -> MeterBaseline:
        """METER's fusion scaled to the backbone: text hidden size, heads, FFN size and dropout; one co-attention
        layer per fused step K (FIBER-B: 768, 12, 3072, 0.1, 6 layers, which is METER's setting)."""
        config = backbone.text.model.config
        return cls(backbone, hidden=config.hidden_size, num_layers=backbone.num_fused,
                   num_heads=config.num_attention_heads, intermediate=config.intermediate_size,
                   dropout=config.hidden_dropout_prob)

    def __init__(self, backbone: FiberBackbone, hidden: int = 768, num_layers: int = 6, num_heads: int = 12,
                 intermediate: int = 3072, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.feature_names = list(backbone.output_shape())
        image_dim = backbone.output_shape()[self.feature_names[-1]].channels
        self.fusion = MeterFusion(image_dim, backbone.text.hidden_size, hidden, num_layers, num_heads, intermediate,
                                  dropout)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        features, text = self.backbone(images, input_ids, attention_mask, fusion=FusionMode.OFF)
        image_tokens = features[self.feature_names[-1]].flatten(2).transpose(1, 2)
        fused_image, fused_text = self.fusion(image_tokens, text, attention_mask)
        return (*(features[name] for name in self.feature_names), text, fused_image, fused_text)
