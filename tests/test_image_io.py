"""fiber_d2.data.image_io and the mappers' image reading: 16-bit images, unusable files named, DATASETS.ON_BAD_RECORD."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from detectron2.data.detection_utils import read_image as detectron2_read_image
from PIL import Image
from test_grounding_detector import micro_cfg

from fiber_d2.data.build import (
    build_coarse_test_loader,
    build_coarse_train_loader,
    build_grounding_test_loader,
    build_grounding_train_loader,
)
from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
from fiber_d2.data.grounding_mapper import GroundingDatasetMapper
from fiber_d2.data.image_io import ImageError, check_image_array, check_image_files, read_image, read_record_image

VALUES_16 = np.array([[0, 255, 256, 1000, 40000, 65535]], dtype=np.uint16)
HIGH_BYTES = np.array([[0, 0, 1, 3, 156, 255]], dtype=np.uint8)  # v >> 8, as cv2.imread makes 16-bit images 8-bit


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files: good ones, 16-bit ones, and every kind of unusable one."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "good.png")
    Image.fromarray(rgb).save(root / "good.jpg", quality=95)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    rotated.save(root / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(VALUES_16).save(root / "gray16.png")
    Image.fromarray(VALUES_16).save(root / "gray16.tiff")
    Image.fromarray(np.ones((4, 4), np.float32)).save(root / "float.tiff")
    (root / "empty.jpg").write_bytes(b"")
    (root / "corrupt.jpg").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    for name in ("good.png", "good.jpg"):
        data = (root / name).read_bytes()
        (root / f"truncated{name[4:]}").write_bytes(data[: len(data) // 2])
    return {"root": root, "rgb": rgb}


def test_16_bit_grayscale_png_and_tiff_keep_their_high_byte(images):
    for name in ("gray16.png", "gray16.tiff"):
        bgr = read_image(str(images["root"] / name), "BGR")
        assert bgr.dtype == np.uint8 and bgr.shape == (1, 6, 3)
        for channel in range(3):
            np.testing.assert_array_equal(bgr[:, :, channel], HIGH_BYTES)
    # Detectron2's reader clips the same PNG to 255: all but the two darkest pixels white.
    assert detectron2_read_image(str(images["root"] / "gray16.png"), "BGR")[0, :, 0].tolist() == [0, 255] + [255] * 4


def test_8_bit_images_read_as_detectron2_reads_them(images):
    root = images["root"]
    np.testing.assert_array_equal(read_image(str(root / "good.png"), "RGB"), images["rgb"])
    np.testing.assert_array_equal(read_image(str(root / "good.png")), images["rgb"][:, :, ::-1])
    for name in ("good.jpg", "rotated.jpg"):
        np.testing.assert_array_equal(read_image(str(root / name)), detectron2_read_image(str(root / name), "BGR"))
    assert read_image(str(root / "rotated.jpg")).shape == (60, 40, 3)


@pytest.mark.parametrize("name, problem", [
    ("missing.jpg", "no such file"),
    ("empty.jpg", "the file is empty (0 bytes)"),
    ("corrupt.jpg", "not an image format PIL can read (corrupt or unknown)"),
    ("truncated.jpg", "cannot decode the image, truncated or corrupt (OSError: image file is truncated"),
    ("truncated.png", "cannot decode the image, truncated or corrupt (OSError: image file is truncated"),
    ("float.tiff", "a floating-point image (PIL mode 'F') has no known 0-255 scaling; convert it to an 8- or "
                   "16-bit image"),
])
def test_unusable_files_are_named_with_their_problem(images, name, problem):
    path = str(images["root"] / name)
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert str(error.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(error.value)


def test_record_images_are_checked_against_the_record(images):
    path = str(images["root"] / "good.png")
    where = "dataset 'd', file x, image_id 7"
    record = {"file_name": path}
    assert read_record_image(record, "BGR", where).shape == (40, 60, 3)
    assert (record["height"], record["width"]) == (40, 60)
    with pytest.raises(ImageError, match="^dataset 'd', file x, image_id 7: the image is 40x60 \\(height x width\\), "
                                         "the record says 40x61$"):
        read_record_image({"file_name": path, "height": 40, "width": 61}, "BGR", where)
    with pytest.raises(ImageError, match="^dataset 'd', file x, image_id 7: the file is empty \\(0 bytes\\)$"):
        read_record_image({"file_name": str(images["root"] / "empty.jpg")}, "BGR", where)


def test_check_image_files_raises_or_skips_by_name(images, caplog):
    root = images["root"]
    records = [{"file_name": str(root / name), "image_id": i, "source_dataset": "d"}
               for i, name in enumerate(["good.png", "missing.jpg", "empty.jpg", "corrupt.jpg"])]
    with pytest.raises(ImageError) as error:
        check_image_files(records)
    assert str(error.value) == (f"dataset 'd', file {root / 'missing.jpg'}, image_id 1: no such file "
                                "(DATASETS.ON_BAD_RECORD skip drops such records)")
    with caplog.at_level(logging.WARNING):
        kept = check_image_files(records, "skip")
    assert [r["image_id"] for r in kept] == [0, 3]  # a corrupt file is only found by decoding it (the mapper)
    assert f"file {root / 'empty.jpg'}, image_id 2: the file is empty (0 bytes)" in caplog.text
    with pytest.raises(ValueError, match="on_bad_record must be one of"):
        check_image_files(records, "ignore")


@pytest.mark.parametrize("image, given", [
    (np.zeros((4, 4, 3), np.float32) + 0.5, "got dtype float32 with values in [0.5, 0.5] (a float image scaled 0-1: "
                                            "pass (image * 255).round().astype(np.uint8))"),
    (np.full((4, 4, 3), 300, np.uint16), "got dtype uint16 with values in [300, 300] (a 16-bit image: pass "
                                         "(image >> 8).astype(np.uint8))"),
    (np.ones((4, 4, 3), bool), "got dtype bool with values in [True, True]"),
    (np.zeros((0, 0, 3), np.uint8), "got shape (0, 0, 3)"),
    (np.zeros((4, 4), np.uint8), "got shape (4, 4)"),
    (torch.zeros(4, 4, 3, dtype=torch.uint8), "got a torch.Tensor"),
])
def test_check_image_array_says_what_is_expected(image, given):
    with pytest.raises(ImageError) as error:
        check_image_array(image, "image 2")
    assert str(error.value) == ("image 2: expected an array [H, W, 3] of dtype uint8 (values 0-255, H and W >= 1), "
                                f"as cv2.imread returns; {given}")


@pytest.fixture
def mapper_cfg(tokenizer_dir):  # noqa: F811
    cfg = micro_cfg(tokenizer_dir)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 48
    cfg.INPUT.COARSE.IMAGE_SIZE = 32
    return cfg


def _record(images, name: str, **extra) -> dict:
    return {"file_name": str(images["root"] / name), "image_id": 5, "height": 40, "width": 60, "caption": "a red circle",
            "annotations": [{"bbox": [1, 2, 10, 10], "bbox_mode": 1, "tokens_positive": [[2, 12]]}],
            "source_dataset": "shapes_x", **extra}


def test_grounding_mapper_names_bad_images_and_skips_them_in_training_only(mapper_cfg, images, caplog):
    mapper_cfg.DATASETS.ON_BAD_RECORD = "raise"
    train = GroundingDatasetMapper(mapper_cfg, True)
    assert train(_record(images, "good.png"))["image"].shape[0] == 3
    where = f"dataset 'shapes_x', file {images['root'] / 'truncated.png'}, image_id 5"
    with pytest.raises(ImageError, match=f"^{where}: cannot decode the image, truncated or corrupt"):
        train(_record(images, "truncated.png"))
    with pytest.raises(ImageError, match="the image is 40x60 \\(height x width\\), the record says 40x80$"):
        train(_record(images, "good.png", width=80))

    mapper_cfg.DATASETS.ON_BAD_RECORD = "skip"
    with caplog.at_level(logging.WARNING):
        assert GroundingDatasetMapper(mapper_cfg, True)(_record(images, "missing.jpg")) is None
    assert f"Skipping a bad record: dataset 'shapes_x', file {images['root'] / 'missing.jpg'}, image_id 5: " \
           "no such file" in caplog.text
    with pytest.raises(ImageError, match="image_id 5: no such file$"):  # evaluation never skips
        GroundingDatasetMapper(mapper_cfg, False)(_record(images, "missing.jpg"))


def test_coarse_mapper_names_bad_images_and_skips_them_in_training_only(mapper_cfg, images):
    record = {**_record(images, "empty.jpg"), "captions": ["a red circle"]}
    with pytest.raises(ImageError, match=f"^dataset 'shapes_x', file {images['root'] / 'empty.jpg'}, image_id 5: "
                                         "the file is empty \\(0 bytes\\)$"):
        CoarseDatasetMapper(mapper_cfg, True)(record)
    mapper_cfg.DATASETS.ON_BAD_RECORD = "skip"
    assert CoarseDatasetMapper(mapper_cfg, True)(record) is None
    with pytest.raises(ImageError, match="the file is empty"):
        CoarseDatasetMapper(mapper_cfg, False, task="retrieval")(record)
    good = {**record, "file_name": str(images["root"] / "good.jpg")}
    assert CoarseDatasetMapper(mapper_cfg, True)(good)["image"].shape == (3, 32, 32)


def test_loaders_check_the_image_files_when_built(mapper_cfg, images, register):
    records = [{k: v for k, v in _record(images, name).items() if k != "source_dataset"} for name in
               ("good.png", "missing.jpg")]
    records[1]["image_id"] = 6
    name = register(records, thing_classes=["red circle"])
    mapper_cfg.DATASETS.TRAIN, mapper_cfg.DATALOADER.NUM_WORKERS = (name,), 0
    missing = f"dataset {name!r}, file {images['root'] / 'missing.jpg'}, image_id 6: no such file"
    with pytest.raises(ImageError, match=f"^{missing} \\(DATASETS.ON_BAD_RECORD skip drops such records\\)$"):
        build_grounding_train_loader(mapper_cfg)
    mapper_cfg.DATASETS.ON_BAD_RECORD = "skip"
    assert len(build_grounding_train_loader(mapper_cfg).dataset) == 1
    assert len(build_coarse_train_loader(mapper_cfg, [name], 2).dataset) == 1
    for build_test_loader in (build_grounding_test_loader, build_coarse_test_loader):
        with pytest.raises(ImageError, match=f"^{missing} "):  # evaluation never skips
            build_test_loader(mapper_cfg, name)
