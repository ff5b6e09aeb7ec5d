"""Shared fixtures: throw-away dataset registrations (`register`; `catalog_names` for names a test registers itself),
a simulated 2-process gather, the small colour-shape tokenizer of the detector tests (`tokenizer_dir`; a test
module may define its own), and `one_thread` for modules of tiny tensors
(`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
from __future__ import annotations

import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from fiber_d2.data.tokenizer import train_roberta_bpe_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (seconds a step on a loaded 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def register():
    """register(records, **metadata) -> a new dataset name; every registration is removed after the test."""
    names = []

    def _register(records, **metadata):
        name = f"test_dataset_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def catalog_names():
    """Names a test registers or loads with metadata; removed from Detectron2's catalogs afterwards."""
    names = []
    yield names
    for name in names:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


class TwoProcesses:
    """Detectron2's `comm` as process 1 sees it (its gather only sends), then as process 0 (it also receives what
    process 1 sent)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self.sent_by_rank1: list = []

    def as_rank1(self) -> None:
        def gather(data, dst=0):
            assert dst == 0
            self.sent_by_rank1.append(data)
            return []

        self._monkeypatch.setattr(comm, "is_main_process", lambda: False)
        self._monkeypatch.setattr(comm, "gather", gather)

    def as_rank0(self) -> None:
        self._monkeypatch.setattr(comm, "is_main_process", lambda: True)
        self._monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, self.sent_by_rank1[0]])


@pytest.fixture
def two_processes(monkeypatch):
    return TwoProcesses(monkeypatch)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    colours = ["red", "blue", "green", "white", "black", "yellow", "orange", "purple"]
    shapes = ["circle", "square", "star", "triangle", "cross", "hexagon"]
    texts = [f"a {c} {s}. the {s} left of the {c} one" for c in colours for s in shapes] * 3
    return str(train_roberta_bpe_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=400))
