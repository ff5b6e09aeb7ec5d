"""The results file: `{dataset_name: {task: {metric: value}}}` as JSON, values as the evaluators give them."""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Mapping


def save_results_json(results: Mapping[str, Mapping], path: str) -> dict:
    """Merge `results` into the JSON file at `path` (datasets evaluated again are replaced) and return the merged dict.

    The file is replaced atomically, so an interrupted write never leaves it truncated. NaN (e.g. AP of a category
    with no ground truth) is written as null, keeping the file valid JSON.
    """
    merged: dict = {}
    if os.path.exists(path):
        with open(path) as f:
            try:
                merged = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} exists but is not valid JSON ({e}); move it away to write new results") from e
    merged.update({name: _finite_or_none(value) for name, value in results.items()})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(merged, f, indent=2, sort_keys=True)
        tmp_path = f.name
    os.replace(tmp_path, path)
    return merged


def _finite_or_none(value):
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
