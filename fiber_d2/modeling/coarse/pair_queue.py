"""PairQueue: earlier training pairs kept as raw inputs, so that ITM can draw its hard negatives from more than the
batch (MODEL.FIBER.COARSE.ITM_QUEUE_SIZE). Official FIBER's queue stores, next to the detached ITC embeddings, the
raw images and token ids of its entries, and draws ITM negatives from batch + queue by ITC similarity
(coarse_grained/fiber/modules/objectives.py); the drawn entries are encoded again by the current model.

The queue is local to its process (ITM draws its negatives from the local batch too) and is not saved in
checkpoints: it holds inputs, not weights, and refills within size / batch iterations after a resume.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch


@dataclass(frozen=True)
class QueuedPair:
    """One training pair: the image as the mapper gave it ([3, S, S], uint8), its caption's token ids [T], the
    image's key (pairs of one image are never each other's negatives) and their ITC embeddings [D] when queued."""

    image: torch.Tensor
    input_ids: torch.Tensor
    key: Hashable
    image_embedding: torch.Tensor
    text_embedding: torch.Tensor


class PairQueue:
    """A FIFO of the last `size` QueuedPairs (size 0: always empty)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"MODEL.FIBER.COARSE.ITM_QUEUE_SIZE must be >= 0, got {size}")
        self.size = size
        self.pairs: deque[QueuedPair] = deque(maxlen=max(size, 1))

    def __len__(self) -> int:
        return len(self.pairs) if self.size else 0

    @torch.no_grad()
    def push(
        self,
        images: Sequence[torch.Tensor],
        input_ids: Sequence[torch.Tensor],
        keys: Sequence[Hashable],
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor,
    ) -> None:
        """Append a batch: B images and token ids (kept on the CPU), B keys and ITC embeddings [B, D] (detached)."""
        if self.size == 0:
            return
        image_embedding, text_embedding = image_embedding.detach(), text_embedding.detach()
        for i, key in enumerate(keys):
            self.pairs.append(
                QueuedPair(images[i].cpu(), input_ids[i].cpu(), key, image_embedding[i], text_embedding[i])
            )

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ITC embeddings of the queued images and texts, [Q, D] each (oldest first); Q must be > 0."""
        return (
            torch.stack([pair.image_embedding for pair in self.pairs]),
            torch.stack([pair.text_embedding for pair in self.pairs]),
        )

    def keys(self) -> list[Hashable]:
        """The queued pairs' image keys (oldest first)."""
        return [pair.key for pair in self.pairs] if self.size else []

    def images(self, index: Sequence[int]) -> list[torch.Tensor]:
        """The raw images of entries `index` (0: the oldest)."""
        return [self.pairs[i].image for i in index]

    def input_ids(self, index: Sequence[int]) -> list[torch.Tensor]:
        """The token ids of entries `index` (0: the oldest)."""
        return [self.pairs[i].input_ids for i in index]
