"""Negatives by word swaps (INPUT.COARSE.ITM_SWAP_WORDS) and order swaps (INPUT.COARSE.ITM_SWAP_ORDER): the swaps,
the mapper's `swap_input_ids`, the extra ITM pairs of FiberCoarseModel and, with
MODEL.FIBER.COARSE.ITC_SWAP_NEGATIVES, its extra ITC columns."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
from fiber_d2.data.swapped_captions import check_order_relations, check_swap_groups, swap_one_word, swap_phrase_order
from fiber_d2.data.tokenizer import load_tokenizer
from fiber_d2.modeling.coarse.losses import itc_loss
from micro_configs import micro_coarse_cfg

GROUPS = [["red", "orange", "blue"], ["circle", "square", "star"]]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_group_word_is_swapped_for_another_of_its_group():
    seen = set()
    for seed in range(40):
        out = swap_one_word("a Red circle left of a star .", GROUPS, random.Random(seed))
        words, original = out.lower().split(), "a red circle left of a star .".split()
        changed = [(a, b) for a, b in zip(original, words) if a != b and a not in ("a", "an")]  # "an orange"
        assert len(words) == len(original) and len(changed) == 1
        old, new = changed[0]
        assert any(old in g and new in g for g in GROUPS) and old != new
        seen.add(changed[0])
    assert {("red", "orange"), ("red", "blue"), ("circle", "square"), ("star", "circle")} <= seen


def test_the_article_follows_the_new_word_and_captions_without_group_words_give_none():
    outs = {swap_one_word("An orange cross and a red cross", [["orange", "red"]], random.Random(s)) for s in range(20)}
    assert outs == {"A red cross and a red cross", "An orange cross and an orange cross"}
    assert swap_one_word("a green cross", GROUPS, random.Random(0)) is None
    assert swap_one_word("reddish squares", GROUPS, random.Random(0)) is None  # whole words only


def test_bad_groups_are_refused():
    assert check_swap_groups([["Red", "blue"]]) == [("red", "blue")]
    with pytest.raises(ValueError, match="group #0 needs two or more distinct words"):
        check_swap_groups([["red", "red"]])
    with pytest.raises(ValueError, match="'red' is in groups #0 and #1"):
        check_swap_groups([["red", "blue"], ["red", "green"]])


def coarse_cfg(tokenizer_dir: str, groups, relations=()):
    return micro_coarse_cfg(tokenizer_dir, "FiberCoarseModel", overrides={
        "INPUT.COARSE.IMAGE_SIZE": 64, "INPUT.COARSE.ITM_SWAP_WORDS": groups,
        "INPUT.COARSE.ITM_SWAP_ORDER": list(relations),
    })


RELATIONS = check_order_relations(["left of", "To the  left of", "above"])


def test_order_swap_exchanges_the_phrases_around_a_relation_with_their_articles():
    assert RELATIONS == ["to the left of", "left of", "above"]
    rng = random.Random(0)
    assert swap_phrase_order("A red circle left of an orange star .", RELATIONS, rng) == (
        "An orange star left of a red circle .")
    assert swap_phrase_order("there is a hexagon to the left of three white crosses", RELATIONS, rng) == (
        "there is three white crosses to the left of a hexagon")
    assert swap_phrase_order("his star left of some crosses", RELATIONS, rng) == "some crosses left of his star"
    # The same words, so no word count can tell the negative from the positive.
    caption = "a small red circle ABOVE a blue star and two crosses ."
    swapped = swap_phrase_order(caption, RELATIONS, rng)
    assert swapped == "a blue star ABOVE a small red circle and two crosses ."
    assert sorted(swapped.lower().split()) == sorted(caption.lower().split())
    # Either relation of a caption with two, each with its own phrases.
    outs = {swap_phrase_order("a star left of a cross above a circle", RELATIONS, random.Random(s)) for s in range(20)}
    assert outs == {"a cross left of a star above a circle", "a star left of a circle above a cross"}
    for caption in ("a star next to a circle", "left of a circle", "a star, left of a circle", "a star leftover"):
        assert swap_phrase_order(caption, RELATIONS, rng) is None
    for bad in (["above", "ABOVE"], ["", "above"]):
        with pytest.raises(ValueError, match="ITM_SWAP_ORDER"):
            check_order_relations(bad)


def test_the_training_mapper_swaps_words_or_order_at_equal_odds(tokenizer_dir, tmp_path):
    path = tmp_path / "1.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(path)
    record = {"file_name": str(path), "height": 40, "width": 50, "image_id": 1,
              "captions": ["a red circle above a star"]}
    tokenizer = load_tokenizer(tokenizer_dir)
    mapper = CoarseDatasetMapper(coarse_cfg(tokenizer_dir, GROUPS, ["above"]), is_train=True, task="pretrain")
    random.seed(0)
    outs = [tokenizer.decode(mapper(record)["swap_input_ids"], skip_special_tokens=True) for _ in range(200)]
    order = sum(out == "a star above a red circle" for out in outs)
    assert 70 <= order <= 130  # binomial(200, 0.5): about 7 standard deviations either side
    words = {out for out in outs if out != "a star above a red circle"}
    assert words <= {"a red circle above a square", "a red circle above a circle", "an orange circle above a star",
                     "a blue circle above a star", "a red square above a star", "a red star above a star"}
    assert len(words) >= 4
    mapper = CoarseDatasetMapper(coarse_cfg(tokenizer_dir, [], ["above"]), is_train=True, task="pretrain")
    assert tokenizer.decode(mapper(record)["swap_input_ids"], skip_special_tokens=True) == "a star above a red circle"
    record["captions"] = ["a star"]
    assert "swap_input_ids" not in mapper(record)


def test_the_training_mapper_adds_the_swapped_caption_only_when_asked(tokenizer_dir, tmp_path):
    path = tmp_path / "1.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(path)
    record = {"file_name": str(path), "height": 40, "width": 50, "image_id": 1, "captions": ["a red circle"]}
    tokenizer = load_tokenizer(tokenizer_dir)
    random.seed(0)
    out = CoarseDatasetMapper(coarse_cfg(tokenizer_dir, GROUPS), is_train=True, task="pretrain")(record)
    swapped = tokenizer.decode(out["swap_input_ids"], skip_special_tokens=True)
    assert swapped in {"an orange circle", "a blue circle", "a red square", "a red star"}
    assert "swap_input_ids" not in CoarseDatasetMapper(coarse_cfg(tokenizer_dir, []), is_train=True)(record)
    inference = CoarseDatasetMapper(coarse_cfg(tokenizer_dir, GROUPS), is_train=False, task="retrieval")(record)
    assert "swap_input_ids" not in inference
    record["captions"] = ["a green cross"]
    assert "swap_input_ids" not in CoarseDatasetMapper(coarse_cfg(tokenizer_dir, GROUPS), is_train=True)(record)


def test_itm_scores_each_swapped_caption_against_its_own_image_as_a_negative(tokenizer_dir, monkeypatch):
    torch.manual_seed(0)
    model = build_model(coarse_cfg(tokenizer_dir, GROUPS))
    tokenizer = load_tokenizer(tokenizer_dir)

    def ids(text):
        return torch.tensor(tokenizer(text)["input_ids"])

    batch = []
    for i, (caption, swap) in enumerate([("a red circle", "a red star"), ("a blue square", None),
                                         ("a green star left of a square", "a green circle left of a square")]):
        x = {"image": torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(i), dtype=torch.uint8),
             "image_id": i, "input_ids": ids(caption)}
        if swap:
            x["swap_input_ids"] = ids(swap)
        batch.append(x)
    pairs = {}
    original = model._pair_logits

    def spy(image_lower, text_lower, image_index, text_index):
        logits = original(image_lower, text_lower, image_index, text_index)
        pairs.update(images=image_index.tolist(), texts=text_index.tolist(), ids=text_lower, logits=logits)
        return logits

    monkeypatch.setattr(model, "_pair_logits", spy)
    model.objectives = ("itc", "itm")
    loss = model(batch)["loss_itm"]
    assert len(pairs["images"]) == 3 * 3 + 2
    assert pairs["images"][9:] == [0, 2] and pairs["texts"][9:] == [3, 4]  # the swapped captions follow the batch's
    labels = torch.tensor([1] * 3 + [0] * 8)
    torch.testing.assert_close(loss, F.cross_entropy(pairs["logits"].float(), labels))
    del batch[0]["swap_input_ids"], batch[2]["swap_input_ids"]
    model(batch)
    assert len(pairs["images"]) == 9  # without swaps: FIBER's 3B pairs


def test_itc_loss_scores_each_image_against_the_extra_negative_texts_too():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negative = torch.tensor([[0.6, 0.8]])
    loss, i2t, t2i = itc_loss(image, text, torch.tensor(1.0), negative_text=negative)
    torch.testing.assert_close(i2t, torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]]))
    assert t2i.shape == (2, 2)  # the negatives have no image: text-to-image is unchanged
    i2t_loss = (-math.log(math.e / (math.e + 1 + math.exp(0.6))) - math.log(math.e / (math.e + 1 + math.exp(0.8)))) / 2
    t2i_loss = -math.log(math.e / (math.e + 1))
    assert loss.item() == pytest.approx((i2t_loss + t2i_loss) / 2, abs=1e-6)


@pytest.mark.parametrize("itc_swaps", [False, True])
def test_itc_adds_the_swapped_captions_as_image_to_text_negatives_only_when_asked(tokenizer_dir, itc_swaps):
    cfg = coarse_cfg(tokenizer_dir, GROUPS)
    cfg.MODEL.FIBER.COARSE.ITC_SWAP_NEGATIVES = itc_swaps
    cfg.MODEL.FIBER.COARSE.OBJECTIVES = ("itc",)
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():  # the training path, without dropout or drop path: values are reproducible
        module.train(module is model)
    tokenizer = load_tokenizer(tokenizer_dir)
    captions = [("a red circle", "a red star"), ("a blue square", None), ("a green star", "a green circle")]
    batch = [
        {"image": torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(i), dtype=torch.uint8),
         "image_id": i, "input_ids": torch.tensor(tokenizer(caption)["input_ids"])}
        for i, (caption, _) in enumerate(captions)
    ]
    for x, (_, swap) in zip(batch, captions):
        if swap:
            x["swap_input_ids"] = torch.tensor(tokenizer(swap)["input_ids"])
    loss = model(batch)["loss_itc"]
    with torch.no_grad():
        images = model.image_embeddings(model.preprocess_images(batch))
        texts = model.text_embeddings(*model.pad_texts([x["input_ids"] for x in batch]))
        swaps = model.text_embeddings(*model.pad_texts([batch[0]["swap_input_ids"], batch[2]["swap_input_ids"]]))
    columns = torch.cat([texts, swaps]) if itc_swaps else texts
    temperature = model.heads.clamped_temperature().detach()
    targets = torch.arange(3)
    expected = (F.cross_entropy(images @ columns.T / temperature, targets)
                + F.cross_entropy(texts @ images.T / temperature, targets)) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
