"""ResumableTrainLoader: Detectron2's training loader whose position can be saved in a checkpoint and restored.

Detectron2's loader (TrainingSampler -> mapper -> AspectRatioGroupedDataset) cannot say where it is: a resumed run
starts the data order again. Here the same stream of indices (TrainingSampler: seeded, infinite, split by process)
is batched, and grouped by aspect ratio (width > height or not, as AspectRatioGroupedDataset groups) or by padded
size (SizeGroups, which also draws each image's shortest edge), *before* mapping, by ResumableBatchSampler. Its state
is plain numbers: the seed, how many indices of this process's stream were drawn, and the items waiting in a group.
`state_dict()` gives the state after the last batch handed out (the sampler may run ahead when workers prefetch);
`load_state_dict` before iterating continues from there. With DATALOADER.NUM_WORKERS 0 the mapper's randomness comes
from the process's generators, which fiber_d2.engine.train_state saves too, so a resumed run sees exactly the batches
an uninterrupted one would.
"""
from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Iterator, Sequence

import torch
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from .size_groups import SizeGroups

logger = logging.getLogger(__name__)


class NextOnSkipDataset(torch.utils.data.Dataset):
    """`mapper(records[i])`, or `mapper(records[i], short_edge=e)` for an item (i, e) of a SizeGroups sampler; a record
    the mapper drops (None: DATASETS.ON_BAD_RECORD skip) is replaced by the next record that maps, so the batches stay
    deterministic and resumable. (Detectron2 0.6's MapDataset would draw a random replacement with `random.sample`
    from a set, which Python 3.11 refuses.)"""

    def __init__(self, records: Sequence[dict], mapper: Callable[[dict], Any]) -> None:
        self.records = records
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, options = (item[0], {"short_edge": item[1]}) if isinstance(item, tuple) else (item, {})
        for offset in range(len(self.records)):
            mapped = self.mapper(self.records[(index + offset) % len(self.records)], **options)
            if mapped is not None:
                return mapped
        raise RuntimeError(f"the mapper dropped all {len(self.records)} training records")


class ResumableBatchSampler:
    """Infinite batches of dataset indices for this process, with a state_dict (module docstring).

    size: dataset length; batch_size: per process; group_ids: a group per index (batches hold one group) or None;
    seed: the stream's seed, the same in every process; size_groups: instead of `group_ids`, draw each index's
    shortest edge and group by padded size (the batches then hold (index, shortest edge) items).
    """

    def __init__(
        self, size: int, batch_size: int, group_ids: Sequence[int] | None, seed: int,
        size_groups: SizeGroups | None = None,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.size_groups = size_groups
        self.group_ids = list(group_ids) if group_ids is not None else [0] * size
        self.num_groups = size_groups.num_groups if size_groups else max(self.group_ids, default=0) + 1
        self.start = {"seed": int(seed), "position": 0, "pending": [[] for _ in range(self.num_groups)]}
        self._states: collections.deque[dict] = collections.deque()  # states after the batches yielded, in order

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start
        self._states.clear()
        stream = iter(TrainingSampler(self.size, shuffle=True, seed=start["seed"]))
        position = start["position"]
        groups = [list(indices) for indices in start["pending"]]
        for index in itertools.islice(stream, position, None):
            if self.size_groups is None:
                item, group = index, groups[self.group_ids[index]]
            else:
                edge, number = self.size_groups.draw(index, start["seed"], position)
                item, group = (index, edge), groups[number]
            position += 1
            group.append(item)
            if len(group) == self.batch_size:
                batch = group.copy()
                group.clear()
                self._states.append(
                    {"seed": start["seed"], "position": position, "pending": [g.copy() for g in groups]}
                )
                yield batch

    def pop_state(self) -> dict:
        """The state after the oldest batch yielded and not yet popped (call once per batch handed out)."""
        return self._states.popleft()

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Continue from `state`; False (nothing changed) when it was saved for another dataset size, batch size or
        grouping."""
        pending = state.get("pending", [])
        same_data = state.get("size") == self.size and state.get("batch_size") == self.batch_size
        if not same_data or len(pending) != self.num_groups:
            return False
        sized = {isinstance(item, (list, tuple)) for group in pending for item in group}
        if sized - {self.size_groups is not None}:
            return False  # saved with another kind of grouping
        if self.size_groups is not None:  # (index, shortest edge) items
            pending = [[tuple(item) for item in group] for group in pending]
        self.start = {"seed": int(state["seed"]), "position": int(state["position"]), "pending": pending}
        return True


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped records, `total_batch_size / processes` each) whose position
    `state_dict()` / `load_state_dict()` save and restore (module docstring). Each batch holds records of one group:
    one aspect group (`aspect_ratio_grouping`), one of `group_ids` (a group per record, e.g. batch_clusters), or one
    padded size (`size_groups`, whose drawn shortest edge the mapper gets as `short_edge`)."""

    def __init__(
        self,
        dataset: list[dict],
        mapper: Callable[[dict], Any],
        total_batch_size: int,
        aspect_ratio_grouping: bool,
        num_workers: int,
        seed: int | None = None,
        group_ids: Sequence[int] | None = None,
        size_groups: SizeGroups | None = None,
    ) -> None:
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(f"the total batch size {total_batch_size} must be a positive multiple of the "
                             f"{world_size} processes")
        if sum((group_ids is not None, aspect_ratio_grouping, size_groups is not None)) > 1:
            raise ValueError("give at most one of group_ids, aspect_ratio_grouping and size_groups")
        if aspect_ratio_grouping:
            group_ids = [_aspect_group(record) for record in dataset]
        seed = comm.shared_random_seed() if seed is None else seed  # as TrainingSampler chooses its seed
        self.batch_sampler = ResumableBatchSampler(
            len(dataset), total_batch_size // world_size, group_ids, seed, size_groups
        )
        self.dataset = NextOnSkipDataset(DatasetFromList(dataset, copy=False), mapper)
        self.num_workers = num_workers
        self._state = self.batch_sampler.start
        self._started = False

    def __iter__(self) -> Iterator[list]:
        self._started = True
        start = self.batch_sampler.start
        # The generator only seeds the workers (Detectron2's worker_init_reset_seed), from the stream's seed and
        # position; without it, creating the loader would draw from the global torch generator.
        generator = torch.Generator().manual_seed(start["seed"] * 1_000_003 + start["position"])
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.batch_sampler,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_reset_seed,
            generator=generator,
        )
        for batch in loader:
            self._state = self.batch_sampler.pop_state()
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: seed, indices drawn, indices waiting per group."""
        sampler = self.batch_sampler
        return {**self._state, "size": sampler.size, "batch_size": sampler.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; must come before the first batch."""
        if self._started:
            raise RuntimeError("ResumableTrainLoader.load_state_dict must be called before iterating")
        if self.batch_sampler.load_state_dict(state):
            self._state = self.batch_sampler.start
            logger.info("Training data continues after %d drawn indices", self._state["position"])
        else:
            logger.warning(
                "The saved data position is for another training set or batch size (%s images, %s per batch; now "
                "%d, %d): the data order starts again", state.get("size"), state.get("batch_size"),
                self.batch_sampler.size, self.batch_sampler.batch_size,
            )


def _aspect_group(record: dict) -> int:
    """0 for a landscape image (width > height), 1 otherwise, as Detectron2's AspectRatioGroupedDataset."""
    if "width" not in record or "height" not in record:
        raise ValueError(
            f"record of {record.get('file_name', record.get('image_id', '?'))!r} has no width/height, which "
            "DATALOADER.ASPECT_RATIO_GROUPING needs"
        )
    return 0 if record["width"] > record["height"] else 1
