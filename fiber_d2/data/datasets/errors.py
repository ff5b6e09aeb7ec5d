"""Errors and record checks shared by the dataset loaders.

A missing file or folder raises FileNotFoundError naming it (and the first missing folder on its path). A file that
cannot be parsed, or that lacks a key its format requires, raises DatasetFormatError naming the dataset, the file, the
record and the key. A record whose content is wrong (a bad box, a span outside its caption) is a *bad record*: by
default it raises DatasetFormatError naming file, image id and annotation id; with `on_bad_record="skip"` it is
dropped with a logged warning naming it.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

BAD_RECORD_POLICIES = ("raise", "skip")


class DatasetFormatError(ValueError):
    """A dataset file that breaks its format: unparsable, a missing key, or a bad record."""


def check_on_bad_record(on_bad_record: str) -> None:
    """Raise ValueError unless `on_bad_record` is one of BAD_RECORD_POLICIES."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")


def describe_source(path: str, dataset_name: str | None) -> str:
    """'dataset NAME, file PATH' (or 'file PATH'), the prefix of every message about a file's content."""
    return f"dataset {dataset_name!r}, file {path}" if dataset_name else f"file {path}"


def _missing_path_error(path: str, dataset_name: str | None, what: str) -> FileNotFoundError:
    missing = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(missing)) and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)
    owner = f"dataset {dataset_name!r}: " if dataset_name else ""
    detail = f" ({missing} does not exist)" if missing != os.path.abspath(path) else ""
    return FileNotFoundError(f"{owner}{what} not found: {path}{detail}")


def require_file(path: str, dataset_name: str | None = None, what: str = "file") -> None:
    """Raise FileNotFoundError naming `path` (and its first missing folder) unless it is a file."""
    if not os.path.isfile(path):
        raise _missing_path_error(path, dataset_name, what)


def require_dir(path: str, dataset_name: str | None = None, what: str = "folder") -> None:
    """Raise FileNotFoundError naming `path` (and its first missing folder) unless it is a folder."""
    if not os.path.isdir(path):
        raise _missing_path_error(path, dataset_name, what)


def load_json(path: str, dataset_name: str | None = None) -> Any:
    """The parsed content of the JSON file `path`; a parse error becomes a DatasetFormatError naming the file."""
    require_file(path, dataset_name, "annotation file")
    with open(path, "rb") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(
                f"{describe_source(path, dataset_name)}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
            ) from None
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{describe_source(path, dataset_name)}: not UTF-8 text ({e})") from None


def text_lines(path: str, dataset_name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of the UTF-8 text file `path`; a decoding error names the file."""
    require_file(path, dataset_name)
    with open(path, encoding="utf-8") as f:
        try:
            yield from enumerate(f, 1)
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{describe_source(path, dataset_name)}: not UTF-8 text ({e})") from None


def top_level_list(data: Any, key: str, path: str, dataset_name: str | None = None) -> list:
    """`data[key]`, which the format requires to be a list; otherwise a DatasetFormatError naming key and file."""
    if not isinstance(data, dict) or key not in data:
        raise DatasetFormatError(f"{describe_source(path, dataset_name)}: missing top-level key {key!r}")
    if not isinstance(data[key], list):
        raise DatasetFormatError(
            f"{describe_source(path, dataset_name)}: top-level key {key!r} must be a list, "
            f"got {type(data[key]).__name__}"
        )
    return data[key]


def record_label(kind: str, record: Any, index: int) -> str:
    """How messages name a record: 'image id 7', or 'image #3 (no id)' when it has no id."""
    if isinstance(record, Mapping) and "id" in record:
        return f"{kind} id {record['id']}"
    return f"{kind} #{index} (no id)"


class RecordReporter:
    """Reports problems in the records of one file.

    `missing_key` builds the error for a record without a required key (always raised by the caller). `bad_record`
    raises a DatasetFormatError for a record with bad content (on_bad_record="raise") or logs a warning naming it
    and counts it as skipped (on_bad_record="skip"); the caller then drops the record.
    """

    def __init__(self, path: str, dataset_name: str | None = None, on_bad_record: str = "raise") -> None:
        check_on_bad_record(on_bad_record)
        self.source = describe_source(path, dataset_name)
        self.on_bad_record = on_bad_record
        self.num_skipped = 0

    def missing_key(self, key: Any, record: str) -> DatasetFormatError:
        """The error for `record` (a label such as 'image id 7') lacking `key`."""
        return DatasetFormatError(f"{self.source}: {record} has no key {key!r}")

    def not_an_object(self, record: str) -> DatasetFormatError:
        """The error for `record` not being a JSON object."""
        return DatasetFormatError(f"{self.source}: {record} is not a JSON object")

    def bad_record(self, record: str, problem: str) -> None:
        """Raise, or warn and count, for `record` (e.g. 'image id 7, annotation id 12') with `problem`."""
        message = f"{self.source}: {record}: {problem}"
        if self.on_bad_record == "raise":
            raise DatasetFormatError(f"{message} (set DATASETS.ON_BAD_RECORD skip to skip such records)")
        logger.warning("Skipping a bad record: %s", message)
        self.num_skipped += 1

    def log_summary(self) -> None:
        """Log how many bad records were skipped, if any."""
        if self.num_skipped:
            logger.warning("%s: skipped %d bad record(s)", self.source, self.num_skipped)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def pixel_count(value: Any) -> int | None:
    """`value` as a positive whole number of pixels: an int, an integral float, or a string of one ("480", "480.0":
    MDETR's conversion scripts write image sizes as strings); None for anything else (True, "abc", 0, -3, 12.5)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0 or value != int(value):
        return None
    return int(value)


def _box_problem(x: float, y: float, w: float, h: float, width: float, height: float, tolerance: float) -> str | None:
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "has a NaN or infinite coordinate"
    if w <= 0 or h <= 0:
        return "has a non-positive width or height"
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return f"lies outside the {width}x{height} (width x height) image by more than {tolerance} pixel"
    return None


def xywh_box_problem(bbox: Any, width: float, height: float, tolerance: float = 1.0) -> str | None:
    """What is wrong with the COCO box `bbox` = [x, y, w, h] (pixels) in a `width` x `height` image, or None.

    Wrong: not 4 numbers, a NaN/inf, w <= 0 or h <= 0, or an edge outside the image by more than `tolerance` pixels.
    """
    try:  # the common case, fast (a NaN fails every comparison and an infinity fails one)
        x, y, w, h = bbox
        if w > 0 and h > 0 and x >= -tolerance and y >= -tolerance and x + w <= width + tolerance \
                and y + h <= height + tolerance and all(_is_number(v) for v in bbox):
            return None
    except (TypeError, ValueError):
        pass
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox {bbox!r} is not 4 numbers [x, y, w, h]"
    problem = _box_problem(*bbox, width, height, tolerance)
    return None if problem is None else f"bbox {list(bbox)} (x, y, w, h) {problem}"


def xyxy_box_problem(box: Sequence[float], width: float, height: float, tolerance: float = 1.0) -> str | None:
    """What is wrong with the box `box` = [x0, y0, x1, y1] (pixels) in a `width` x `height` image, or None.

    Wrong: a NaN/inf, x1 <= x0 or y1 <= y0, or an edge outside the image by more than `tolerance` pixels.
    """
    x0, y0, x1, y1 = box
    problem = _box_problem(x0, y0, x1 - x0, y1 - y0, width, height, tolerance)
    return None if problem is None else f"box {list(box)} (x0, y0, x1, y1) {problem}"


def span_problem(span: Any, text: str) -> str | None:
    """What is wrong with the character span `span` = [start, end) of `text`, or None.

    Wrong: not two integers, start < 0, end <= start, or end > len(text).
    """
    if not isinstance(span, (list, tuple)) or len(span) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in span
    ):
        return f"span {span!r} is not two integers [start, end]"
    start, end = span
    if start < 0 or end <= start or end > len(text):
        return f"span {list(span)} is not a non-empty [start, end) range inside its caption of {len(text)} characters"
    return None
