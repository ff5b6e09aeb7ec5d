"""The coarse stage's objectives (official coarse_grained/fiber/modules/objectives.py; docs/FIBER_DETAILS.md):
ITC with an optional feature queue, ITM hard negatives, MLM."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate [B, D] from every process (rank order), keeping the gradient of this process's rows."""
    if comm.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class FeatureQueue(nn.Module):
    """A FIFO of detached, gathered ITC embeddings (ALBEF/FIBER without the momentum encoder); size 0 disables it."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # valid rows (<= size)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid (image, text) rows, [Q, D] each."""
        count = int(self.count)
        return self.image[:count], self.text[:count]

    @torch.no_grad()
    def push(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Append [B, D] rows (the oldest are overwritten when full)."""
        if self.size == 0:
            return
        image, text = image[-self.size :], text[-self.size :]
        rows = (int(self.pointer) + torch.arange(len(image), device=image.device)) % self.size
        self.image[rows] = image.to(self.image.dtype)
        self.text[rows] = text.to(self.text.dtype)
        self.pointer.fill_((int(self.pointer) + len(image)) % self.size)
        self.count.fill_(min(self.size, int(self.count) + len(image)))


def itc_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    temperature: torch.Tensor,
    queue: FeatureQueue | None = None,
    negative_text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the batch gathered from all processes, plus the queue's rows as extra negatives.

    image, text: L2-normalised [B, D] of this process (row i of each is a positive pair). negative_text: [S, D] more
    text columns for this process's images only (NegCLIP: captions with a word swapped), with gradient. Returns
    (loss, i2t similarities [B, B_all + Q + S], t2i similarities [B, B_all + Q]) of this process's rows (scaled by
    1/temperature). loss = (CE(i2t, targets) + CE(t2i, targets)) / 2, the target of local row i being column
    rank * B + i.
    """
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    if queue is not None:
        queued_image, queued_text = queue.contents()
        all_image = torch.cat([all_image, queued_image.to(image.dtype)])
        all_text = torch.cat([all_text, queued_text.to(text.dtype)])
    if negative_text is not None:
        all_text = torch.cat([all_text, negative_text])
    i2t = image @ all_text.T / temperature
    t2i = text @ all_image.T / temperature
    targets = torch.arange(len(image), device=image.device) + comm.get_rank() * len(image)
    loss = (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets)) / 2
    return loss, i2t, t2i


def sample_itm_negatives(
    i2t: torch.Tensor,
    t2i: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    column_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives for ITM, drawn with probability softmax(similarity) over the candidates.

    i2t: [B, C] similarities of this batch's images to C candidate texts; t2i: [B, C] of its texts to C candidate
    images (the candidates: the local batch, then the ITM queue's pairs). image_ids [B]: the batch's image ids;
    column_ids [C]: the candidates' (default: image_ids, the batch alone). A pair of the same image (several captions
    of one image) is never a negative. Returns (negative text column per image [B], negative image column per text
    [B]). Raises when some sample has no candidate of another image.
    """
    column_ids = image_ids if column_ids is None else column_ids
    different = image_ids[:, None] != column_ids[None, :]  # [B, C]
    if not different.any(dim=1).all():
        raise ValueError(
            "ITM needs at least two different images among each process's batch and ITM queue (hard negatives come "
            "from them); increase the batch size or MODEL.FIBER.COARSE.ITM_QUEUE_SIZE"
        )
    with torch.no_grad():
        weights_i2t = F.softmax(i2t.float(), dim=1) * different
        weights_t2i = F.softmax(t2i.float(), dim=1) * different
        # A row whose softmax underflowed to 0 on every allowed column falls back to uniform over those columns.
        weights_i2t = torch.where(weights_i2t.sum(1, keepdim=True) > 0, weights_i2t, different.float())
        weights_t2i = torch.where(weights_t2i.sum(1, keepdim=True) > 0, weights_t2i, different.float())
        negative_texts = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)
        negative_images = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)
    return negative_texts, negative_images


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (-100: not predicted) -> mean CE over predicted tokens (0 if there are none)."""
    if not (labels != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def itm_probability(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits [..., 2] -> P(match) [...], the softmax's second column."""
    return logits.float().softmax(dim=-1)[..., 1]


def sample_ranking_negatives(
    t2i: torch.Tensor,
    image_ids: torch.Tensor,
    column_ids: torch.Tensor,
    count: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`count` distinct hard negative images per text for the ITM ranking loss, drawn without replacement with
    probability softmax(similarity) over the candidates of other images. t2i [B, C] (texts against C candidate
    images), image_ids [B] and column_ids [C] as in `sample_itm_negatives`. Returns candidate columns [B, count]."""
    different = image_ids[:, None] != column_ids[None, :]
    short = (different.sum(dim=1) < count).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"MODEL.FIBER.COARSE.ITM_RANK_NEGATIVES {count}: samples {short} have fewer candidates of other images in "
            "the batch and ITM queue; increase the batch size or MODEL.FIBER.COARSE.ITM_QUEUE_SIZE"
        )
    with torch.no_grad():
        weights = F.softmax(t2i.float(), dim=1) * different
        # Rows with fewer than `count` non-zero weights (softmax underflow) take the rest uniformly.
        weights = torch.where(weights > 0, weights, different.float() * torch.finfo(torch.float32).tiny)
        return torch.multinomial(weights, count, replacement=False, generator=generator)


def ranking_loss(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits [B, 1 + K, 2] of each text with its image (column 0) and K negative images -> the mean CE of
    picking column 0 by the match log-odds (logit 1 - logit 0), softmax over the 1 + K images."""
    scores = (logits[..., 1] - logits[..., 0]).float()
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
