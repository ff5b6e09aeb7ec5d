"""CoarseModelBase: what FIBER's coarse models (coarse-stage pre-training and retrieval, VQA, captioning) share.

They read `CoarseDatasetMapper` outputs (S x S uint8 images, unpadded token ids), run a `FiberBackbone`, and use the
coarse-stage heads (`CoarseHeads`) on the last Swin stage's tokens and the text tokens. As in FIBER's coarse stage
(coarse_grained/fiber/modules/fiber_module.py, `infer`), the unfused image side (ITC) reads the last stage after
Swin's final LayerNorm (`unfused_image_tokens`), the fused side (ITM, MLM, VQA) the raw last-block tokens
(`fused_tokens`; normalised by that LayerNorm too with MODEL.FIBER.COARSE.FUSED_IMAGE_NORM, for a model started from a
detector's backbone).
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from torch import nn

from ..backbone import FiberBackbone, FiberFPN, FusionMode, ImageState, TextState
from .heads import CoarseHeads


def build_coarse_backbone(cfg: CfgNode, model_name: str, backbone: nn.Module | None = None) -> FiberBackbone:
    """`backbone` (a FiberBackbone, or a FiberFPN's bottom-up one, to share its weights) or a new one from `cfg`."""
    backbone = build_backbone(cfg) if backbone is None else backbone
    if isinstance(backbone, FiberFPN):
        backbone = backbone.bottom_up
    if not isinstance(backbone, FiberBackbone):
        raise TypeError(
            f"{model_name} needs a FiberBackbone (MODEL.BACKBONE.NAME 'build_fiber_backbone'), got {type(backbone).__name__}"
        )
    return backbone


def build_coarse_heads(cfg: CfgNode, backbone: FiberBackbone, num_answers: int = 0) -> CoarseHeads:
    """CoarseHeads sized for `backbone` (last Swin stage channels, text width and vocabulary), settings from cfg."""
    text_config = backbone.text.model.config
    return CoarseHeads(
        image_dim=backbone.image.num_features[-1],
        text_dim=text_config.hidden_size,
        vocab_size=text_config.vocab_size,
        temperature=cfg.MODEL.FIBER.COARSE.ITC_TEMPERATURE,
        num_answers=num_answers,
        text_pooling=cfg.MODEL.FIBER.COARSE.TEXT_POOLING,
        itc_batch_norm=cfg.MODEL.FIBER.COARSE.ITC_BATCH_NORM,
    )


class CoarseModelBase(nn.Module):
    """Backbone + heads + pixel normalisation + text padding, for the coarse models."""

    def __init__(
        self,
        backbone: FiberBackbone,
        heads: CoarseHeads,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pad_token_id: int,
        needs_image_output: bool = True,
        fused_image_norm: bool = False,
    ) -> None:
        """needs_image_output: the model reads the last Swin stage's normalised output (`unfused_image_tokens`; it
        must be in SWIN.OUT_FEATURES). fused_image_norm: `fused_tokens` normalises the image tokens with that stage's
        output LayerNorm (it must be in SWIN.OUT_FEATURES)."""
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.pad_token_id = pad_token_id
        self.image_feature = backbone.image.stage_names[-1]
        self.fused_image_norm = fused_image_norm
        if (needs_image_output or fused_image_norm) and self.image_feature not in backbone.output_shape():
            raise ValueError(
                f"{type(self).__name__} reads the last Swin stage {self.image_feature!r}; add it to "
                "MODEL.FIBER.SWIN.OUT_FEATURES"
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: Sequence[dict]) -> torch.Tensor:
        """Normalised images [B, 3, S, S] (the mapper makes them all S x S)."""
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ValueError(f"coarse inputs must all have one size (INPUT.COARSE.IMAGE_SIZE), got {sorted(sizes)}")
        images = torch.stack([x["image"].to(self.device) for x in batched_inputs]).float()
        return (images - self.pixel_mean) / self.pixel_std

    def pad_texts(self, sequences: Sequence[torch.Tensor], fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[T_i] sequences -> [B, T] padded with `fill` (default: the pad token), mask [B, T] (1 on real tokens)."""
        fill = self.pad_token_id if fill is None else fill
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), fill, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(sequences), length), dtype=torch.long, device=self.device)
        for i, sequence in enumerate(sequences):
            ids[i, : len(sequence)] = sequence.to(self.device)
            mask[i, : len(sequence)] = 1
        return ids, mask

    def unfused_image_tokens(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone image features -> the last stage's output tokens [B, N, C], after its LayerNorm (FIBER's
        image-only path)."""
        return features[self.image_feature].flatten(2).transpose(1, 2)

    def fused_tokens(self, image_state: ImageState, text_state: TextState) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower states -> fused pass (FusionMode.ON) -> (last Swin block's tokens [B, N, C] with no final LayerNorm,
        unless `fused_image_norm`; text hidden states [B, T, D], the last layer's LayerNorm left out when
        MODEL.FIBER.TEXT.SKIP_FINAL_NORM), as FIBER's fused path."""
        image, text = self.backbone.fuse(image_state, text_state, FusionMode.ON)
        if self.fused_image_norm:
            return self.backbone.image.out_norms[self.image_feature](image.tokens), text.hidden
        return image.tokens, text.hidden

    def freeze_unused(self, modules: Sequence[nn.Module | nn.Parameter]) -> None:
        """Stop gradients to parts this model never reads (so DDP finds no unused parameter); they stay in the state
        dict, so a coarse-stage checkpoint still loads as it is."""
        for module in modules:
            module.requires_grad_(False)
