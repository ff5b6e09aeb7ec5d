"""FiberCoarseModel: FIBER's coarse stage on image-text pairs (registered in META_ARCH_REGISTRY).

Training (inputs from `CoarseDatasetMapper`, task "pretrain": `image` [3, S, S], `image_id`, `input_ids` [T],
`mlm_input_ids` [T], `mlm_labels` [T]) returns the enabled objectives (MODEL.FIBER.COARSE.OBJECTIVES):
  loss_itc  fusion off (the dual encoder): symmetric InfoNCE over the batch of all processes (+ the queue; with
            MODEL.FIBER.COARSE.ITC_SWAP_NEGATIVES, each image is also scored against its process's swapped captions,
            NegCLIP's hard negatives);
  loss_itm  fusion on: B positive pairs + B (image, hard negative text) + B (hard negative image, text), CE (and,
            with INPUT.COARSE.ITM_SWAP_WORDS or ITM_SWAP_ORDER, (image, its swapped caption) negatives); the hard
            negatives are drawn from the batch and, with MODEL.FIBER.COARSE.ITM_QUEUE_SIZE, earlier pairs
            (`PairQueue`);
  loss_mlm  fusion on, masked captions: CE of the masked tokens through the MLM head (on the fused text projection).
The fused passes read the image and text tokens as FIBER's fused path does (`CoarseModelBase.fused_tokens`), the
dual encoder as its image-only and text-only paths do.
The image and text lower parts (below the fused layers) run once per batch and feed every pass.
Inference (task "pretrain"/"retrieval": `captions_input_ids`, a list of [T_i]) returns per image
{"image_embedding": [D], "text_embeddings": [n, D]}: the L2-normalised ITC embeddings, as RetrievalEvaluator wants.

The backbone may be shared with a FiberGroundingDetector (the coarse-stage hook passes the detector's), so the same
weights are trained by both stages.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..backbone import FiberBackbone, ImageState, TextState
from ..backbone.text_encoder import pad_text_states
from .base import CoarseModelBase, build_coarse_heads, build_coarse_backbone
from .heads import CoarseHeads
from .losses import (
    FeatureQueue,
    gather_with_grad,
    itc_loss,
    itm_probability,
    mlm_loss,
    ranking_loss,
    sample_itm_negatives,
    sample_ranking_negatives,
)
from .pair_queue import PairQueue

OBJECTIVES = ("itc", "itm", "mlm")


@META_ARCH_REGISTRY.register()
class FiberCoarseModel(CoarseModelBase):
    """Fused backbone + coarse heads; ITC/ITM/MLM in training, ITC embeddings (retrieval) at inference."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberBackbone,
        heads: CoarseHeads,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pad_token_id: int,
        objectives: Sequence[str] = OBJECTIVES,
        queue_size: int = 0,
        itm_queue_size: int = 0,
        itm_rank_negatives: int = 0,
        itc_swap_negatives: bool = False,
        fused_image_norm: bool = False,
    ) -> None:
        super().__init__(backbone, heads, pixel_mean, pixel_std, pad_token_id, fused_image_norm=fused_image_norm)
        unknown = sorted(set(objectives) - set(OBJECTIVES))
        if unknown or not objectives:
            raise ValueError(f"MODEL.FIBER.COARSE.OBJECTIVES must be a non-empty subset of {OBJECTIVES}, got {objectives}")
        self.objectives = tuple(objectives)
        self.queue = FeatureQueue(queue_size, backbone.text.hidden_size)
        self.itm_queue = PairQueue(itm_queue_size)
        if itm_rank_negatives < 0:
            raise ValueError(f"MODEL.FIBER.COARSE.ITM_RANK_NEGATIVES must be >= 0, got {itm_rank_negatives}")
        self.itm_rank_negatives = itm_rank_negatives
        self.itc_swap_negatives = itc_swap_negatives
        self.itm_generator: torch.Generator | None = None  # draws the ITM negatives (None: torch's global RNG)
        if heads.vqa is not None:
            self.freeze_unused([heads.vqa])
        if "itm" not in self.objectives:  # MLM reads the fused text projection too
            fused = heads.fused
            self.freeze_unused([heads.itm, fused.image_transform, fused.image_pooler, fused.text_pooler])
            if "mlm" not in self.objectives:
                self.freeze_unused([fused.text_transform])
        if "mlm" not in self.objectives:
            self.freeze_unused([heads.mlm])
        if "itc" not in self.objectives:
            self.freeze_unused([heads.temperature])

    @classmethod
    def from_config(cls, cfg: CfgNode, backbone: nn.Module | None = None) -> dict[str, Any]:
        """`backbone`: share an existing FiberBackbone (or a FiberFPN's bottom-up one) instead of building one."""
        backbone = build_coarse_backbone(cfg, cls.__name__, backbone)
        coarse = cfg.MODEL.FIBER.COARSE
        return {
            "backbone": backbone,
            "heads": build_coarse_heads(cfg, backbone),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pad_token_id": backbone.text.model.config.pad_token_id,
            "objectives": coarse.OBJECTIVES,
            "queue_size": coarse.ITC_QUEUE_SIZE,
            "itm_queue_size": coarse.ITM_QUEUE_SIZE,
            "itm_rank_negatives": coarse.ITM_RANK_NEGATIVES,
            "itc_swap_negatives": coarse.ITC_SWAP_NEGATIVES,
            "fused_image_norm": coarse.FUSED_IMAGE_NORM,
        }

    def encode_unfused(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual encoder: ITC embeddings of images [B_i, D] and texts [B_t, D] (any two batch sizes)."""
        return self.image_embeddings(images), self.text_embeddings(input_ids, attention_mask)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Dual encoder, image side: normalised images [B, 3, S, S] -> ITC embeddings [B, D]."""
        features = self.backbone.finish_image_unfused(self.backbone.encode_image_lower(images))
        return self.heads.itc_image_embedding(self.unfused_image_tokens(features))

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Dual encoder, text side: input_ids / attention_mask [B, T] -> ITC embeddings [B, D]."""
        text = self.backbone.finish_text_unfused(self.backbone.encode_text_lower(input_ids, attention_mask))
        return self.heads.itc_text_embedding(text, attention_mask)

    def match_logits(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM with fusion on: logits [P, 2] (no match, match) of the pairs (images[image_index[p]],
        texts[text_index[p]]) for images [I, 3, S, S] and texts [N, T]. Each image and each text runs its lower part
        (below the fused layers) once, however many pairs it is in. Without indices, image i pairs with text i."""
        if image_index is None or text_index is None:
            if len(images) != len(input_ids) or (image_index is None) != (text_index is None):
                raise ValueError(
                    f"match_logits: {len(images)} images and {len(input_ids)} texts need image_index and text_index"
                )
            image_index = text_index = torch.arange(len(images), device=self.device)
        return self._pair_logits(
            self.backbone.encode_image_lower(images), self.backbone.encode_text_lower(input_ids, attention_mask),
            image_index, text_index,
        )

    def match_probability(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM with fusion on: P(match) [P] of the pairs `match_logits` takes."""
        return itm_probability(self.match_logits(images, input_ids, attention_mask, image_index, text_index))

    def _pair_logits(
        self, image_lower: ImageState, text_lower: TextState, image_index: torch.Tensor, text_index: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits [P, 2] of the pairs (image image_index[p], text text_index[p]) from their lower parts."""
        image_tokens, text = self.fused_tokens(
            image_lower.select(image_index), text_lower.select(text_index)
        )
        return self.heads.itm(self.heads.joint(image_tokens, text, text_lower.attention_mask[text_index]))

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "input_ids" not in x or "image" not in x]
        if missing:
            raise ValueError(
                f"coarse-stage inputs {missing} lack 'image' or 'input_ids' (use CoarseDatasetMapper, task 'pretrain')"
            )
        images = self.preprocess_images(batched_inputs)
        input_ids, mask = self.pad_texts([x["input_ids"] for x in batched_inputs])
        image_lower = self.backbone.encode_image_lower(images)
        text_lower = self.backbone.encode_text_lower(input_ids, mask)
        losses: dict[str, torch.Tensor] = {}

        if "itc" in self.objectives or "itm" in self.objectives:
            features = self.backbone.finish_image_unfused(image_lower)
            text = self.backbone.finish_text_unfused(text_lower)
            image_embedding = self.heads.itc_image_embedding(self.unfused_image_tokens(features))
            text_embedding = self.heads.itc_text_embedding(text, mask)
            swapped = [i for i, x in enumerate(batched_inputs) if x.get("swap_input_ids") is not None]
            swap_lower = None
            if swapped and ("itm" in self.objectives or self.itc_swap_negatives):  # negatives for ITM (and ITC)
                swap_ids, swap_mask = self.pad_texts([batched_inputs[i]["swap_input_ids"] for i in swapped])
                swap_lower = self.backbone.encode_text_lower(swap_ids, swap_mask)
            if "itc" in self.objectives:
                queue = self.queue if self.queue.size else None
                swap_embedding = None
                if self.itc_swap_negatives and swap_lower is not None:
                    swap_text = self.backbone.finish_text_unfused(swap_lower)
                    swap_embedding = self.heads.itc_text_embedding(swap_text, swap_lower.attention_mask)
                losses["loss_itc"], _, _ = itc_loss(
                    image_embedding, text_embedding, self.heads.clamped_temperature(), queue, swap_embedding
                )
                self.queue.push(gather_with_grad(image_embedding.detach()), gather_with_grad(text_embedding.detach()))
            if "itm" in self.objectives:
                losses.update(
                    self._itm_losses(
                        batched_inputs, image_lower, text_lower, image_embedding, text_embedding, swapped, swap_lower
                    )
                )

        if "mlm" in self.objectives:
            missing = [i for i, x in enumerate(batched_inputs) if "mlm_input_ids" not in x]
            if missing:
                raise ValueError(f"coarse-stage inputs {missing} lack 'mlm_input_ids' / 'mlm_labels' (MLM is enabled)")
            masked_ids, _ = self.pad_texts([x["mlm_input_ids"] for x in batched_inputs])
            labels, _ = self.pad_texts([x["mlm_labels"] for x in batched_inputs], fill=-100)
            _, text = self.fused_tokens(image_lower, self.backbone.encode_text_lower(masked_ids, mask))
            losses["loss_mlm"] = mlm_loss(self.heads.mlm_logits(text), labels)
        return losses

    def _itm_losses(
        self,
        batched_inputs: Sequence[dict],
        image_lower: ImageState,
        text_lower: TextState,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor,
        swapped: Sequence[int] = (),
        swap_lower: TextState | None = None,
    ) -> dict[str, torch.Tensor]:
        """loss_itm: CE over B positives, B (image, negative text) and B (negative image, text) pairs, fused; plus,
        for the inputs `swapped` (those with `swap_input_ids`, INPUT.COARSE.ITM_SWAP_WORDS / ITM_SWAP_ORDER;
        `swap_lower` their captions' lower text state), the negatives (image, its swapped caption). With
        MODEL.FIBER.COARSE.ITM_RANK_NEGATIVES K, loss_itm_rank: each text picks its image among 1 + K
        (`ranking_loss`), the first of its K negatives being its ITM negative image. The negatives are drawn
        from the batch and the ITM queue, whose drawn pairs run their lower parts again (without gradient); the batch
        then joins the queue."""
        batch = len(batched_inputs)
        keys = [x.get("image_id") for x in batched_inputs]
        keys = [object() if key is None else key for key in keys]  # no image id: the pair's image is its own
        ids: dict = {}
        column_ids = torch.tensor(
            [ids.setdefault(key, len(ids)) for key in keys + self.itm_queue.keys()], device=self.device
        )
        images, texts = image_embedding.detach(), text_embedding.detach()
        candidate_images, candidate_texts = images, texts
        if len(self.itm_queue):
            queued_images, queued_texts = self.itm_queue.embeddings()
            candidate_images = torch.cat([images, queued_images.to(images)])
            candidate_texts = torch.cat([texts, queued_texts.to(texts)])
        temperature = self.heads.clamped_temperature().detach()
        t2i = texts @ candidate_images.T / temperature
        negative_texts, negative_images = sample_itm_negatives(
            images @ candidate_texts.T / temperature, t2i, column_ids[:batch], self.itm_generator, column_ids
        )
        ranked = self.itm_rank_negatives
        if ranked:
            rank_images = sample_ranking_negatives(t2i, column_ids[:batch], column_ids, ranked, self.itm_generator)
            image_lower, rank_images = self._add_queued(image_lower, rank_images.flatten(), batch, images=True)
            rank_images = rank_images.view(batch, ranked)
            negative_images = rank_images[:, 0]
        else:
            image_lower, negative_images = self._add_queued(image_lower, negative_images, batch, images=True)
        text_lower, negative_texts = self._add_queued(text_lower, negative_texts, batch, images=False)
        everyone = torch.arange(batch, device=self.device)
        image_index = torch.cat([everyone, everyone, negative_images])
        text_index = torch.cat([everyone, negative_texts, everyone])
        if swap_lower is not None:  # the swapped captions' lower part, appended to the texts' (rows N, N + 1, ...)
            rows = len(text_lower.hidden)
            text_lower = pad_text_states([text_lower, swap_lower])
            image_index = torch.cat([image_index, torch.tensor(swapped, device=self.device)])
            text_index = torch.cat([text_index, torch.arange(rows, rows + len(swapped), device=self.device)])
        itm_pairs = len(image_index)
        if ranked > 1:  # the ranking's other negatives (B (K - 1) more pairs)
            image_index = torch.cat([image_index, rank_images[:, 1:].flatten()])
            text_index = torch.cat([text_index, everyone.repeat_interleave(ranked - 1)])
        logits = self._pair_logits(image_lower, text_lower, image_index, text_index)
        labels = torch.cat([torch.ones(batch), torch.zeros(itm_pairs - batch)]).long().to(self.device)
        self.itm_queue.push(
            [x["image"] for x in batched_inputs], [x["input_ids"] for x in batched_inputs], keys, images, texts
        )
        losses = {"loss_itm": F.cross_entropy(logits[:itm_pairs].float(), labels)}
        if ranked:  # per text: its image (ITM positive), its ITM negative image, then the rest
            ranks = [logits[:batch, None], logits[2 * batch : 3 * batch, None]]
            ranks.append(logits[itm_pairs:].view(batch, ranked - 1, 2))
            losses["loss_itm_rank"] = ranking_loss(torch.cat(ranks, dim=1))
        return losses

    def _add_queued(
        self, lower: ImageState | TextState, columns: torch.Tensor, batch: int, images: bool
    ) -> tuple[ImageState | TextState, torch.Tensor]:
        """The batch's lower states [B, ...] extended by those of the queued pairs that `columns` [B] (candidate
        columns: < B the batch, B + q queue entry q) drew, and the columns as rows of the extended state."""
        drawn = sorted({column - batch for column in columns.tolist() if column >= batch})
        if not drawn:
            return lower, columns
        with torch.no_grad():
            if images:
                pixels = self.preprocess_images([{"image": image} for image in self.itm_queue.images(drawn)])
                lower = ImageState.cat([lower, self.backbone.encode_image_lower(pixels)])
            else:
                input_ids, mask = self.pad_texts(self.itm_queue.input_ids(drawn))
                lower = pad_text_states([lower, self.backbone.encode_text_lower(input_ids, mask)])
        row_of = torch.zeros(max(drawn) + 1, dtype=torch.long, device=self.device)
        row_of[torch.tensor(drawn, device=self.device)] = torch.arange(batch, batch + len(drawn), device=self.device)
        queued = columns >= batch
        return lower, torch.where(queued, row_of[(columns - batch).clamp(min=0)], columns)

    @torch.no_grad()
    def inference(
        self, batched_inputs: Sequence[dict], image_embedding: torch.Tensor | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: {"image_embedding": [D], "text_embeddings": [n, D]} of its `captions_input_ids`.
        `image_embedding` [B, D]: the images' embeddings when already computed (test-time augmentation)."""
        missing = [i for i, x in enumerate(batched_inputs) if not x.get("captions_input_ids")]
        if missing:
            raise ValueError(
                f"retrieval inputs {missing} have no 'captions_input_ids' (CoarseDatasetMapper, is_train=False)"
            )
        if image_embedding is None:
            image_embedding = self.image_embeddings(self.preprocess_images(batched_inputs))
        captions = [ids for x in batched_inputs for ids in x["captions_input_ids"]]
        text_embedding = self.text_embeddings(*self.pad_texts(captions))
        results, start = [], 0
        for i, x in enumerate(batched_inputs):
            count = len(x["captions_input_ids"])
            results.append({"image_embedding": image_embedding[i], "text_embeddings": text_embedding[start : start + count]})
            start += count
        return results
