"""Chunked inference reusing the text-independent lower backbone (MODEL.FIBER.PROMPT.REUSE_LOWER): same detections as
the whole model per chunk, the per-prompt text states cached across images and never served stale."""
from __future__ import annotations

import pytest
import torch
from test_grounding_detector import image, micro_model, open_gates

from fiber_d2.data.prompts import vocabulary_chunks
from fiber_d2.data.tokenizer import load_tokenizer
from fiber_d2.modeling.backbone.text_encoder import pad_text_states
from fiber_d2.modeling.grounding.chunked_inference import TextStateCache

# Chunks of 3 names: three prompts of different lengths.
VOCABULARY = ["red circle", "blue square left of the green star", "green star", "white triangle", "the black cross",
              "yellow hexagon", "purple star"]
# Every candidate is scored (threshold 0); sharper alignment logits, so that the text moves the scores.
TEST_SETTINGS = {"MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0, "MODEL.FIBER.HEAD.LOG_SCALE_INIT": -2.0}


def reuse_model(tokenizer_dir: str, seed: int = 0, **overrides):
    """A micro detector in eval mode with the fusion gates open, so that the prompt changes the image features."""
    model = micro_model(tokenizer_dir, seed=seed, **{**TEST_SETTINGS, **overrides})
    open_gates(model)
    return model.eval()


def batch_inputs(tokenizer_dir: str, seeds=(0, 1)) -> list[dict]:
    """Two images of different sizes; the first with 7 names in chunks of 3 names (3 prompts of different lengths),
    the second with the first 4 names (2 prompts, the first one shared with the first image)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    first = vocabulary_chunks(VOCABULARY, tokenizer, 256, 3, ". ")
    second = vocabulary_chunks(VOCABULARY[:4], tokenizer, 256, 3, ". ")
    assert [len(c.label_ids) for c in first] == [3, 3, 1] and [len(c.label_ids) for c in second] == [3, 1]
    assert len({len(c.input_ids) for c in first}) == 3  # three different prompt lengths
    return [
        {"image": image(seeds[0], 96, 128), "height": 96, "width": 128, "prompts": first},
        {"image": image(seeds[1], 70, 100), "height": 70, "width": 100, "prompts": second},
    ]


def assert_same_detections(got, expected) -> None:
    assert len(got) == len(expected) > 0
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3, rtol=1e-4)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def run(model, inputs):
    return [output["instances"] for output in model(inputs)]


@pytest.mark.parametrize("chunk_batch", [1, 4])
def test_reuse_equals_the_whole_model_per_chunk(tokenizer_dir, chunk_batch):
    naive = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.REUSE_LOWER": False})
    reuse = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.CHUNK_BATCH": chunk_batch})
    reuse.load_state_dict(naive.state_dict())
    assert not naive.reuse_lower and reuse.reuse_lower and reuse.chunk_batch == chunk_batch
    inputs = batch_inputs(tokenizer_dir)
    expected, got = run(naive, inputs), run(reuse, inputs)
    assert [r.image_size for r in got] == [(96, 128), (70, 100)]
    for a, b in zip(got, expected):
        assert_same_detections(a, b)
    # All 7 labels of the first image and the 4 of the second are found (score threshold 0).
    assert set(got[0].pred_classes.tolist()) == set(range(7)) and set(got[1].pred_classes.tolist()) == set(range(4))
    # Per chunk, before merging: the same detections too.
    images = reuse.preprocess_image(inputs)
    prompts = [x["prompts"] for x in inputs]
    with torch.no_grad():
        per_chunk_naive = naive.detect_chunk_by_chunk(images, prompts)
        per_chunk_reuse = reuse.detect_reusing_lower(images, prompts)
    for chunks_a, chunks_b in zip(per_chunk_reuse, per_chunk_naive):
        assert len(chunks_a) == len(chunks_b)
        for a, b in zip(chunks_a, chunks_b):
            assert_same_detections(a, b)


def test_text_lower_part_runs_once_per_prompt_across_images_and_calls(tokenizer_dir, monkeypatch):
    model = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.CHUNK_BATCH": 2})
    naive = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.REUSE_LOWER": False})
    naive.load_state_dict(model.state_dict())
    backbone = model.backbone.bottom_up
    text_calls, image_calls = [], []
    encode_text_lower, encode_image_lower = backbone.encode_text_lower, backbone.encode_image_lower
    monkeypatch.setattr(backbone, "encode_text_lower", lambda ids, mask: text_calls.append(ids.shape) or
                        encode_text_lower(ids, mask))
    monkeypatch.setattr(backbone, "encode_image_lower", lambda images: image_calls.append(images.shape) or
                        encode_image_lower(images))

    inputs = batch_inputs(tokenizer_dir)
    run(model, inputs)
    # 4 distinct prompts over the 5 chunks of the two images (the second image's first chunk is the first image's).
    assert len(text_calls) == len(model.text_cache) == 4 and all(shape[0] == 1 for shape in text_calls)
    # once per image: the two images have one padded size, so they run as one batch
    assert [tuple(shape) for shape in image_calls] == [(2, 3, 96, 128)]

    again = batch_inputs(tokenizer_dir, seeds=(5, 6))  # other images, the same prompts
    got = run(model, again)
    assert len(text_calls) == 4 and [tuple(shape) for shape in image_calls[1:]] == [(2, 3, 96, 128)]  # no text
    for a, b in zip(got, run(naive, again)):
        assert_same_detections(a, b)


def test_the_cache_is_bounded_and_the_results_do_not_depend_on_it(tokenizer_dir):
    cached = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE": 2})
    uncached = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE": 0})
    uncached.load_state_dict(cached.state_dict())
    inputs = batch_inputs(tokenizer_dir)
    for a, b in zip(run(cached, inputs), run(uncached, inputs)):
        assert_same_detections(a, b)
    assert len(cached.text_cache) == 2 and len(uncached.text_cache) == 0

    cache = TextStateCache(2)
    computed = []
    for key in ["a", "b", "a", "c", "b", "a"]:
        cache.get(key, lambda key=key: computed.append(key) or key)
    # LRU: "a" was used after "b", so "c" evicts "b"; then "b" evicts "a".
    assert computed == ["a", "b", "c", "b", "a"] and len(cache) == 2
    with pytest.raises(ValueError, match=">= 0"):
        TextStateCache(-1)


def perturb_text_lower(model, seed: int) -> None:
    """Change the weights of the text layers below the fused ones in place (as an optimizer step would)."""
    generator = torch.Generator().manual_seed(seed)
    text = model.backbone.bottom_up.text
    with torch.no_grad():
        for layer in text.model.encoder.layer[: text.num_layers - text.num_fused]:
            for parameter in layer.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def test_load_state_dict_and_train_empty_the_cache_so_no_stale_state_is_served(tokenizer_dir):
    model = reuse_model(tokenizer_dir)
    naive = reuse_model(tokenizer_dir, seed=7, **{"MODEL.FIBER.PROMPT.REUSE_LOWER": False})
    inputs = batch_inputs(tokenizer_dir)
    before = run(model, inputs)
    assert len(model.text_cache) == 4

    # New weights through load_state_dict (what Detectron2's checkpointer calls).
    model.load_state_dict(naive.state_dict())
    assert len(model.text_cache) == 0
    after = run(model, inputs)
    for a, b, old in zip(after, run(naive, inputs), before):
        assert_same_detections(a, b)
        assert not torch.allclose(a.scores[:10], old.scores[:10], atol=1e-3)  # the weights matter

    # An in-place weight change between train() and eval(), like an optimizer step in training.
    model.train()
    assert len(model.text_cache) == 0
    perturb_text_lower(model, seed=1)
    model.eval()
    naive.load_state_dict(model.state_dict())
    for a, b in zip(run(model, inputs), run(naive, inputs)):
        assert_same_detections(a, b)

    # The same kind of change with the cache left filled gives other detections: the checks above see stale states.
    perturb_text_lower(model, seed=2)
    naive.load_state_dict(model.state_dict())
    stale, fresh = run(model, inputs), run(naive, inputs)
    assert not torch.allclose(stale[0].scores[:10], fresh[0].scores[:10], atol=1e-3)


def test_padded_text_states_equal_padding_the_prompts_before_the_encoder(tokenizer_dir):
    model = reuse_model(tokenizer_dir)
    backbone = model.backbone.bottom_up
    prompts = [chunk.input_ids for chunk in batch_inputs(tokenizer_dir)[0]["prompts"]]
    ids, mask = model.pad_prompts(prompts)
    with torch.no_grad():
        together = backbone.encode_text_lower(ids, mask.long())
        padded = pad_text_states([model.text_lower(p) for p in prompts])
    assert padded.layer == together.layer and padded.hidden.shape == together.hidden.shape
    assert torch.equal(padded.attention_mask, together.attention_mask)
    assert torch.equal(padded.bias, together.bias)
    torch.testing.assert_close(padded.hidden[mask], together.hidden[mask], atol=1e-5, rtol=1e-5)
    assert (padded.hidden[~mask] == 0).all()

    causal = backbone.text.embed(ids[:1], mask[:1].long(), causal=True)
    with pytest.raises(ValueError, match="causal"):
        pad_text_states([causal])
    with pytest.raises(ValueError, match="different layers"):
        pad_text_states([causal, padded])


def test_chunk_batch_must_be_positive(tokenizer_dir):
    with pytest.raises(ValueError, match="CHUNK_BATCH"):
        micro_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.CHUNK_BATCH": 0})


@pytest.mark.parametrize("chunk_batch", [1, 8])
def test_records_of_one_image_share_its_lower_part_and_each_record_gets_what_it_gets_alone(
    tokenizer_dir, monkeypatch, chunk_batch
):
    """A test batch as TEST.IMS_PER_BATCH gives it: two records of image A (other prompts) around a record of a
    smaller image B. A's lower part runs once, B at its own padded size (64 x 96, not A's 128 x 160), and each record's
    detections equal those of the whole model run on that record alone."""
    model = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.CHUNK_BATCH": chunk_batch})
    naive = reuse_model(tokenizer_dir, **{"MODEL.FIBER.PROMPT.REUSE_LOWER": False})
    naive.load_state_dict(model.state_dict())
    tokenizer = load_tokenizer(tokenizer_dir)
    first, second = vocabulary_chunks(VOCABULARY, tokenizer, 256, 4, ". ")  # 4 + 3 names
    pixels_a = image(3, 120, 150)
    inputs = [
        {"image": pixels_a, "height": 120, "width": 150, "prompts": [first]},
        {"image": image(4, 50, 70), "height": 50, "width": 70, "prompts": [second, first]},
        {"image": pixels_a.clone(), "height": 120, "width": 150, "prompts": [second]},
    ]
    image_calls = []
    encode_image_lower = model.backbone.bottom_up.encode_image_lower
    monkeypatch.setattr(model.backbone.bottom_up, "encode_image_lower", lambda images: image_calls.append(
        tuple(images.shape)) or encode_image_lower(images))
    got = run(model, inputs)
    assert image_calls == [(1, 3, 128, 160), (1, 3, 64, 96)]
    for record, detections in zip(inputs, got):
        alone = run(naive, [record])[0]
        assert_same_detections(detections, alone)
    # The batch padding (B padded to 128 x 160 with A) would have changed B's detections: the check above can fail.
    padded = run(naive, inputs)[1]
    assert not torch.allclose(padded.scores[:10], got[1].scores[:10], atol=1e-3)
