"""The swap probe (fiber_d2/evaluation/swap_probe.py): its counts, and its balanced score of 50 for a model that prefers
a word without looking at the image, on a stand-in model whose scores are known."""
from __future__ import annotations

import pytest
import torch

from fiber_d2.evaluation.swap_probe import caption_swaps, swap_probe

VOCABULARY = {w: i + 1 for i, w in enumerate("a an red blue star circle above below left right of".split())}
RELATIONS = ["above", "below", "left of", "right of"]


def encode(text: str) -> torch.Tensor:
    return torch.tensor([VOCABULARY[w] for w in text.split()])


class WordPreferringModel(torch.nn.Module):
    """ITM: probability 0.9 for a text with "above", 0.1 without, whatever the image. ITC: a text's similarity is the
    position of "red" in it (0 without), so that a red object mentioned later scores higher."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def preprocess_images(self, inputs):
        self.modes.append(self.training)
        return torch.stack([x["image"] for x in inputs]).float()

    def image_embeddings(self, images):
        return torch.ones(len(images), 1)

    def pad_texts(self, sequences):
        length = max(map(len, sequences))
        ids = torch.zeros(len(sequences), length, dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = s
        return ids, (ids > 0).long()

    def match_probability(self, images, input_ids, mask):
        assert len(images) == len(input_ids)
        return torch.where((input_ids == VOCABULARY["above"]).any(1), 0.9, 0.1)

    def text_embeddings(self, input_ids, mask):
        red = input_ids == VOCABULARY["red"]
        return (red.float() * torch.arange(input_ids.shape[1])).sum(1, keepdim=True)


def test_caption_swaps_lists_word_and_order_swaps():
    assert caption_swaps("a red star above a circle", [["above", "below"], ["red", "blue"]], RELATIONS) == [
        ("red", "a blue star above a circle"),
        ("above", "a red star below a circle"),
        ("order: above", "a circle above a red star"),
    ]


def test_a_model_that_prefers_a_word_scores_100_and_0_and_50_balanced():
    records = [{"captions": ["a red star above a circle", "a circle below a red star"]},
               {"captions": ["a blue star above a red circle", "a star"]},
               {"captions": ["a circle"]}]
    for record in records:
        record["image"] = torch.zeros(3, 2, 2)
    model = WordPreferringModel().train()
    results = swap_probe(model, records, lambda r: {"image": r["image"]}, encode, [["above", "below"]], RELATIONS)
    assert model.modes == [False, False] and model.training  # two images with swaps, in eval mode, mode restored
    assert results["above"] == {"pairs": 2, "itm": 100.0, "itc": 0.0}  # ITC ties: "red" never moves in a word swap
    assert results["below"] == {"pairs": 1, "itm": 0.0, "itc": 0.0}
    assert results["balanced: above/below"] == {"pairs": 3, "itm": 50.0, "itc": 0.0}
    # Order swaps keep the words: ITM cannot tell them apart (ties count as losses); ITC wins where "red" moves back.
    assert results["order: above"] == {"pairs": 2, "itm": 0.0, "itc": 50.0}
    assert results["order: below"] == {"pairs": 1, "itm": 0.0, "itc": 100.0}
    assert results["order"]["pairs"] == 3 and results["order"]["itc"] == pytest.approx(200 / 3)
    assert set(results) == {"above", "below", "balanced: above/below", "order", "order: above", "order: below"}
