"""results.json: checked before training and evaluating, merged under a lock (no entry lost between processes),
replaced atomically, and written after each dataset (an error in a later one keeps the earlier results)."""
import json
import multiprocessing
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.evaluation import DatasetEvaluator
from torch import nn

from fiber_d2.config import add_fiber_config
from fiber_d2.engine.trainer import Trainer
from fiber_d2.evaluation.results import ResultsFileError, check_results_file, save_results_json


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object"), (None, "is a directory")],
)
def test_a_results_file_that_cannot_be_merged_fails_the_check_in_one_line(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    with pytest.raises(ResultsFileError, match=message) as info:
        check_results_file(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ResultsFileError, match=message):
        save_results_json({"a": {"bbox": {"AP": 1.0}}}, str(path))
    if content is not None:
        assert path.read_text() == content  # left as it was


def test_absent_or_valid_results_file_passes_the_check(tmp_path):
    path = tmp_path / "results.json"
    check_results_file(str(path))
    save_results_json({"a": {"bbox": {"AP": 1.0}}}, str(path))
    check_results_file(str(path))
    assert json.loads(path.read_text()) == {"a": {"bbox": {"AP": 1.0}}}
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def _write_many(path: str, writer: int, count: int) -> None:
    for index in range(count):
        save_results_json({f"w{writer}_{index}": {"task": {"metric": float(index)}}}, path)


def test_concurrent_writers_lose_no_entry(tmp_path):
    path = str(tmp_path / "results.json")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(path, writer, 150)) for writer in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    merged = json.loads(open(path).read())
    assert len(merged) == 300
    assert merged["w1_149"] == {"task": {"metric": 149.0}}


class ConstantEvaluator(DatasetEvaluator):
    def __init__(self, value):
        self.value = value

    def process(self, inputs, outputs):
        pass

    def evaluate(self):
        return {"bbox": {"AP": self.value}}


class DrawingModel(nn.Module):
    """A model whose inference draws from torch's generator (as dropout or sampling would)."""

    def forward(self, inputs):
        torch.rand(5)
        return inputs


class FailingLoader(list):
    def __iter__(self):
        raise RuntimeError("image 7 of the second set is unreadable")


def test_each_dataset_is_saved_when_it_completes_and_generators_are_untouched(tmp_path, monkeypatch):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = ("first", "second")
    loaders = {"first": [[{"x": 1}]], "second": FailingLoader([[{"x": 2}]])}
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(lambda cls, cfg, name: loaders[name]))
    model = DrawingModel()
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="image 7 of the second set"):
        Trainer.test(cfg, model, [ConstantEvaluator(12.5), ConstantEvaluator(1.0)])
    assert torch.equal(torch.rand(3), expected_draw)
    assert json.loads((tmp_path / "results.json").read_text()) == {"first": {"bbox": {"AP": 12.5}}}

    loaders["second"] = [[{"x": 2}]]
    results = Trainer.test(cfg, model, [ConstantEvaluator(12.5), ConstantEvaluator(1.0)])
    assert results == {"first": {"bbox": {"AP": 12.5}}, "second": {"bbox": {"AP": 1.0}}}
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_a_bad_results_file_fails_before_training_starts(tmp_path, monkeypatch):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    (tmp_path / "results.json").write_text("[]")
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: pytest.fail("the model was built")))
    with pytest.raises(ResultsFileError, match="holds a JSON list"):
        Trainer(cfg)
