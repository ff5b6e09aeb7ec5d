"""Reading and checking images: errors that name the image and say what is wrong, and 16-bit images read right.

`read_image` is Detectron2's `read_image` (EXIF orientation applied, PIL modes, "BGR") with three differences:
- 16-bit images (PIL modes "I;16*", and "I" from a PNG, which is how PIL opens a 16-bit grayscale PNG) keep their
  high byte, v >> 8, as PIL does for 16-bit colour PNGs and OpenCV's `imread` for any 16-bit image (Detectron2 clips
  them to 255: an all-white image). Float ("F") and other 32-bit integer images are refused: their range is unknown.
- every failure (missing, empty, corrupt, truncated, unsupported) is an ImageError with one line naming the file;
- `read_record_image` also checks the size a dataset record gives and names the record.
`check_image_array` checks an array handed to a predictor: uint8 [H, W, 3] with H, W >= 1.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps, UnidentifiedImageError

from .datasets.errors import check_on_bad_record

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image that cannot be used; the message names it (file, or dataset record, or argument) and the problem."""


class _Unusable(Exception):
    """What is wrong with an image file (the message names no file)."""


def _to_eight_bits(image: Image.Image, file_format: str | None) -> Image.Image:
    """PIL image -> one that PIL converts to RGB right: 16-bit grayscale -> "L" (high byte); float/32-bit refused."""
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and file_format == "PNG"):
        values = np.asarray(image, dtype=np.uint32)  # "I" holds 0-65535 for a 16-bit PNG
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        kind = "floating-point" if image.mode == "F" else "32-bit integer"
        raise _Unusable(f"a {kind} image (PIL mode {image.mode!r}) has no known 0-255 scaling; "
                        "convert it to an 8- or 16-bit image")
    return image


def _read(path: str, format: str) -> np.ndarray:
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            file_format = image.format
            image = ImageOps.exif_transpose(image)  # loads the pixels: a truncated file fails here
            return convert_PIL_to_numpy(_to_eight_bits(image, file_format), format)
    except FileNotFoundError:
        raise _Unusable("no such file") from None
    except UnidentifiedImageError:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise _Unusable("the file is empty (0 bytes)") from None
        raise _Unusable("not an image format PIL can read (corrupt or unknown)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _Unusable(f"cannot decode the image, truncated or corrupt ({type(e).__name__}: {e})") from None


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """The image file `path` as a uint8 array [H, W, C] in `format` ("BGR", "RGB", "L", ...), EXIF orientation applied.

    Raises ImageError naming `path` when the file is missing, empty, not an image, truncated or corrupt, or an image
    whose values have no 0-255 scaling (float or 32-bit integer)."""
    try:
        return _read(path, format)
    except _Unusable as e:
        raise ImageError(f"{path}: {e}") from None


def read_record_image(record: dict, format: str, where: str) -> np.ndarray:
    """A dataset record's image (`record["file_name"]`) as `read_image` reads it, checked against the record's
    `height`/`width` if it has them (both are then set: Detectron2's `check_image_size`, in place).

    `where` names the record in errors, e.g. "dataset 'x', file a.jpg, image_id 7"; raises ImageError."""
    try:
        image = _read(record["file_name"], format)
    except _Unusable as e:
        raise ImageError(f"{where}: {e}") from None
    height, width = image.shape[:2]
    expected = (record.get("height", height), record.get("width", width))
    if expected != (height, width):
        raise ImageError(f"{where}: the image is {height}x{width} (height x width), the record says "
                         f"{expected[0]}x{expected[1]}")
    record["height"], record["width"] = height, width
    return image


def read_record_image_or_skip(record: dict, format: str, where: str, skip: bool) -> np.ndarray | None:
    """`read_record_image`; with `skip` (training under DATASETS.ON_BAD_RECORD skip), an unusable image is logged as
    a warning naming the record and None is returned (the loader then takes the next record)."""
    try:
        return read_record_image(record, format, where)
    except ImageError as e:
        if not skip:
            raise
        logger.warning("Skipping a bad record: %s", e)
        return None


def check_image_files(records: Sequence[dict], on_bad_record: str = "raise") -> list[dict]:
    """The records whose `file_name` is a non-empty file (one `os.stat` each, no decoding).

    A missing or empty file raises an ImageError naming the record's dataset (`source_dataset`), file and image_id
    (on_bad_record="raise"), or is dropped with a warning naming it ("skip")."""
    check_on_bad_record(on_bad_record)
    kept = []
    for record in records:
        path = record.get("file_name")
        try:
            problem = None if os.stat(path).st_size > 0 else "the file is empty (0 bytes)"
        except (OSError, TypeError):
            problem = "no such file"
        if problem is None:
            kept.append(record)
            continue
        where = describe_record(record)
        if on_bad_record == "raise":
            raise ImageError(f"{where}: {problem} (DATASETS.ON_BAD_RECORD skip drops such records)")
        logger.warning("Skipping a bad record: %s: %s", where, problem)
    if len(kept) < len(records):
        logger.warning("Skipped %d of %d records whose image file is missing or empty", len(records) - len(kept),
                       len(records))
    return kept


def describe_record(record: dict, dataset_name: str | None = None) -> str:
    """How errors name a record: "dataset 'x', file a.jpg, image_id 7" (the dataset: `source_dataset` or the given)."""
    dataset = record.get("source_dataset") or dataset_name
    parts = [f"dataset {dataset!r}"] if dataset else []
    return ", ".join(parts + [f"file {record.get('file_name')}", f"image_id {record.get('image_id')}"])


def check_image_array(image: Any, name: str = "image") -> np.ndarray:
    """`image` if it is a numpy uint8 array [H, W, 3] with H, W >= 1 (as `cv2.imread` returns); otherwise an
    ImageError naming `name` that says what is expected and what was given."""
    expected = f"{name}: expected an array [H, W, 3] of dtype uint8 (values 0-255, H and W >= 1), as cv2.imread returns"
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{expected}; got a {type(image).__module__}.{type(image).__name__}")
    if image.dtype != np.uint8:
        seen = ""
        if image.size and (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
            seen = f" with values in [{image.min()}, {image.max()}]"
        hint = ""
        if np.issubdtype(image.dtype, np.floating) and image.size and 0.0 <= image.min() and image.max() <= 1.0:
            hint = " (a float image scaled 0-1: pass (image * 255).round().astype(np.uint8))"
        elif image.dtype == np.uint16:
            hint = " (a 16-bit image: pass (image >> 8).astype(np.uint8))"
        raise ImageError(f"{expected}; got dtype {image.dtype}{seen}{hint}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"{expected}; got shape {tuple(image.shape)}")
    return image
