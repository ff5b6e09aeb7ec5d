"""FiberTextPretrainer: FIBER's text encoder pretrained alone by masked language modelling (registered in
META_ARCH_REGISTRY), the stand-in for the pretrained RoBERTa that FIBER starts from, where none can be had.

Training inputs (`CoarseDatasetMapper`, task "text": a caption's `input_ids` [T] and their BERT-masked copy
`mlm_input_ids` [T] with `mlm_labels` [T]; no image) run the text side alone, fusion off (`encode_text_lower`, then
`finish_text_unfused`), into the coarse stage's MLM head:
  loss_mlm  cross-entropy of the masked tokens (`mlm_loss`).
On FIBER-Shapes, the coarse stage's MLM (batch 16, fused with the image) leaves a text encoder trained from random
weights unable to tell which kind of word a masked position holds after 1000 iterations; text alone at batch 128
learns that within a few hundred (docs/EXPERIMENTS.md).

The state dict is a coarse model's: a whole FiberBackbone under `backbone.` and `CoarseHeads` under `heads.`. The image
side, the text side's cross-attentions and every head but the MLM one (and the fused text projection it reads) are
frozen and pass through unchanged, so a checkpoint started from FiberImagePretrainer's carries both encoders into
FiberCoarseModel through MODEL.WEIGHTS.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..backbone import FiberBackbone
from ..coarse.base import CoarseModelBase, build_coarse_backbone, build_coarse_heads
from ..coarse.heads import CoarseHeads
from ..coarse.losses import mlm_loss


@META_ARCH_REGISTRY.register()
class FiberTextPretrainer(CoarseModelBase):
    """The text side of a FiberBackbone (fusion off) + the coarse MLM head; MLM on texts alone."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberBackbone,
        heads: CoarseHeads,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pad_token_id: int,
    ) -> None:
        super().__init__(backbone, heads, pixel_mean, pixel_std, pad_token_id, needs_image_output=False)
        # Everything is frozen but the text side (without its cross-attentions, unused with fusion off) and the MLM
        # head with the fused text projection it reads.
        self.freeze_unused([self])
        for module in (backbone.text, heads.mlm, heads.fused.text_transform):
            module.requires_grad_(True)
        backbone.text.t2i.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_coarse_backbone(cfg, cls.__name__)
        return {
            "backbone": backbone,
            "heads": build_coarse_heads(cfg, backbone),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pad_token_id": backbone.text.model.config.pad_token_id,
        }

    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Texts [B, T] (mask [B, T]) through the text side alone -> vocabulary logits [B, T, V]."""
        text = self.backbone.finish_text_unfused(self.backbone.encode_text_lower(input_ids, attention_mask))
        return self.heads.mlm_logits(text)

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not self.training:
            raise NotImplementedError("FiberTextPretrainer only trains (set DATASETS.TEST to ())")
        missing = [i for i, x in enumerate(batched_inputs) if "mlm_input_ids" not in x or "mlm_labels" not in x]
        if missing:
            raise ValueError(
                f"text-pretraining inputs {missing} lack 'mlm_input_ids' / 'mlm_labels' (CoarseDatasetMapper, task 'text')"
            )
        masked_ids, mask = self.pad_texts([x["mlm_input_ids"] for x in batched_inputs])
        labels, _ = self.pad_texts([x["mlm_labels"] for x in batched_inputs], fill=-100)
        return {"loss_mlm": mlm_loss(self.mlm_logits(masked_ids, mask), labels)}
