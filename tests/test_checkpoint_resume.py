"""Resuming: the training loader's position and the random generators' states round-trip through a weights_only
checkpoint and continue the same sequence; checkpoint saves cannot be half done; --resume falls back to the newest
readable checkpoint."""
import logging
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from fiber_d2.checkpoint.checkpointer import FiberCheckpointer
from fiber_d2.checkpoint.io import UnreadableCheckpointError
from fiber_d2.data.resumable_loader import ResumableTrainLoader
from fiber_d2.engine.train_state import preserved_rng_state, rng_state, set_rng_state


def records(count=13):
    """Images of alternating orientation (two aspect-ratio groups)."""
    return [{"image_id": i, "width": 40 if i % 3 else 20, "height": 30} for i in range(count)]


def random_mapper(record):
    """A mapper whose output depends on Python's, numpy's and torch's generators, as augmentations do."""
    return (record["image_id"], random.random(), float(np.random.rand()), float(torch.rand(())))


def index_mapper(record):
    return record["image_id"]


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("grouping", [False, True])
def test_restored_loader_and_generators_continue_the_same_batches(tmp_path, grouping):
    def loader():
        return ResumableTrainLoader(records(), random_mapper, 3, aspect_ratio_grouping=grouping, num_workers=0, seed=5)

    set_rng_state_seed(1)
    first = loader()
    batches = iter(first)
    take(batches, 6)
    path = tmp_path / "state.pth"
    torch.save({"data": first.state_dict(), "rng": rng_state()}, path)
    expected = take(batches, 8)

    set_rng_state_seed(2)  # a new process: other generator states
    saved = torch.load(path, weights_only=True)
    resumed = loader()
    resumed.load_state_dict(saved["data"])
    set_rng_state(saved["rng"])
    assert take(iter(resumed), 8) == expected
    if grouping:
        assert all(len({r[0] % 3 == 0 for r in batch}) == 1 for batch in expected)  # one orientation per batch
        assert any(saved["data"]["pending"])  # indices were waiting in a group at the checkpoint


def set_rng_state_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_position_is_that_of_the_batches_handed_out_when_workers_run_ahead():
    def loader():
        return ResumableTrainLoader(records(), index_mapper, 2, aspect_ratio_grouping=True, num_workers=2, seed=9)

    first = loader()
    batches = iter(first)
    take(batches, 5)
    state = first.state_dict()
    expected = take(batches, 6)
    resumed = loader()
    resumed.load_state_dict(state)
    assert take(iter(resumed), 6) == expected


def test_a_position_saved_for_another_dataset_is_ignored(caplog):
    first = ResumableTrainLoader(records(13), index_mapper, 2, aspect_ratio_grouping=False, num_workers=0, seed=3)
    batches = iter(first)
    take(batches, 4)
    other = ResumableTrainLoader(records(20), index_mapper, 2, aspect_ratio_grouping=False, num_workers=0, seed=3)
    fresh = take(iter(ResumableTrainLoader(records(20), index_mapper, 2, False, 0, seed=3)), 3)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(first.state_dict())
    assert "for another training set or batch size (13 images, 2 per batch; now 20, 2)" in caplog.text
    assert take(iter(other), 3) == fresh
    with pytest.raises(RuntimeError, match="before iterating"):
        first.load_state_dict(first.state_dict())


def test_an_evaluation_inside_preserved_rng_state_changes_no_later_draw():
    set_rng_state_seed(4)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state_seed(4)
    with preserved_rng_state():
        random.random(), np.random.rand(10), torch.rand(100)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


# ----- saving and resuming files -----


def model_with(value: float) -> nn.Module:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return model


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    checkpointer = FiberCheckpointer(model_with(1.0), str(tmp_path))
    checkpointer.save("model_0000009")
    child = os.fork()
    if child == 0:  # the child is killed while torch.save is half way through the next checkpoint
        def half_then_die(data, f):
            f.write(b"PK\x03\x04 half of a zip")
            f.flush()
            os._exit(9)

        torch.save = half_then_die
        checkpointer.model = model_with(2.0)
        checkpointer.save("model_0000019")
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    resumed = model_with(0.0)
    FiberCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(resumed.weight, torch.ones(2, 3))


def _save(tmp_path, name, value, mtime):
    FiberCheckpointer(model_with(value), str(tmp_path)).save(name)
    os.utime(tmp_path / f"{name}.pth", (mtime, mtime))


@pytest.mark.parametrize("damage", ["truncated", "empty_file", "empty_last_checkpoint", "missing"])
def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog, damage):
    _save(tmp_path, "model_0000004", 4.0, 1000)
    _save(tmp_path, "model_0000009", 9.0, 2000)
    _save(tmp_path, "model_0000014", 14.0, 3000)
    last = tmp_path / "model_0000014.pth"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:75_000 // 100])
    elif damage == "empty_file":
        last.write_bytes(b"")
    elif damage == "empty_last_checkpoint":
        last.unlink()
        (tmp_path / "last_checkpoint").write_text("")
    else:
        last.unlink()
    model = model_with(0.0)
    with caplog.at_level(logging.WARNING):
        FiberCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.full((2, 3), 9.0))
    assert f"Resuming from {tmp_path / 'model_0000009.pth'} instead" in caplog.text
    reason = {"truncated": "truncated or corrupt", "empty_file": "is empty (0 bytes)",
              "empty_last_checkpoint": "last_checkpoint is empty", "missing": "does not exist"}[damage]
    assert reason in caplog.text


def test_resume_without_any_readable_checkpoint_fails_in_one_line(tmp_path):
    (tmp_path / "model_0000009.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(UnreadableCheckpointError, match=r"cannot resume: no readable checkpoint in .*is empty") as info:
        FiberCheckpointer(model_with(0.0), str(tmp_path)).resume_or_load("", resume=True)
    assert "\n" not in str(info.value)


def test_a_record_the_mapper_drops_is_replaced_by_the_next_one():
    """DATASETS.ON_BAD_RECORD skip makes a mapper return None; the loader then takes the next record (Detectron2
    0.6's MapDataset fallback raises TypeError on Python 3.11)."""
    def mapper(record):
        return None if record["image_id"] in (4, 5) else record["image_id"]

    loader = ResumableTrainLoader(records(), mapper, 3, aspect_ratio_grouping=False, num_workers=0, seed=5)
    assert [loader.dataset[i] for i in (3, 4, 5, 12)] == [3, 6, 6, 12]
    batches = take(iter(loader), 10)
    assert all(4 not in batch and 5 not in batch for batch in batches) and all(len(b) == 3 for b in batches)
    with pytest.raises(RuntimeError, match="the mapper dropped all 13 training records"):
        ResumableTrainLoader(records(), lambda r: None, 3, False, num_workers=0, seed=5).dataset[0]
