"""The results file: `{dataset_name: {task: {metric: value}}}` as JSON, values as the evaluators give them.

`check_results_file` runs before an evaluation (a file that cannot be merged into fails then, not after it);
`save_results_json` merges one or more datasets' results under an exclusive lock on `<path>.lock` (fcntl.flock), so
that processes writing the same file never lose each other's entries, and replaces the file atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from typing import Iterator, Mapping

from ..checkpoint.checkpointer import write_atomically


class ResultsFileError(ValueError):
    """A results file that cannot be merged into (not JSON, not an object, a directory); one line naming it."""


def check_results_file(path: str) -> None:
    """Raise ResultsFileError unless `path` is absent or a JSON object whose directory is writable."""
    _read(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory) and not os.access(directory, os.W_OK):
        raise ResultsFileError(f"results file {path}: its directory is not writable")


def save_results_json(results: Mapping[str, Mapping], path: str) -> dict:
    """Merge `results` into the JSON file at `path` (datasets evaluated again are replaced) and return the merged dict.

    The read-merge-write holds an exclusive lock on `<path>.lock`; the file is replaced atomically, so an interrupted
    write never leaves it truncated. NaN (e.g. AP of a category with no ground truth) is written as null, keeping the
    file valid JSON. Raises ResultsFileError (nothing written) when the existing file is not a JSON object.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _locked(path + ".lock"):
        merged = _read(path)
        merged.update({str(name): _finite_or_none(value) for name, value in results.items()})
        write_atomically(path, lambda f: f.write(json.dumps(merged, indent=2, sort_keys=True).encode("utf-8")))
    return merged


def _read(path: str) -> dict:
    """The JSON object at `path` ({} when absent); ResultsFileError when it cannot be merged into."""
    if os.path.isdir(path):
        raise ResultsFileError(f"results file {path} is a directory; set TEST.RESULTS_FILE to a file name")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"results file {path} is not valid JSON ({e}); move it away to write new results") from e
    if not isinstance(content, dict):
        raise ResultsFileError(
            f"results file {path} holds a JSON {type(content).__name__}, not an object of datasets; move it away"
        )
    return content


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) on `lock_path`, held for the block; released when the process dies."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _finite_or_none(value):
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
