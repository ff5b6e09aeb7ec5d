"""results.json: checked before evaluating, merged under a lock (no entry lost between processes), replaced atomically."""
import json
import multiprocessing
import os

import pytest

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
