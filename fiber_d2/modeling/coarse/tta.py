"""Test-time augmentation for VQA and retrieval, as Detectron2's GeneralizedRCNNWithTTA is for its detectors
(TEST.AUG).

`FiberVQAWithTTA` answers each question from several views of its image: the square test image at each side in
TEST.AUG.MIN_SIZES (for a square image the shorter side is the side) and, with TEST.AUG.FLIP, each of them flipped
left to right (the words "left" and "right" of the question swapped, as in training). The answer is the top class of
the views' sigmoid probabilities, averaged. `FiberRetrievalWithTTA` gives each image the mean of its views' ITC
embeddings (each size, no flips), normalised; the captions' embeddings and the ITM re-ranking are the model's own.
`build_tta_model` gives the wrapper of a model (DDP-wrapped or not) or says that the model has no TTA.
`Trainer.test_with_TTA` and `train_net.py` run it when TEST.AUG.ENABLED is set.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from ...config import ConfigError
from ...data.coarse_mapper import CoarseDatasetMapper
from ...data.grounding_mapper import swap_left_right
from ...data.positive_map import encode_prompt
from .model import FiberCoarseModel
from .vqa_model import FiberVQAModel


def image_mappers(cfg: CfgNode, sizes: Sequence[int]) -> list[CoarseDatasetMapper]:
    """One inference mapper per image side in `sizes` (TEST.AUG.MIN_SIZES), each giving a record's `image`
    [3, S, S]."""
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"TEST.AUG.MIN_SIZES must be positive image sides for coarse-model TTA, got {tuple(sizes)}")
    # the "caption" task at inference maps an image alone, as the "vqa" and "retrieval" tasks map theirs
    args = CoarseDatasetMapper.from_config(cfg, is_train=False, task="caption")
    return [CoarseDatasetMapper(**dict(args, image_size=size)) for size in sizes]


class CoarseViewsMapper:
    """A mapped VQA input (it keeps `file_name`, `height`, `width`, `question_id`, `question`) -> its views: one
    inference input per (size, flip), each with `image` [3, S, S] and the question's `input_ids` [T]. The images of
    the last file are kept, since the questions of one image come one after the other."""

    def __init__(self, cfg: CfgNode, sizes: Sequence[int], flip: bool) -> None:
        self.image_mappers = image_mappers(cfg, sizes)
        self.tokenizer = self.image_mappers[0].tokenizer
        self.max_text_len = self.image_mappers[0].max_text_len
        self.flip = flip
        self._images: tuple[Any, list[torch.Tensor]] = (None, [])  # (file key, image per size) of the last file

    def __call__(self, record: dict) -> list[dict]:
        base = {key: record[key] for key in ("file_name", "height", "width", "image_id", "question_id", "question")
                if key in record}
        key = (base["file_name"], base.get("image_id"))
        if self._images[0] != key:
            self._images = (key, [mapper(base)["image"] for mapper in self.image_mappers])
        images = self._images[1]
        input_ids = encode_prompt(self.tokenizer, base["question"], self.max_text_len)[0]
        views = [dict(base, image=image, input_ids=input_ids) for image in images]
        if self.flip:
            question = swap_left_right(base["question"], [])[0]
            input_ids = encode_prompt(self.tokenizer, question, self.max_text_len)[0]
            views += [dict(base, question=question, image=image.flip(-1), input_ids=input_ids) for image in images]
        return views


class FiberVQAWithTTA(nn.Module):
    """A FiberVQAModel answering from the average of its views' answer probabilities (inference only)."""

    def __init__(self, cfg: CfgNode, model: FiberVQAModel, views_mapper: CoarseViewsMapper | None = None) -> None:
        super().__init__()
        if not isinstance(model, FiberVQAModel):
            raise TypeError(f"FiberVQAWithTTA wraps a FiberVQAModel, got {type(model).__name__}")
        self.model = model
        self.views = views_mapper or CoarseViewsMapper(cfg, cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP)

    @torch.no_grad()
    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, Any]]:
        """Per question: {"question_id", "answer": str, "scores": [A] probabilities averaged over the views}."""
        if self.model.training:
            raise RuntimeError("FiberVQAWithTTA is for inference: put the model in eval mode")
        views = [self.views(x) for x in batched_inputs]
        scores = torch.stack([
            self.model.answer_logits([v[k] for v in views], share_images=True).float().sigmoid()
            for k in range(len(views[0]))
        ]).mean(dim=0)
        best = scores.argmax(dim=1).tolist()
        return [
            {"question_id": x["question_id"], "answer": self.model.answers[index], "scores": scores_i}
            for x, index, scores_i in zip(batched_inputs, best, scores)
        ]


class FiberRetrievalWithTTA(nn.Module):
    """A FiberCoarseModel whose image embeddings average its views' (inference only; retrieval inputs)."""

    def __init__(self, cfg: CfgNode, model: FiberCoarseModel) -> None:
        super().__init__()
        if not isinstance(model, FiberCoarseModel):
            raise TypeError(f"FiberRetrievalWithTTA wraps a FiberCoarseModel, got {type(model).__name__}")
        if cfg.TEST.AUG.FLIP:
            raise ConfigError("TEST.AUG.FLIP: retrieval TTA has no flips (a mirrored image no longer fits a caption's "
                              "left and right)")
        self.model = model
        self.image_mappers = image_mappers(cfg, cfg.TEST.AUG.MIN_SIZES)

    @torch.no_grad()
    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, torch.Tensor]]:
        """Per image: {"image_embedding": [D], the normalised mean of its views' embeddings, "text_embeddings":
        [n, D] of its `captions_input_ids`}."""
        if self.model.training:
            raise RuntimeError("FiberRetrievalWithTTA is for inference: put the model in eval mode")
        records = [{key: x[key] for key in ("file_name", "height", "width", "image_id") if key in x}
                   for x in batched_inputs]
        views = [
            self.model.image_embeddings(self.model.preprocess_images([mapper(r) for r in records]))
            for mapper in self.image_mappers
        ]
        return self.model.inference(batched_inputs, F.normalize(torch.stack(views).mean(dim=0), dim=-1))


def build_tta_model(cfg: CfgNode, model: nn.Module) -> nn.Module:
    """The TEST.AUG wrapper of `model`; a ConfigError for a model that has none."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(inner, FiberVQAModel):
        return FiberVQAWithTTA(cfg, inner)
    if isinstance(inner, FiberCoarseModel):
        return FiberRetrievalWithTTA(cfg, inner)
    raise ConfigError(
        "TEST.AUG.ENABLED: test-time augmentation is implemented for FiberVQAModel and FiberCoarseModel (retrieval), "
        f"not {type(inner).__name__}"
    )
