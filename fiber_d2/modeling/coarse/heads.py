"""The coarse stage's heads on FIBER's backbone (official coarse_grained/fiber/modules/fiber_module.py and
heads.py; docs/FIBER_DETAILS.md): poolers, ITC projections, ITM, MLM, VQA.

Image tokens are the last Swin stage's tokens [B, N, C]; text tokens the last RoBERTa layer's [B, T, D]. As in FIBER
(coarse_grained/fiber/modules/fiber_module.py, `infer`), the callers give the ITC side the image tokens after Swin's
final LayerNorm (the image-only path) and the fused side the raw last-block tokens (the fused path has no final norm).
  fused features (after a fused pass): image Linear(C -> D), text Linear(D -> D); pooled by Linear(D -> D) + tanh of
      the mean image token and of text token 0 (<s>) (`text_pooling="first"`, FIBER; "mean": the mean of the real
      tokens, for text encoders trained from scratch, whose <s> output hardly depends on the other tokens at init);
      `joint` = concat[text, image] [B, 2D] feeds ITM and VQA.
  ITC features (after an unfused pass): separate copies of those projections and poolers, L2-normalised [B, D];
      `itc_batch_norm` puts a non-affine batch norm (synchronised across processes) before the L2 norm. That is not in
      FIBER: it keeps a dual encoder trained from scratch from collapsing every embedding onto one vector.
  MLM: Hugging Face's RobertaLMHead (dense, GELU, LayerNorm eps 1e-12, decoder to the vocabulary) on the fused text
      tokens after the fused text projection (FIBER's mlm_score reads cross_modal_text_transform's output,
      objectives.py `compute_mlm`); captioning uses it the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn
from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaLMHead


class Pooler(nn.Module):
    """Linear(D -> D) + tanh of one vector per sample."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x))


TEXT_POOLING = ("first", "mean")
# FIBER's MLM head is BertPredictionHeadTransform on a RobertaConfig left at its default eps (the text encoder's: 1e-5).
MLM_LAYER_NORM_EPS = 1e-12


class PooledFeatures(nn.Module):
    """Projections of image tokens (C -> D) and text tokens (D -> D), each followed by a pooler."""

    def __init__(self, image_dim: int, text_dim: int, text_pooling: str = "first") -> None:
        super().__init__()
        if text_pooling not in TEXT_POOLING:
            raise ValueError(f"text pooling must be one of {TEXT_POOLING}, got {text_pooling!r}")
        self.text_pooling = text_pooling
        self.image_transform = nn.Linear(image_dim, text_dim)
        self.text_transform = nn.Linear(text_dim, text_dim)
        self.image_pooler = Pooler(text_dim)
        self.text_pooler = Pooler(text_dim)

    def pool_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, D]: the pooled mean of the projected tokens."""
        return self.image_pooler(self.image_transform(image_tokens).mean(dim=1))

    def pool_text(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], mask [B, T] (1 on real tokens) -> [B, D]: the pooled projection of token 0 or of the mean."""
        if self.text_pooling == "first":
            return self.text_pooler(self.text_transform(text_tokens[:, 0]))
        weights = attention_mask.to(text_tokens.dtype).unsqueeze(-1)
        mean = (text_tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return self.text_pooler(self.text_transform(mean))


class FeatureBatchNorm(nn.Module):
    """Non-affine batch norm of [B, D] features, statistics synchronised across processes in training."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = NaiveSyncBatchNorm(dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :, None, None])[:, :, 0, 0]


class CoarseHeads(nn.Module):
    """All coarse-stage heads. `num_answers` > 0 adds the VQA classifier (MLP 2D -> 2D, LN, GELU -> answers)."""

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        vocab_size: int,
        temperature: float = 0.07,
        num_answers: int = 0,
        text_pooling: str = "first",
        itc_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.fused = PooledFeatures(image_dim, text_dim, text_pooling)
        self.itc = PooledFeatures(image_dim, text_dim, text_pooling)
        self.itc_image_norm = FeatureBatchNorm(text_dim) if itc_batch_norm else nn.Identity()
        self.itc_text_norm = FeatureBatchNorm(text_dim) if itc_batch_norm else nn.Identity()
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.itm = nn.Linear(2 * text_dim, 2)
        self.mlm = RobertaLMHead(
            RobertaConfig(hidden_size=text_dim, vocab_size=vocab_size, layer_norm_eps=MLM_LAYER_NORM_EPS)
        )
        self.mlm.bias = self.mlm.decoder.bias  # one output bias, as Hugging Face ties them when loading weights
        self.vqa = (
            nn.Sequential(
                nn.Linear(2 * text_dim, 2 * text_dim),
                nn.LayerNorm(2 * text_dim),
                nn.GELU(),
                nn.Linear(2 * text_dim, num_answers),
            )
            if num_answers
            else None
        )

    def itc_image_embedding(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Unfused image tokens [B, N, C] -> ITC embedding [B, D], L2-normalised."""
        return F.normalize(self.itc_image_norm(self.itc.pool_image(image_tokens)), dim=-1)

    def itc_text_embedding(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unfused text tokens [B, T, D], mask [B, T] -> ITC embedding [B, D], L2-normalised."""
        return F.normalize(self.itc_text_norm(self.itc.pool_text(text_tokens, attention_mask)), dim=-1)

    def clamped_temperature(self) -> torch.Tensor:
        """The ITC temperature, clamped to [0.001, 1] as in FIBER."""
        return self.temperature.clamp(0.001, 1.0)

    def joint(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Fused tokens [B, N, C], [B, T, D] and the text mask [B, T] -> concat[pooled text, pooled image] [B, 2D]."""
        pooled_text = self.fused.pool_text(text_tokens, attention_mask)
        return torch.cat([pooled_text, self.fused.pool_image(image_tokens)], dim=-1)

    def mlm_logits(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """Fused (or decoder) text tokens [B, T, D] -> vocabulary logits [B, T, V]: the MLM head on their fused
        projection."""
        return self.mlm(self.fused.text_transform(text_tokens))
