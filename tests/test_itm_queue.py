"""ITM hard negatives from earlier pairs (MODEL.FIBER.COARSE.ITM_QUEUE_SIZE): the PairQueue, drawing over batch +
queue, and the drawn pairs encoded again by the current model."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from detectron2.modeling import build_model

from fiber_d2.modeling.backbone import ImageState
from fiber_d2.modeling.coarse.losses import ranking_loss, sample_itm_negatives, sample_ranking_negatives
from fiber_d2.modeling.coarse.pair_queue import PairQueue
from micro_configs import micro_coarse_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(seed: int, image_id, size: int = 64) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.tensor([0]), torch.randint(5, 400, (4 + seed % 3,), generator=generator), torch.tensor([2])])
    return {
        "image": torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8),
        "image_id": image_id,
        "input_ids": ids,
    }


def test_pair_queue_keeps_the_last_pairs_in_order():
    queue = PairQueue(3)
    assert len(queue) == 0 and queue.keys() == []
    images = [torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(4)]
    ids = [torch.tensor([0, i, 2]) for i in range(4)]
    embeddings = torch.eye(4)
    queue.push(images[:2], ids[:2], ["a", "b"], embeddings[:2], -embeddings[:2])
    queue.push(images[2:], ids[2:], ["c", "d"], embeddings[2:], -embeddings[2:])
    assert len(queue) == 3 and queue.keys() == ["b", "c", "d"]  # "a", the oldest, left
    image_embedding, text_embedding = queue.embeddings()
    assert torch.equal(image_embedding, embeddings[1:]) and torch.equal(text_embedding, -embeddings[1:])
    assert [int(image[0, 0, 0]) for image in queue.images([2, 0])] == [3, 1]
    assert [ids.tolist() for ids in queue.input_ids([1])] == [[0, 2, 2]]
    disabled = PairQueue(0)
    disabled.push(images, ids, list("abcd"), embeddings, embeddings)
    assert len(disabled) == 0 and disabled.keys() == []
    with pytest.raises(ValueError, match="ITM_QUEUE_SIZE"):
        PairQueue(-1)


def test_negatives_come_from_the_queue_columns_but_never_the_same_image():
    # 2 batch samples (images 0, 1), 3 queued pairs (images 1, 5, 0): columns 0-1 the batch, 2-4 the queue.
    column_ids = torch.tensor([0, 1, 1, 5, 0])
    i2t = torch.tensor([[0.0, 0.0, 0.0, 0.0, 40.0], [0.0, 0.0, 0.0, 40.0, 0.0]])  # the hardest: same image / col 3
    t2i = torch.tensor([[0.0, 0.0, 40.0, 0.0, 0.0], [0.0, 0.0, 40.0, 0.0, 0.0]])
    negative_texts, negative_images = sample_itm_negatives(i2t, t2i, column_ids[:2], None, column_ids)
    assert negative_texts[1] == 3 and negative_images[0] == 2  # the queue's hardest of another image
    assert negative_texts[0] in (1, 2, 3)  # column 4 is image 0's own caption: uniform over the others (e^-40)
    assert negative_images[1] in (0, 3, 4)  # column 2 is image 1: never drawn for text 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        texts, images = sample_itm_negatives(torch.randn(2, 5), torch.randn(2, 5), column_ids[:2], generator, column_ids)
        assert (column_ids[texts] != column_ids[:2]).all() and (column_ids[images] != column_ids[:2]).all()


def test_image_states_concatenate_along_the_batch():
    state = ImageState(torch.arange(12.0).view(2, 3, 2), (1, 3), 1, 0, {"res2": torch.zeros(2, 2, 1, 3)})
    other = ImageState(torch.ones(1, 3, 2), (1, 3), 1, 0, {"res2": torch.ones(1, 2, 1, 3)})
    both = ImageState.cat([state, other])
    assert torch.equal(both.tokens, torch.cat([state.tokens, other.tokens])) and both.outputs["res2"].shape[0] == 3
    with pytest.raises(ValueError, match="cannot be batched"):
        ImageState.cat([state, ImageState(torch.ones(1, 4, 2), (2, 2), 1, 0, {})])


def test_drawn_queue_pairs_are_encoded_again_by_the_current_model(tokenizer_dir, monkeypatch):
    torch.manual_seed(0)
    overrides = {"MODEL.FIBER.COARSE.ITM_QUEUE_SIZE": 4, "MODEL.FIBER.COARSE.OBJECTIVES": ("itc", "itm")}
    cfg = micro_coarse_cfg(tokenizer_dir, "FiberCoarseModel", overrides=overrides)
    model = build_model(cfg)
    for name, parameter in model.named_parameters():
        if name.endswith("alpha"):
            parameter.data.fill_(0.5)
    first = [pair(0, "x"), pair(1, "y")]
    second = [pair(2, "z"), pair(3, "w")]
    model(first)
    assert model.itm_queue.keys() == ["x", "y"]
    # Make queued image 'x' the hardest candidate of both texts and queued caption 'y' that of both images.
    with torch.no_grad():
        images = model.image_embeddings(model.preprocess_images(second))
        texts = model.text_embeddings(*model.pad_texts([x["input_ids"] for x in second]))
    assert texts[0] @ texts[1] > -0.5 and images[0] @ images[1] > -0.5
    x, y = model.itm_queue.pairs
    model.itm_queue.pairs[0] = dataclasses.replace(x, image_embedding=100 * texts.sum(0))
    model.itm_queue.pairs[1] = dataclasses.replace(y, text_embedding=100 * images.sum(0))
    seen = {}

    def capture(image_lower, text_lower, image_index, text_index):
        seen.update(image_lower=image_lower, text_lower=text_lower, image_index=image_index, text_index=text_index)
        return torch.zeros(len(image_index), 2, requires_grad=True)

    monkeypatch.setattr(model, "_pair_logits", capture)
    model(second)
    assert model.itm_queue.keys() == ["x", "y", "z", "w"]
    # Rows 0-1 the batch, row 2 the queued pair drawn: positives, (image, negative text), (negative image, text).
    assert seen["image_index"].tolist() == [0, 1, 0, 1, 2, 2]
    assert seen["text_index"].tolist() == [0, 1, 2, 2, 0, 1]
    with torch.no_grad():
        fresh_image = model.backbone.encode_image_lower(model.preprocess_images(first[:1]))
        fresh_text = model.backbone.encode_text_lower(*model.pad_texts([first[1]["input_ids"]]))
    assert len(seen["image_lower"].tokens) == 3
    assert torch.allclose(seen["image_lower"].tokens[2], fresh_image.tokens[0], atol=1e-5)
    assert torch.allclose(seen["image_lower"].tokens[:2], model.backbone.encode_image_lower(
        model.preprocess_images(second)).tokens, atol=1e-5)
    length = len(first[1]["input_ids"])
    assert seen["text_lower"].attention_mask[2].sum() == length
    assert torch.allclose(seen["text_lower"].hidden[2, :length], fresh_text.hidden[0], atol=1e-5)


def test_ranking_negatives_are_distinct_other_images_and_follow_the_similarity():
    column_ids = torch.tensor([0, 1, 2, 2, 3, 0])  # batch images 0, 1; queued pairs of images 2, 2, 3, 0
    t2i = torch.tensor([[0.0, 0.0, 30.0, 0.0, 29.0, 50.0], [0.0, 50.0, 0.0, 30.0, 29.0, 0.0]])
    drawn = sample_ranking_negatives(t2i, column_ids[:2], column_ids, 2)
    assert sorted(drawn[0].tolist()) == [2, 4] and sorted(drawn[1].tolist()) == [3, 4]  # the two hardest others
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        drawn = sample_ranking_negatives(torch.randn(2, 6), column_ids[:2], column_ids, 4, generator)
        assert all(len(set(row)) == 4 for row in drawn.tolist())
        assert (column_ids[drawn] != column_ids[:2, None]).all()
    with pytest.raises(ValueError, match="ITM_RANK_NEGATIVES 5: samples \\[0\\]"):
        sample_ranking_negatives(t2i, column_ids[:2], column_ids, 5)


def test_ranking_loss_is_the_cross_entropy_of_the_match_log_odds():
    logits = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]])  # log-odds 2, -1, 0; the image is column 0
    expected = -(2.0 - torch.logsumexp(torch.tensor([2.0, -1.0, 0.0]), 0))
    assert ranking_loss(logits).item() == pytest.approx(expected.item(), abs=1e-6)


def test_the_ranking_pairs_each_text_with_its_image_and_k_negatives(tokenizer_dir, monkeypatch):
    torch.manual_seed(0)
    overrides = {
        "MODEL.FIBER.COARSE.ITM_QUEUE_SIZE": 4,
        "MODEL.FIBER.COARSE.ITM_RANK_NEGATIVES": 3,
        "MODEL.FIBER.COARSE.OBJECTIVES": ("itc", "itm"),
    }
    model = build_model(micro_coarse_cfg(tokenizer_dir, "FiberCoarseModel", overrides=overrides))
    first = [pair(i, f"a{i}") for i in range(3)]
    second = [pair(i + 3, f"b{i}") for i in range(3)]
    with pytest.raises(ValueError, match="ITM_RANK_NEGATIVES 3"):
        model(first)  # 2 other images in the batch and none queued
    model.itm_rank_negatives = 0
    model(first)  # queues the batch
    model.itm_rank_negatives = 3
    seen = {}
    real = model._pair_logits

    def capture(image_lower, text_lower, image_index, text_index):
        seen.update(image_index=image_index.tolist(), text_index=text_index.tolist(), rows=len(image_lower.tokens))
        return real(image_lower, text_lower, image_index, text_index)

    monkeypatch.setattr(model, "_pair_logits", capture)
    losses = model(second)
    assert set(losses) == {"loss_itc", "loss_itm", "loss_itm_rank"} and losses["loss_itm_rank"].requires_grad
    image_index, text_index = seen["image_index"], seen["text_index"]
    assert len(image_index) == 9 + 3 * 2 and text_index[9:] == [0, 0, 1, 1, 2, 2]
    for text in range(3):  # the ITM negative image and the 2 more: 3 distinct images, none the text's own
        negatives = [image_index[6 + text]] + image_index[9 + 2 * text : 11 + 2 * text]
        assert len(set(negatives)) == 3 and text not in negatives
    assert seen["rows"] == 3 + len({i for i in image_index if i >= 3})  # queued images drawn: encoded once each
