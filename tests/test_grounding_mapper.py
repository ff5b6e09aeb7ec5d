"""GroundingDatasetMapper, the grounding loaders and load_tokenizer on a hand-made record set (two tiny images)."""
from __future__ import annotations

import itertools
import logging
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances
from PIL import Image

from fiber_d2.config import add_fiber_config
from fiber_d2.data import grounding_mapper
from fiber_d2.data.build import build_grounding_test_loader, build_grounding_train_loader, load_grounding_dataset_dicts
from fiber_d2.data.grounding_mapper import GroundingDatasetMapper
from fiber_d2.data.image_io import ImageError
from fiber_d2.data.positive_map import PromptError
from fiber_d2.data.prompts import PromptChunk
from fiber_d2.data.tokenizer import load_tokenizer, train_roberta_bpe_tokenizer

COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
SHAPES = ["circle", "square", "star", "triangle", "cross"]
# The tiny tokenizer of test_prompts_and_positive_maps.py (same texts, same training: the same tokens).
TOKENIZER_TEXTS = [f"{c} {s}. the {c} {s} left of a {s}, right of the {c} one" for c in COLOURS for s in SHAPES] * 4
TOKENIZER_TEXTS += [f"{c}. {s}" for c in COLOURS for s in SHAPES] * 4

CLASSES = ["red_circle", "blue square", "green_star_(shape)"]  # cleaned: "red circle", "blue square", "green star "
CAPTION = "the left circle right of the star"
# 0 <s> | 1 't' (0,1) | 2 'he' (1,3) | 3 'Ġleft' (4,8) | 4 'Ġcircle' (9,15) | 5 'Ġright' (16,21) | 6 'Ġof' (22,24)
# 7 'Ġthe' (25,28) | 8 'Ġstar' (29,33) | 9 </s>
# Flipped: "the right circle left of the star"
# 0 <s> | 1 't' | 2 'he' | 3 'Ġright' (4,9) | 4 'Ġcircle' (10,16) | 5 'Ġleft' (17,21) | 6 'Ġof' | 7 'Ġthe' | 8 'Ġstar' | 9


def box(x, y, w, h):
    return {"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images a.png (40 x 60, h x w) and b.png (50 x 30); a grounding and a detection dataset on them."""
    root = tmp_path_factory.mktemp("mapper")
    tokenizer_dir = train_roberta_bpe_tokenizer(TOKENIZER_TEXTS, root / "tok", vocab_size=400)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 60), "b.png": (50, 30)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    a, b = str(root / "a.png"), str(root / "b.png")
    grounding = [
        {"file_name": a, "height": 40, "width": 60, "image_id": 7, "caption": CAPTION, "dataset_name": "mixed",
         "annotations": [
             {**box(10, 4, 20, 16), "category_id": 1, "tokens_positive": [[0, 15]]},  # "the left circle"
             {**box(40, 20, 10, 10), "category_id": 1, "tokens_positive": [[16, 33]]},  # "right of the star"
             {**box(0, 0, 5, 5), "category_id": 1, "tokens_positive": [[0, 15]], "iscrowd": 1},
             {**box(70, 0, 10, 10), "category_id": 1, "tokens_positive": [[29, 33]]},  # outside: zero area
         ]},
        {"file_name": b, "height": 50, "width": 30, "image_id": 8, "caption": "a red circle and a blue square",
         "tokens_positive_eval": [[[2, 12]], [[19, 30]]],
         "annotations": [{**box(0, 0, 30, 10), "category_id": 0, "tokens_positive": [[19, 30]]}]},
    ]
    detection = [
        {"file_name": a, "height": 40, "width": 60, "image_id": 1,
         "annotations": [{**box(10, 4, 20, 16), "category_id": 2, "iscrowd": 0},
                         {**box(40, 20, 10, 10), "category_id": 0, "iscrowd": 0},
                         {**box(30, 0, 10, 10), "category_id": 2, "iscrowd": 0}]},
        {"file_name": b, "height": 50, "width": 30, "image_id": 2, "annotations": []},
    ]
    names = {"grounding": f"test_mapper_grounding_{uuid.uuid4().hex}", "detection": f"test_mapper_det_{uuid.uuid4().hex}"}
    DatasetCatalog.register(names["grounding"], lambda: [dict(r) for r in grounding])
    DatasetCatalog.register(names["detection"], lambda: [dict(r) for r in detection])
    MetadataCatalog.get(names["detection"]).set(thing_classes=CLASSES)
    yield {"tokenizer": str(tokenizer_dir), "names": names, "grounding": grounding, "detection": detection,
           "root": root}
    for name in names.values():
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def make_cfg(data, **overrides):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.MODEL.FIBER.TOKENIZER = data["tokenizer"]
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.MODEL.FIBER.PROMPT.TRAIN_NEGATIVES = 0
    cfg.MODEL.FIBER.PROMPT.TRAIN_SHUFFLE = False
    cfg.MODEL.FIBER.PROMPT.CHUNK_SIZE = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def records(data, kind):
    return load_grounding_dataset_dicts([data["names"][kind]])


def token_sets(positive_map):
    return [set(torch.nonzero(row).flatten().tolist()) for row in positive_map]


def test_training_output_of_a_grounding_record(data):
    mapper = GroundingDatasetMapper(make_cfg(data), True)
    record = records(data, "grounding")[0]
    out = mapper(record)
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "caption", "input_ids", "instances"}
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 20, 30)  # short side 40 -> 20
    assert (out["height"], out["width"], out["image_id"]) == (40, 60, 7) and out["file_name"] == record["file_name"]
    assert out["caption"] == CAPTION
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == (10,)
    instances = out["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (20, 30) and len(instances) == 2
    assert isinstance(instances.gt_boxes, Boxes)
    # XYWH (10, 4, 20, 16) -> XYXY (10, 4, 30, 20) -> x 0.5; the crowd box and the box outside the image are gone
    assert instances.gt_boxes.tensor.tolist() == [[5.0, 2.0, 15.0, 10.0], [20.0, 10.0, 25.0, 15.0]]
    assert instances.gt_classes.dtype == torch.long and instances.gt_classes.tolist() == [0, 1]  # phrase indices
    assert instances.gt_positive_map.dtype == torch.bool and instances.gt_positive_map.shape == (2, 10)
    assert token_sets(instances.gt_positive_map) == [{1, 2, 3, 4}, {5, 6, 7, 8}]
    assert "source_dataset" in record and "caption" in record and "instances" not in record  # record untouched


def test_training_short_edge_given_by_the_sampler(data):
    mapper = GroundingDatasetMapper(make_cfg(data, **{"INPUT.MAX_SIZE_TRAIN": 50}), True)
    record = records(data, "grounding")[0]  # 40 x 60
    out = mapper(record, short_edge=30)
    assert out["image"].shape == (3, 30, 45) and out["instances"].image_size == (30, 45)
    assert out["instances"].gt_boxes.tensor.tolist()[0] == [7.5, 3.0, 22.5, 15.0]  # XYXY (10, 4, 30, 20) x 0.75
    assert mapper(record, short_edge=40)["image"].shape == (3, 33, 50)  # the longest side capped at MAX_SIZE_TRAIN


def test_training_flip_mirrors_boxes_and_swaps_left_right(data, monkeypatch):
    monkeypatch.setattr(grounding_mapper.random, "random", lambda: 0.0)  # always flip
    mapper = GroundingDatasetMapper(make_cfg(data, **{"INPUT.RANDOM_FLIP": "horizontal"}), True)
    out = mapper(records(data, "grounding")[0])
    assert out["caption"] == "the right circle left of the star"
    image = GroundingDatasetMapper(make_cfg(data), True)(records(data, "grounding")[0])["image"]
    assert torch.equal(out["image"], image.flip(-1))
    instances = out["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[15.0, 2.0, 25.0, 10.0], [5.0, 10.0, 10.0, 15.0]]  # x -> 30 - x
    assert token_sets(instances.gt_positive_map) == [{1, 2, 3, 4}, {5, 6, 7, 8}]  # "the right circle", "left of..."
    ids = mapper.tokenizer(out["caption"])["input_ids"]
    assert out["input_ids"].tolist() == ids and mapper.tokenizer.convert_ids_to_tokens(ids)[3:6] == [
        "Ġright", "Ġcircle", "Ġleft"
    ]

    # Without the swap, a caption with left/right is never flipped; other records still are.
    keep = GroundingDatasetMapper(
        make_cfg(data, **{"INPUT.RANDOM_FLIP": "horizontal", "INPUT.FLIP_SWAP_LEFT_RIGHT": False}), True
    )
    out = keep(records(data, "grounding")[0])
    assert out["caption"] == CAPTION and out["instances"].gt_boxes.tensor[0].tolist() == [5.0, 2.0, 15.0, 10.0]
    out = keep(records(data, "grounding")[1])  # "a red circle and a blue square": flipped
    # 50 x 30 (h x w) -> 33 x 20: y x 33/50, x x 20/30; (0, 0, 30, 10) -> (0, 0, 20, 6.6), mirrored: the same
    assert out["instances"].gt_boxes.tensor.tolist() == [[0.0, 0.0, 20.0, pytest.approx(6.6)]]


def test_training_output_of_a_detection_record(data):
    mapper = GroundingDatasetMapper(make_cfg(data), True)
    out = mapper(records(data, "detection")[0])
    # no negatives, no shuffle: the image's categories in order of first appearance; names cleaned as GLIP does
    assert out["caption"] == "green star . red circle"
    # 0 <s> | 1 'green' (0,5) | 2 'Ġstar' (6,10) | 3 'Ġ' (11,11) | 4 '.' (11,12) | 5 'Ġred' (13,16) | 6 'Ġcircle' | 7 </s>
    assert mapper.tokenizer.convert_ids_to_tokens(out["input_ids"].tolist()) == [
        "<s>", "green", "Ġstar", "Ġ", ".", "Ġred", "Ġcircle", "</s>"
    ]
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [2, 0, 2]
    assert instances.gt_boxes.tensor.tolist() == [[5.0, 2.0, 15.0, 10.0], [20.0, 10.0, 25.0, 15.0],
                                                  [15.0, 0.0, 20.0, 5.0]]
    # "green star " = [0, 11): its trailing space maps to no token (end retried at 9); "red circle" = [13, 23)
    assert token_sets(instances.gt_positive_map) == [{1, 2}, {5, 6}, {1, 2}]

    with_negatives = GroundingDatasetMapper(make_cfg(data, **{"MODEL.FIBER.PROMPT.TRAIN_NEGATIVES": 5}), True)
    out = with_negatives(records(data, "detection")[0])
    assert out["caption"] == "green star . red circle. blue square"  # the only other category
    empty = with_negatives(records(data, "detection")[1])
    assert len(empty["instances"]) == 0 and empty["instances"].gt_positive_map.shape == (0, len(empty["input_ids"]))


def test_training_prompt_too_long_drops_cut_boxes_with_a_warning(data, caplog):
    # MAX_QUERY_LEN 6: <s> 't' 'he' 'Ġleft' 'Ġcircle' </s>; "the left circle" survives, "right of the star" is cut
    mapper = GroundingDatasetMapper(make_cfg(data, **{"MODEL.FIBER.MAX_QUERY_LEN": 6}), True)
    with caplog.at_level(logging.WARNING, logger="fiber_d2.data.grounding_mapper"):
        out = mapper(records(data, "grounding")[0])
    assert out["input_ids"].shape == (6,) and len(out["instances"]) == 1
    assert token_sets(out["instances"].gt_positive_map) == [{1, 2, 3, 4}]
    assert "image_id 7" in caplog.text and "dropped 2 of 3 boxes" in caplog.text
    inference = GroundingDatasetMapper(make_cfg(data, **{"MODEL.FIBER.MAX_QUERY_LEN": 6}), False)
    with pytest.raises(PromptError, match="image_id 7: the caption is longer than MODEL.FIBER.MAX_QUERY_LEN = 6"):
        inference(records(data, "grounding")[0])


def test_inference_output_of_a_grounding_record(data):
    mapper = GroundingDatasetMapper(make_cfg(data), False)
    out = mapper(records(data, "grounding")[0])
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "prompts", "label_names"}
    assert out["image"].shape == (3, 20, 30)
    [chunk] = out["prompts"]
    assert isinstance(chunk, PromptChunk) and chunk.caption == CAPTION  # never flipped nor swapped at inference
    assert chunk.input_ids.tolist() == mapper.tokenizer(CAPTION)["input_ids"]
    # grounding_phrases: the distinct tokens_positive of the annotations, in order (the box outside too)
    assert chunk.label_ids.tolist() == [0, 1, 2]
    assert chunk.label_names == ["the left circle", "right of the star", "star"] == out["label_names"]
    assert token_sets(chunk.label_token_map) == [{1, 2, 3, 4}, {5, 6, 7, 8}, {8}]
    # tokens_positive_eval gives the phrases when present
    out = mapper(records(data, "grounding")[1])
    assert out["label_names"] == ["red circle", "blue square"] and out["prompts"][0].label_token_map.shape[0] == 2


def test_inference_output_of_a_detection_record_reuses_the_chunks(data):
    mapper = GroundingDatasetMapper(make_cfg(data), False)
    first, second = (mapper(r) for r in records(data, "detection"))
    assert first["label_names"] == ["red circle", "blue square", "green star "]
    assert [c.caption for c in first["prompts"]] == ["red circle. blue square", "green star "]
    assert [c.label_ids.tolist() for c in first["prompts"]] == [[0, 1], [2]]
    assert token_sets(first["prompts"][0].label_token_map) == [{1, 2}, {4, 5}]
    assert token_sets(first["prompts"][1].label_token_map) == [{1, 2}]  # the trailing space maps to no token
    assert first["prompts"] is second["prompts"]  # computed once per dataset
    assert all(a is b for a, b in zip(first["prompts"], second["prompts"]))
    assert second["image"].shape == (3, 33, 20)  # 50 x 30 -> short side 20

    # A detection record outside the loader needs the mapper's dataset_name.
    bare = {k: v for k, v in data["detection"][0].items()}
    with pytest.raises(PromptError, match="source_dataset"):
        mapper(bare)
    named = GroundingDatasetMapper(make_cfg(data), False, dataset_name=data["names"]["detection"])
    assert named(bare)["label_names"] == first["label_names"]


def test_inference_reads_and_resizes_an_image_once_for_its_consecutive_records(data, monkeypatch):
    reads = []
    read = grounding_mapper.read_record_image

    def spy(record, *args):
        reads.append(record["file_name"])
        return read(record, *args)

    monkeypatch.setattr(grounding_mapper, "read_record_image", spy)
    mapper = GroundingDatasetMapper(make_cfg(data), False)
    first = records(data, "grounding")[0]
    second = {**first, "caption": "the star", "image_id": 9,  # a second expression of image a.png
              "annotations": [{**box(40, 20, 10, 10), "category_id": 1, "tokens_positive": [[0, 8]]}]}
    del second["height"], second["width"]  # a record without its size gets the cached image's
    outs = [mapper(r) for r in (first, second, records(data, "grounding")[1], first)]
    assert reads == [first["file_name"], data["grounding"][1]["file_name"], first["file_name"]]
    assert outs[1]["image"] is outs[0]["image"] and (outs[1]["height"], outs[1]["width"]) == (40, 60)
    assert torch.equal(outs[3]["image"], outs[0]["image"]) and outs[1]["prompts"][0].caption == "the star"
    # the same file said to have another size is read again, and the mismatch named
    with pytest.raises(ImageError, match="the record says 41x60"):
        mapper({**first, "height": 41})


def test_load_grounding_dataset_dicts_tags_records(data):
    names = data["names"]
    dicts = load_grounding_dataset_dicts([names["grounding"], names["detection"]])
    assert [d["source_dataset"] for d in dicts] == [names["grounding"]] * 2 + [names["detection"]] * 2
    assert dicts[0]["dataset_name"] == "mixed" and "source_dataset" not in data["grounding"][0]
    assert len(load_grounding_dataset_dicts([names["detection"]], filter_empty=True)) == 1


def test_loaders(data):
    cfg = make_cfg(data, **{"DATASETS.TRAIN": (data["names"]["grounding"], data["names"]["detection"])})
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    batch = next(iter(build_grounding_train_loader(cfg)))
    assert len(batch) == 2 and all("input_ids" in x and "instances" in x for x in batch)
    cfg.INPUT.MIN_SIZE_TRAIN = (20, 30)
    cfg.DATALOADER.SIZE_GROUPING = 16
    for batch in itertools.islice(build_grounding_train_loader(cfg), 6):  # one padded size per batch
        assert len({tuple(-(-side // 16) for side in x["image"].shape[1:]) for x in batch}) == 1
        assert {min(x["image"].shape[1:]) for x in batch} <= {20, 30}
    outputs = list(build_grounding_test_loader(cfg, data["names"]["detection"]))
    assert [len(batch) for batch in outputs] == [1, 1]
    assert [x[0]["image_id"] for x in outputs] == [1, 2] and all(len(x[0]["prompts"]) == 2 for x in outputs)
    grounding = data["names"]["grounding"]
    cfg.TEST.IMS_PER_BATCH = 3  # batches of up to 3 records, in dataset order: both records in one
    batches = list(build_grounding_test_loader(cfg, grounding))
    assert [len(batch) for batch in batches] == [2] and [x["image_id"] for x in batches[0]] == [
        r["image_id"] for r in load_grounding_dataset_dicts([grounding])
    ]
    cfg.TEST.IMS_PER_BATCH = 0
    with pytest.raises(ValueError, match="TEST.IMS_PER_BATCH"):
        build_grounding_test_loader(cfg, grounding)


def test_load_tokenizer_paths(data, monkeypatch):
    root = data["root"]
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    assert load_tokenizer("$DETECTRON2_DATASETS/tok").convert_ids_to_tokens([0, 2]) == ["<s>", "</s>"]
    monkeypatch.delenv("DETECTRON2_DATASETS")
    monkeypatch.chdir(root.parent)
    with pytest.raises(FileNotFoundError, match=r"datasets/tok.*MODEL\.FIBER\.TOKENIZER"):
        load_tokenizer("$DETECTRON2_DATASETS/tok")  # defaults to ./datasets
    with pytest.raises(FileNotFoundError, match="MODEL.FIBER.TOKENIZER"):
        load_tokenizer("")
