"""FiberVQAModel: VQAv2 as answer classification on FIBER's fused backbone (docs/FIBER_DETAILS.md; registered in
META_ARCH_REGISTRY).

Training (inputs from `CoarseDatasetMapper`, task "vqa": `image` [3, S, S], the question's `input_ids` [T] and
`vqa_targets` [A], soft scores over the answer vocabulary) runs image and question through the backbone with fusion on,
pools them into `heads.joint` [B, 2D] (the raw last Swin tokens, as FIBER's fused path:
`CoarseModelBase.fused_tokens`) and classifies with `heads.vqa` (MLP 2D -> 2D, LN, GELU -> A):
  loss_vqa  mean binary cross-entropy over the B x A logits, times A (`vqa_loss`, FIBER's "BCE x 3129").
Inference returns per question {"question_id", "answer": the string of the top class, "scores": [A] sigmoid
probabilities}, as VQAEvaluator wants.

The answer vocabulary is kept in `answers`; the model and its data loaders take it from the config (MODEL.FIBER.VQA.
ANSWER_VOCABULARY, or the answers of DATASETS.TRAIN) through `data.vqa_vocabulary.answer_vocabulary_from_config`.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...data.vqa_vocabulary import answer_vocabulary_from_config
from ..backbone import FiberBackbone
from .base import CoarseModelBase, build_coarse_heads, build_coarse_backbone
from .heads import CoarseHeads

logger = logging.getLogger(__name__)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits, targets [B, A] (targets: soft scores in [0, 1]) -> mean BCE-with-logits over all B x A entries, x A."""
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"VQA logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [batch, answers]"
        )
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[1]


@META_ARCH_REGISTRY.register()
class FiberVQAModel(CoarseModelBase):
    """Fused backbone + `CoarseHeads` with the VQA classifier; BCE over the answer vocabulary in training, the top
    answer at inference."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberBackbone,
        heads: CoarseHeads,
        answers: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pad_token_id: int,
        fused_image_norm: bool = False,
    ) -> None:
        super().__init__(backbone, heads, pixel_mean, pixel_std, pad_token_id, needs_image_output=False,
                         fused_image_norm=fused_image_norm)
        if not answers or len(set(answers)) < len(answers):
            raise ValueError("the VQA answer vocabulary must be a non-empty list of unique answers")
        if heads.vqa is None or heads.vqa[-1].out_features != len(answers):
            raise ValueError(f"the heads need a VQA classifier over {len(answers)} answers (CoarseHeads num_answers)")
        self.answers = list(answers)
        logger.info("FiberVQAModel: %d answer classes (%s, ...)", len(self.answers), ", ".join(self.answers[:5]))
        self.freeze_unused([heads.itc, heads.itm, heads.mlm, heads.temperature])
        if not fused_image_norm:
            self.freeze_unused([backbone.image.out_norms])

    @classmethod
    def from_config(cls, cfg: CfgNode, answers: Sequence[str] | None = None) -> dict[str, Any]:
        """`answers`: the answer vocabulary (default: `answer_vocabulary_from_config(cfg)`)."""
        backbone = build_coarse_backbone(cfg, cls.__name__)
        answers = answer_vocabulary_from_config(cfg) if answers is None else list(answers)
        return {
            "backbone": backbone,
            "heads": build_coarse_heads(cfg, backbone, num_answers=len(answers)),
            "answers": answers,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pad_token_id": backbone.text.model.config.pad_token_id,
            "fused_image_norm": cfg.MODEL.FIBER.COARSE.FUSED_IMAGE_NORM,
        }

    def answer_logits(self, batched_inputs: Sequence[dict], share_images: bool = False) -> torch.Tensor:
        """Each image with its question, fused -> answer logits [B, A]. With `share_images` (inference, where an
        image always maps to the same tensor), records of one file and image_id run the image's lower part once."""
        missing = [i for i, x in enumerate(batched_inputs) if "image" not in x or "input_ids" not in x]
        if missing:
            raise ValueError(f"VQA inputs {missing} lack 'image' or 'input_ids' (use CoarseDatasetMapper, task 'vqa')")
        keys = [
            (x["file_name"], x.get("image_id")) if share_images and "file_name" in x else i
            for i, x in enumerate(batched_inputs)
        ]
        slots: dict[Any, int] = {}  # key -> its image's row in the lower pass
        unique = []
        for key, x in zip(keys, batched_inputs):
            if key not in slots:
                slots[key] = len(unique)
                unique.append(x)
        image_lower = self.backbone.encode_image_lower(self.preprocess_images(unique))
        if len(unique) < len(batched_inputs):
            image_lower = image_lower.select(torch.tensor([slots[key] for key in keys], device=self.device))
        input_ids, mask = self.pad_texts([x["input_ids"] for x in batched_inputs])
        image_tokens, text = self.fused_tokens(image_lower, self.backbone.encode_text_lower(input_ids, mask))
        return self.heads.vqa(self.heads.joint(image_tokens, text, mask))

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "vqa_targets" not in x]
        if missing:
            raise ValueError(f"VQA training inputs {missing} lack 'vqa_targets' (CoarseDatasetMapper, task 'vqa')")
        targets = torch.stack([x["vqa_targets"] for x in batched_inputs]).to(self.device)
        if targets.shape[1] != len(self.answers):
            raise ValueError(
                f"'vqa_targets' cover {targets.shape[1]} answers but the model has {len(self.answers)}: build the data "
                "loader with fiber_d2.data.vqa_vocabulary.answer_vocabulary_from_config(cfg)"
            )
        return {"loss_vqa": vqa_loss(self.answer_logits(batched_inputs), targets)}

    @torch.no_grad()
    def inference(self, batched_inputs: Sequence[dict]) -> list[dict[str, Any]]:
        """Per question: {"question_id", "answer": str, "scores": [A] probabilities}."""
        missing = [i for i, x in enumerate(batched_inputs) if "question_id" not in x]
        if missing:
            raise ValueError(f"VQA inputs {missing} have no 'question_id' (use CoarseDatasetMapper, task 'vqa')")
        scores = self.answer_logits(batched_inputs, share_images=True).float().sigmoid()
        best = scores.argmax(dim=1).tolist()
        return [
            {"question_id": x["question_id"], "answer": self.answers[index], "scores": scores_i}
            for x, index, scores_i in zip(batched_inputs, best, scores)
        ]
