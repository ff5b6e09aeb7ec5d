"""Reuse of the text-independent work when one image runs many prompt chunks (a long vocabulary, e.g. LVIS).

The fused backbone splits into a lower part (image blocks and text layers below the fused ones, each independent of
the other modality) and the fused upper part. For N chunks and one image, the image lower part runs once, the text
lower part once per distinct prompt (kept in a `TextStateCache` across images), and only the upper part, the FPN and
the head run per chunk, on batches of chunks whose text states are padded together (`pad_text_states`). Inputs of a
batch with the same image (several referring expressions or captions of one image) share its lower part as well:
`group_identical_images` finds them, and `own_padding` gives the image as a batch of one would have it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import torch
from detectron2.structures import ImageList

from ..backbone.text_encoder import TextState


class TextStateCache:
    """Least-recently-used cache of text states, at most `max_entries` of them (0: nothing is kept).

    The owner must `clear()` it whenever the weights that produced the states may have changed.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"the text state cache size must be >= 0 (0: no cache), got {max_entries}")
        self.max_entries = max_entries
        self._states: OrderedDict[Hashable, TextState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    def get(self, key: Hashable, compute: Callable[[], TextState]) -> TextState:
        """The state cached under `key`, or `compute()` (then cached, evicting the least recently used if full)."""
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        state = compute()
        if self.max_entries:
            self._states[key] = state
            if len(self._states) > self.max_entries:
                self._states.popitem(last=False)
        return state


def group_identical_images(images: ImageList) -> list[list[int]]:
    """Batch indices grouped by image: equal size and equal pixels (first-seen order, each group ascending)."""
    groups: list[list[int]] = []
    for i, (height, width) in enumerate(images.image_sizes):
        pixels = images.tensor[i, :, :height, :width]
        for group in groups:
            first = group[0]
            if images.image_sizes[first] == (height, width) and torch.equal(
                images.tensor[first, :, :height, :width], pixels
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def own_padding(images: ImageList, index: int, size_divisibility: int) -> torch.Tensor:
    """Image `index` of the batch [1, 3, H, W], padded only to its own size rounded up to `size_divisibility` (what
    `ImageList.from_tensors` gives a batch of that image alone), not to the batch's largest image."""
    height, width = images.image_sizes[index]
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    return images.tensor[index : index + 1, :, :height, :width]
