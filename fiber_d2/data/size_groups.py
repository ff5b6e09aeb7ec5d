"""SizeGroups: training batches whose images share one padded size (DATALOADER.SIZE_GROUPING).

Detectron2 draws each image's shortest edge in the mapper (ResizeShortestEdge) and groups a batch only by orientation
(AspectRatioGroupedDataset), so a batch is padded to the largest height and the largest width of its images. Here the
sampler draws each image's shortest edge when it takes the image, from the same distribution (INPUT.MIN_SIZE_TRAIN
with INPUT.MIN_SIZE_TRAIN_SAMPLING), and a batch holds images whose resized height and width, each rounded up to
`divisor` (the backbone's size divisibility), are equal; the mapper then resizes to the drawn edge. Every image's size
is distributed as before, and a batch is padded at most to the next multiple of `divisor`.
"""
from __future__ import annotations

import random
from typing import Sequence

from detectron2.data import transforms as T


class SizeGroups:
    """The shortest edge drawn for an image and the padded-size group it falls in.

    sizes: (height, width) of each record, in pixels; short_edges: INPUT.MIN_SIZE_TRAIN; sampling: "choice" (one of
    `short_edges`) or "range" (an integer from short_edges[0] to short_edges[1]); max_size: INPUT.MAX_SIZE_TRAIN, the
    longest resized side; divisor: the padding multiple, in pixels.
    """

    def __init__(
        self, sizes: Sequence[tuple[int, int]], short_edges: Sequence[int], sampling: str, max_size: int, divisor: int
    ) -> None:
        if divisor < 1:
            raise ValueError(f"DATALOADER.SIZE_GROUPING must be a positive number of pixels, got {divisor}")
        if sampling not in ("choice", "range"):
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}")
        if sampling == "range" and len(short_edges) != 2:
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN must be (low, high) with 'range' sampling, got {short_edges!r}")
        if not short_edges or min(short_edges) < 1:
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN must hold positive sizes, got {short_edges!r}")
        self.sizes = [(int(h), int(w)) for h, w in sizes]
        self.short_edges = tuple(int(edge) for edge in short_edges)
        self.sampling = sampling
        self.max_size = int(max_size)
        self.divisor = int(divisor)
        # Groups are numbered row-major over (padded height, padded width) / divisor; `cells` bounds both.
        longest = max((max(self.resized(i, max(self.short_edges))) for i in range(len(self.sizes))), default=1)
        self.cells = -(-longest // self.divisor)
        self.num_groups = self.cells * self.cells

    @classmethod
    def for_records(cls, records: Sequence[dict], cfg_input, divisor: int) -> "SizeGroups":
        """From the records' `height`/`width` and the config's INPUT node; a ValueError names a record without them."""
        sizes = []
        for record in records:
            if "width" not in record or "height" not in record:
                raise ValueError(
                    f"record of {record.get('file_name', record.get('image_id', '?'))!r} has no width/height, which "
                    "DATALOADER.SIZE_GROUPING needs"
                )
            sizes.append((record["height"], record["width"]))
        return cls(
            sizes, cfg_input.MIN_SIZE_TRAIN, cfg_input.MIN_SIZE_TRAIN_SAMPLING, cfg_input.MAX_SIZE_TRAIN, divisor
        )

    def resized(self, index: int, short_edge: int) -> tuple[int, int]:
        """(height, width) of record `index` resized to `short_edge`, as ResizeShortestEdge computes it."""
        height, width = self.sizes[index]
        return T.ResizeShortestEdge.get_output_shape(height, width, short_edge, self.max_size)

    def draw(self, index: int, seed: int, position: int) -> tuple[int, int]:
        """(shortest edge, group) for record `index`, taken as the stream's `position`-th index: the same numbers for
        the same (seed, position), so a resumed stream draws as the uninterrupted one did."""
        rng = random.Random(seed * 1_000_003 + position)
        if self.sampling == "choice":
            edge = rng.choice(self.short_edges)
        else:
            edge = rng.randint(self.short_edges[0], self.short_edges[1])
        height, width = self.resized(index, edge)
        return edge, (-(-height // self.divisor) - 1) * self.cells + (-(-width // self.divisor) - 1)
