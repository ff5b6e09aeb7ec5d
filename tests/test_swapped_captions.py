"""ITM negatives by word swaps (INPUT.COARSE.ITM_SWAP_WORDS): the swap itself, the mapper's `swap_input_ids` and the
extra ITM pairs of FiberCoarseModel."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
from fiber_d2.data.swapped_captions import check_swap_groups, swap_one_word
from fiber_d2.data.tokenizer import load_tokenizer
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


def coarse_cfg(tokenizer_dir: str, groups):
    return micro_coarse_cfg(tokenizer_dir, "FiberCoarseModel", overrides={
        "INPUT.COARSE.IMAGE_SIZE": 64, "INPUT.COARSE.ITM_SWAP_WORDS": groups,
    })


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
