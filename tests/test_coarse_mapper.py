"""mask_tokens, build_answer_vocabulary and CoarseDatasetMapper (pretrain/retrieval, VQA, caption) on tiny hand-made
records (two tiny images, a tiny tokenizer)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from fiber_d2.config import add_fiber_config
from fiber_d2.data import coarse_mapper
from fiber_d2.data.coarse_mapper import CoarseDatasetMapper, build_answer_vocabulary, mask_tokens
from fiber_d2.data.image_io import ImageError
from fiber_d2.data.tokenizer import load_tokenizer, train_roberta_bpe_tokenizer

COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
SHAPES = ["circle", "square", "star", "triangle", "cross"]
TOKENIZER_TEXTS = [f"{c} {s}. the {c} {s} left of a {s}, right of the {c} one" for c in COLOURS for s in SHAPES] * 4
TOKENIZER_TEXTS += [f"what colour is the {s} on the left? {c}" for c in COLOURS for s in SHAPES] * 4
S = 16  # INPUT.COARSE.IMAGE_SIZE of the tests
CAPTIONS = ["a red circle left of a blue square", "the Left star", "a green cross"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """noise.png (40 x 60, h x w, random RGB), solid.png (30 x 50, one colour) and a tiny tokenizer."""
    root = tmp_path_factory.mktemp("coarse_mapper")
    tokenizer_dir = train_roberta_bpe_tokenizer(TOKENIZER_TEXTS, root / "tok", vocab_size=400)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "noise.png")
    Image.fromarray(np.full((30, 50, 3), (200, 30, 90), dtype=np.uint8)).save(root / "solid.png")
    return {"tokenizer": str(tokenizer_dir), "noise": str(root / "noise.png"), "solid": str(root / "solid.png")}


def make_cfg(data, **overrides):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.MODEL.FIBER.TOKENIZER = data["tokenizer"]
    cfg.INPUT.COARSE.IMAGE_SIZE = S
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def pair_record(data, **fields):
    return {"file_name": data["noise"], "image_id": 7, "height": 40, "width": 60, "captions": list(CAPTIONS), **fields}


def vqa_record(data, **fields):
    return {"file_name": data["noise"], "image_id": 7, "question_id": 70, "question": "what colour is the star?",
            "answers": ["red"] * 3 + ["blue"] * 7, "multiple_choice_answer": "blue", "answer_type": "other", **fields}


def pil_resized(path, size):
    """The image resized to size x size with PIL (bicubic), as CHW uint8 in BGR (INPUT.FORMAT's default)."""
    resized = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))
    return torch.as_tensor(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1)))


# ----- mask_tokens -----


@pytest.fixture(scope="module")
def batch():
    """ids [512, 128] in [5, 1000) (no special id), special mask: first and last column plus ~10% at random."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (512, 128), generator=generator)
    special = torch.rand(ids.shape, generator=generator) < 0.1
    special[:, 0] = special[:, -1] = True
    return ids, special


def test_mask_tokens_statistics(batch):
    ids, special = batch
    masked, labels = mask_tokens(ids, special, 4, 1000, 0.15, torch.Generator().manual_seed(1))
    assert masked.shape == labels.shape == ids.shape and masked.dtype == labels.dtype == torch.long
    chosen = labels != -100
    assert not (chosen & special).any()
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    to_mask = masked[chosen] == 4
    kept = masked[chosen] == ids[chosen]
    replaced = ~to_mask & ~kept
    n = chosen.sum().item()
    assert abs(to_mask.sum().item() / n - 0.8) < 0.02
    assert abs(replaced.sum().item() / n - 0.1) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.015
    random_ids = masked[chosen][replaced]
    assert random_ids.min() >= 0 and random_ids.max() < 1000
    assert random_ids.min() < 20 and random_ids.max() > 980  # uniform over the whole vocabulary, specials included


def test_mask_tokens_is_deterministic_and_honours_the_probability(batch):
    ids, special = batch
    first = mask_tokens(ids, special, 4, 1000, generator=torch.Generator().manual_seed(5))
    again = mask_tokens(ids, special, 4, 1000, generator=torch.Generator().manual_seed(5))
    other = mask_tokens(ids, special, 4, 1000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    none_ids, none_labels = mask_tokens(ids, special, 4, 1000, 0.0)
    assert torch.equal(none_ids, ids) and (none_labels == -100).all()
    _, all_labels = mask_tokens(ids, special, 4, 1000, 1.0)
    assert torch.equal(all_labels != -100, ~special)


def test_mask_tokens_rejects_bad_input(batch):
    ids, special = batch
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(ids, special[:, :-1], 4, 1000)
    with pytest.raises(TypeError, match="BoolTensor"):
        mask_tokens(ids, special.long(), 4, 1000)
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(ids, special, 4, 1000, 1.5)


# ----- the answer vocabulary and VQA -----


def test_answer_vocabulary_order_and_min_count():
    records = [
        {"question_id": 1, "answers": ["Red", "red.", "blue", "two", "the"]},
        {"question_id": 2, "answers": ["blue", "2", "Blue", "yellow"]},
    ]
    # blue x3, 2 x2 ("two" -> "2"), red x2, yellow x1; "the" normalises to "" and is left out
    assert build_answer_vocabulary(records) == ["blue", "2", "red", "yellow"]
    assert build_answer_vocabulary(records, min_count=2) == ["blue", "2", "red"]
    assert build_answer_vocabulary(records, min_count=3) == ["blue"]
    assert build_answer_vocabulary(list(reversed(records))) == build_answer_vocabulary(records)
    with pytest.raises(ValueError, match="question_id 3.*answers"):
        build_answer_vocabulary(records + [{"question_id": 3, "image_id": 9, "question": "?"}])


def test_vqa_soft_targets(data):
    mapper = CoarseDatasetMapper(make_cfg(data), True, task="vqa", answer_vocabulary=["blue", "green", "red"])
    out = mapper(vqa_record(data, answers=["red", "Red", "red."] + ["blue"] * 7))
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "question_id", "question", "input_ids",
                        "vqa_targets"}
    assert (out["question_id"], out["question"]) == (70, "what colour is the star?")
    assert out["vqa_targets"].dtype == torch.float32
    assert torch.allclose(out["vqa_targets"], torch.tensor([1.0, 0.0, 0.9]))
    tokenizer = load_tokenizer(data["tokenizer"])
    assert out["input_ids"].tolist() == tokenizer("what colour is the star?")["input_ids"]
    # an answer outside the vocabulary only lowers the others' scores
    out = mapper(vqa_record(data, answers=["red"] * 2 + ["purple"] * 8))
    assert torch.allclose(out["vqa_targets"], torch.tensor([0.0, 0.0, 0.6]))


def test_vqa_inference_and_errors(data):
    cfg = make_cfg(data)
    test_mapper = CoarseDatasetMapper(cfg, False, task="vqa", answer_vocabulary=["blue", "red"])
    assert "vqa_targets" not in test_mapper(vqa_record(data, answers=None))
    assert torch.allclose(test_mapper(vqa_record(data))["vqa_targets"], torch.tensor([1.0, 0.9]))
    train_mapper = CoarseDatasetMapper(cfg, True, task="vqa", answer_vocabulary=["blue", "red"])
    with pytest.raises(ValueError, match="image_id 7, question_id 70: 'answers'"):
        train_mapper(vqa_record(data, answers=[]))
    with pytest.raises(ValueError, match="question_id 70: .*'question'"):
        train_mapper(vqa_record(data, question=None))
    with pytest.raises(ValueError, match="answer_vocabulary"):
        CoarseDatasetMapper(cfg, True, task="vqa")
    with pytest.raises(ValueError, match="duplicate.*'red'"):
        CoarseDatasetMapper(cfg, True, task="vqa", answer_vocabulary=["red", "blue", "red"])


def test_vqa_flip_swaps_question_and_answers(data, monkeypatch):
    monkeypatch.setattr(coarse_mapper.random, "random", lambda: 0.0)  # always flip
    mapper = CoarseDatasetMapper(make_cfg(data), True, task="vqa", answer_vocabulary=["left", "right"])
    out = mapper(vqa_record(data, question="is the star on the Left?", answers=["left"] * 10))
    assert out["question"] == "is the star on the Right?"
    assert torch.allclose(out["vqa_targets"], torch.tensor([0.0, 1.0]))


# ----- pre-training / retrieval / captioning records -----


@pytest.mark.parametrize("task", ["pretrain", "retrieval"])
def test_pretrain_training_output(data, task):
    mapper = CoarseDatasetMapper(make_cfg(data, **{"INPUT.COARSE.MLM_PROBABILITY": 0.5}), True, task=task)
    tokenizer = mapper.tokenizer
    record = pair_record(data)
    out = mapper(record)
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "caption", "input_ids", "mlm_input_ids",
                        "mlm_labels"}
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, S, S)
    assert (out["height"], out["width"], out["image_id"], out["file_name"]) == (40, 60, 7, data["noise"])
    assert out["caption"] in CAPTIONS or coarse_mapper.swap_left_right(out["caption"], [])[0] in CAPTIONS
    ids, labels, masked = out["input_ids"], out["mlm_labels"], out["mlm_input_ids"]
    assert ids.dtype == torch.long and ids.tolist() == tokenizer(out["caption"])["input_ids"]
    assert masked.shape == labels.shape == ids.shape
    chosen = labels != -100
    assert not chosen[0] and not chosen[-1]  # <s> and </s> are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert record == pair_record(data)  # the record is not modified


def test_pretrain_picks_each_caption_and_is_deterministic(data):
    mapper = CoarseDatasetMapper(make_cfg(data, **{"INPUT.COARSE.RANDOM_FLIP": False}), True, task="pretrain")
    picked = set()
    for seed in range(30):
        random.seed(seed)
        first = mapper(pair_record(data))
        random.seed(seed)
        again = mapper(pair_record(data))
        for key in ("image", "input_ids", "mlm_input_ids", "mlm_labels"):
            assert torch.equal(first[key], again[key])
        picked.add(first["caption"])
    assert picked == set(CAPTIONS)


def test_truncation_keeps_the_end_token(data):
    mapper = CoarseDatasetMapper(make_cfg(data, **{"INPUT.COARSE.MAX_TEXT_LEN": 5}), True, task="pretrain")
    tokenizer = mapper.tokenizer
    caption = "the red circle left of a blue square and the green star"
    out = mapper(pair_record(data, captions=[caption]))
    full = tokenizer(out["caption"])["input_ids"]
    assert len(full) > 5
    assert out["input_ids"].tolist() == full[:4] + [tokenizer.eos_token_id]
    assert out["mlm_labels"][-1] == -100
    test_out = CoarseDatasetMapper(make_cfg(data, **{"INPUT.COARSE.MAX_TEXT_LEN": 5}), False, task="pretrain")(
        pair_record(data, captions=[caption, "red"])
    )
    assert [len(ids) for ids in test_out["captions_input_ids"]] == [5, 3]


@pytest.mark.parametrize("random_value, flipped", [(0.0, True), (0.49, True), (0.5, False), (0.99, False)])
def test_flip_mirrors_the_image_and_swaps_left_right(data, monkeypatch, random_value, flipped):
    monkeypatch.setattr(coarse_mapper.random, "random", lambda: random_value)
    cfg = make_cfg(data, **{"INPUT.COARSE.CROP_SCALE": (1.0, 1.0)})  # no crop: the training image is the resized one
    record = pair_record(data, captions=["the Left star, left of the LEFT"])
    out = CoarseDatasetMapper(cfg, True, task="caption")(record)
    resized = pil_resized(data["noise"], S)
    if flipped:
        assert out["caption"] == "the Right star, right of the RIGHT"
        assert torch.equal(out["image"], resized.flip(-1))
    else:
        assert out["caption"] == "the Left star, left of the LEFT"
        assert torch.equal(out["image"], resized)


def test_no_flip_without_random_flip(data, monkeypatch):
    monkeypatch.setattr(coarse_mapper.random, "random", lambda: 0.0)
    cfg = make_cfg(data, **{"INPUT.COARSE.CROP_SCALE": (1.0, 1.0), "INPUT.COARSE.RANDOM_FLIP": False})
    out = CoarseDatasetMapper(cfg, True, task="caption")(pair_record(data, captions=["the left star"]))
    assert out["caption"] == "the left star" and torch.equal(out["image"], pil_resized(data["noise"], S))


def test_inference_is_a_plain_resize(data):
    cfg = make_cfg(data)
    out = CoarseDatasetMapper(cfg, False, task="pretrain")(pair_record(data))
    assert torch.equal(out["image"], pil_resized(data["noise"], S))
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "captions", "captions_input_ids"}
    assert out["captions"] == CAPTIONS  # no flip at inference: nothing swapped
    tokenizer = load_tokenizer(data["tokenizer"])
    assert [ids.tolist() for ids in out["captions_input_ids"]] == [tokenizer(c)["input_ids"] for c in CAPTIONS]
    rgb = CoarseDatasetMapper(make_cfg(data, **{"INPUT.FORMAT": "RGB"}), False, task="pretrain")(pair_record(data))
    assert torch.equal(rgb["image"], out["image"].flip(0))


def test_test_image_size_applies_at_inference_only(data):
    cfg = make_cfg(data, **{"INPUT.COARSE.TEST_IMAGE_SIZE": 2 * S})
    out = CoarseDatasetMapper(cfg, False, task="pretrain")(pair_record(data))
    assert torch.equal(out["image"], pil_resized(data["noise"], 2 * S))
    assert CoarseDatasetMapper(cfg, True, task="pretrain")(pair_record(data))["image"].shape == (3, S, S)
    cfg.INPUT.COARSE.TEST_IMAGE_SIZE = -1
    with pytest.raises(ValueError, match="TEST_IMAGE_SIZE"):
        CoarseDatasetMapper(cfg, False, task="pretrain")


def test_training_crop_of_a_solid_image_stays_solid(data):
    mapper = CoarseDatasetMapper(make_cfg(data, **{"INPUT.FORMAT": "RGB"}), True, task="pretrain")
    for seed in range(5):
        random.seed(seed)
        out = mapper({"file_name": data["solid"], "image_id": 3, "captions": ["a red star"]})
        assert (out["height"], out["width"]) == (30, 50)  # read from the image when the record has no size
        assert torch.equal(out["image"], torch.tensor([200, 30, 90], dtype=torch.uint8)[:, None, None].expand(3, S, S))


def test_random_crop_boxes():
    for seed in range(200):
        random.seed(seed)
        x0, y0, w, h = coarse_mapper._random_crop_box(40, 60, (0.3, 0.8))
        assert 0 <= x0 and x0 + w <= 60 and 0 <= y0 and y0 + h <= 40
        assert 0.3 - 0.05 <= w * h / (40 * 60) <= 0.8 + 0.05  # the area fraction, up to rounding to whole pixels
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    random.seed(0)
    first = coarse_mapper._random_crop_box(40, 60, (0.3, 0.8))
    random.seed(0)
    assert coarse_mapper._random_crop_box(40, 60, (0.3, 0.8)) == first
    assert coarse_mapper._random_crop_box(40, 60, (1.0, 1.0)) == (0, 0, 60, 40)
    random.seed(0)
    assert coarse_mapper._random_crop_box(10, 100, (0.9, 1.0)) == (43, 0, 13, 10)  # no draw fits: centred, ratio 4/3


def test_caption_task(data):
    cfg = make_cfg(data)
    out = CoarseDatasetMapper(cfg, True, task="caption")(pair_record(data))
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "caption", "input_ids"}
    test_mapper = CoarseDatasetMapper(cfg, False, task="caption")
    assert test_mapper(pair_record(data))["captions"] == CAPTIONS
    bare = {"file_name": data["noise"], "image_id": 8}
    assert set(test_mapper(bare)) == {"image", "height", "width", "image_id", "file_name"}


def test_bad_records_and_settings_are_named(data):
    cfg = make_cfg(data)
    train_mapper = CoarseDatasetMapper(cfg, True, task="pretrain")
    for captions in (None, []):
        record = {k: v for k, v in pair_record(data, captions=captions).items() if v is not None}
        with pytest.raises(ValueError, match=f"file {data['noise']}, image_id 7: the record has no captions"):
            train_mapper(record)
    with pytest.raises(ValueError, match="image_id 7: caption #1 is not a non-empty str"):
        CoarseDatasetMapper(cfg, False, task="retrieval")(pair_record(data, captions=["a star", "  "]))
    with pytest.raises(ImageError, match="noise.png, image_id 7: the image is 40x60 \\(height x width\\), the record "
                                         "says 41x60$"):
        train_mapper(pair_record(data, height=41))  # the record's size is not the image's
    with pytest.raises(ValueError, match="unknown coarse task 'detection'"):
        CoarseDatasetMapper(cfg, True, task="detection")
    with pytest.raises(ValueError, match="CROP_SCALE"):
        CoarseDatasetMapper(make_cfg(data, **{"INPUT.COARSE.CROP_SCALE": (0.0, 1.0)}), True)
