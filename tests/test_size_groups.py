"""DATALOADER.SIZE_GROUPING: the sampler draws each image's shortest edge as ResizeShortestEdge would, batches hold
images of one padded size, the mapper resizes to the drawn edge, and a resumed loader continues the same batches."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T

from fiber_d2.config import add_fiber_config
from fiber_d2.data.resumable_loader import ResumableTrainLoader
from fiber_d2.data.size_groups import SizeGroups

# (height, width): landscape, portrait and square images of several aspect ratios
SIZES = [(300, 400), (400, 300), (256, 512), (512, 256), (320, 320), (260, 500), (450, 330), (290, 410)] * 5


def records():
    return [{"image_id": i, "height": h, "width": w} for i, (h, w) in enumerate(SIZES)]


def padded(shape, divisor=32):
    return tuple(math.ceil(side / divisor) * divisor for side in shape)


def test_resized_shape_is_resize_shortest_edges_and_groups_are_padded_shapes():
    groups = SizeGroups(SIZES, (224, 256, 288), "choice", 384, 32)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SIZES[:8]):
        for edge in (224, 256, 288):
            transform = T.ResizeShortestEdge(edge, 384).get_transform(rng.integers(0, 255, (height, width, 3)))
            assert groups.resized(index, edge) == (transform.new_h, transform.new_w)
    seen = collections.defaultdict(set)  # group -> padded shapes
    for position in range(400):
        index = position % len(SIZES)
        edge, group = groups.draw(index, seed=3, position=position)
        assert edge in (224, 256, 288) and 0 <= group < groups.num_groups
        assert groups.draw(index, seed=3, position=position) == (edge, group)  # the same numbers again
        seen[group].add(padded(groups.resized(index, edge)))
    assert all(len(shapes) == 1 for shapes in seen.values())
    assert len({shape for shapes in seen.values() for shape in shapes}) == len(seen)  # one group per padded shape
    edges = collections.Counter(groups.draw(0, seed=1, position=p)[0] for p in range(3000))
    assert set(edges) == {224, 256, 288} and min(edges.values()) > 900  # uniform, as "choice" samples


def test_range_sampling_and_bad_settings():
    groups = SizeGroups(SIZES, (200, 210), "range", 1000, 16)
    edges = {groups.draw(1, seed=0, position=p)[0] for p in range(500)}
    assert edges == set(range(200, 211))
    with pytest.raises(ValueError, match="SIZE_GROUPING must be a positive"):
        SizeGroups(SIZES, (224,), "choice", 384, 0)
    with pytest.raises(ValueError, match="MIN_SIZE_TRAIN_SAMPLING"):
        SizeGroups(SIZES, (224,), "random", 384, 32)
    with pytest.raises(ValueError, match=r"\(low, high\)"):
        SizeGroups(SIZES, (224, 256, 288), "range", 384, 32)
    cfg = get_cfg()
    add_fiber_config(cfg)
    with pytest.raises(ValueError, match="'x.png' has no width/height, which DATALOADER.SIZE_GROUPING needs"):
        SizeGroups.for_records([{"file_name": "x.png"}], cfg.INPUT, 32)


def sized_mapper(record, short_edge=None):
    """The padded shape the record gets at `short_edge` (as the grounding mapper resizes), and its id."""
    shape = T.ResizeShortestEdge.get_output_shape(record["height"], record["width"], short_edge, 384)
    return record["image_id"], short_edge, padded(shape)


def test_batches_share_one_padded_size_and_resume_where_they_stopped(tmp_path):
    def loader():
        groups = SizeGroups.for_records(records(), cfg.INPUT, 32)
        return ResumableTrainLoader(records(), sized_mapper, 4, False, num_workers=0, seed=11, size_groups=groups)

    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (224, 256, 288), 384
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    first = loader()
    batches = iter(first)
    head = [next(batches) for _ in range(10)]
    path = tmp_path / "state.pth"
    torch.save(first.state_dict(), path)
    expected = [next(batches) for _ in range(10)]
    assert all(len({shape for _, _, shape in batch}) == 1 and len(batch) == 4 for batch in head + expected)
    state = torch.load(path, weights_only=True)
    assert any(state["pending"])  # images were waiting in a group at the checkpoint
    resumed = loader()
    resumed.load_state_dict(state)
    again = iter(resumed)
    assert [next(again) for _ in range(10)] == expected
    # a position saved with aspect-ratio grouping is not one of these
    other = ResumableTrainLoader(records(), lambda r: r["image_id"], 4, True, num_workers=0, seed=11)
    iterator = iter(other)
    [next(iterator) for _ in range(3)]
    fresh = loader()
    saved = {**other.state_dict(), "pending": [[1]] * fresh.batch_sampler.num_groups}
    assert not fresh.batch_sampler.load_state_dict(saved)
    with pytest.raises(ValueError, match="at most one of"):
        groups = SizeGroups(SIZES, (224,), "choice", 384, 32)
        ResumableTrainLoader(records(), sized_mapper, 4, True, 0, seed=1, size_groups=groups)


def test_less_padding_than_orientation_groups_with_the_same_sizes():
    """Over the same images and the same distribution of sizes, batches of one padded size hold fewer padded pixels
    than Detectron2's orientation groups (each image's edge drawn in the mapper)."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (224, 256, 288), 384
    rng = np.random.default_rng(5)

    def drawn_mapper(record):
        return sized_mapper(record, int(rng.choice((224, 256, 288))))

    def pixels(batches):
        real = sum(
            math.prod(T.ResizeShortestEdge.get_output_shape(*SIZES[i], edge, 384)) for b in batches for i, edge, _ in b
        )
        pad = sum(len(b) * max(s[0] for *_, s in b) * max(s[1] for *_, s in b) for b in batches)
        return pad / real

    grouped = ResumableTrainLoader(records(), sized_mapper, 4, False, 0, seed=2,
                                   size_groups=SizeGroups.for_records(records(), cfg.INPUT, 32))
    oriented = ResumableTrainLoader(records(), drawn_mapper, 4, True, 0, seed=2)
    take = lambda loader: [b for b, _ in zip(loader, range(150))]  # noqa: E731
    by_size, by_orientation = pixels(take(grouped)), pixels(take(oriented))
    assert by_size < 1.07 and by_orientation > 1.15
