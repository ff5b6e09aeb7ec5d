"""FiberVQAModel and FiberCaptionModel: losses on hand-made values, one-batch overfits on a micro config, decoding
(greedy, beam search, stopping, the causal mask), answer vocabularies and the packaged configs."""
from __future__ import annotations

import json
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from fiber_d2.config import add_fiber_config
from fiber_d2.data.tokenizer import train_roberta_bpe_tokenizer
from fiber_d2.data.vqa_vocabulary import answer_vocabulary_from_config
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling import FiberCaptionModel, FiberCoarseModel, FiberVQAModel, FusionMode
from fiber_d2.modeling.coarse.caption_model import caption_loss
from fiber_d2.modeling.coarse.vqa_model import vqa_loss
from fiber_d2.solver import build_optimizer

ANSWERS = ["yes", "no", "2", "red", "blue"]
CAPTIONS = ["a red circle left of a blue star", "a green square"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    colours = ["red", "blue", "green", "white", "black", "yellow"]
    shapes = ["circle", "square", "star", "triangle", "cross", "hexagon"]
    texts = [f"a {c} {s} left of a {s}" for c in colours for s in shapes] * 3
    return str(train_roberta_bpe_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300))


def micro_cfg(tokenizer_dir: str, meta_architecture: str):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 300
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.0
    return cfg


def image(seed: int, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def open_gates(model, value: float = 0.5) -> None:
    """Fusion gates start at 0 (no cross-attention at all); open them so the text sees the image from the start."""
    for name, parameter in model.named_parameters():
        if name.endswith("alpha"):
            parameter.data.fill_(value)


def assert_every_trainable_parameter_gets_a_gradient(model) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient (DDP would fail): {missing[:5]}"


# ----- VQA -----


def test_vqa_loss_is_mean_bce_times_the_number_of_answers():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    targets = torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.6]])

    def bce(x: float, y: float) -> float:  # -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]
        return math.log1p(math.exp(x)) - x * y

    total = sum(bce(x, y) for row_x, row_y in zip(logits.tolist(), targets.tolist()) for x, y in zip(row_x, row_y))
    assert vqa_loss(logits, targets).item() == pytest.approx(total / 6 * 3, abs=1e-6)
    with pytest.raises(ValueError, match="batch, answers"):
        vqa_loss(logits, targets[:, :2])


def vqa_batch(targets: list[dict[str, float]]) -> list[dict]:
    batch = []
    for i, scores in enumerate(targets):
        ids = torch.cat([torch.tensor([0]), torch.randint(5, 300, (5,), generator=torch.Generator().manual_seed(i)),
                         torch.tensor([2])])
        vqa_targets = torch.zeros(len(ANSWERS))
        for answer, score in scores.items():
            vqa_targets[ANSWERS.index(answer)] = score
        batch.append({"image": image(i), "question_id": 100 + i, "input_ids": ids, "vqa_targets": vqa_targets})
    return batch


def test_vqa_model_overfits_one_batch_and_answers_with_strings(tokenizer_dir):
    torch.manual_seed(0)
    model = FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=ANSWERS)
    targets = [{"red": 1.0}, {"no": 1.0, "yes": 0.3}, {"2": 0.6}, {"blue": 1.0, "red": 0.3}]
    batch = vqa_batch(targets)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):
        loss = model(batch)["loss_vqa"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert_every_trainable_parameter_gets_a_gradient(model)
    assert losses[0] == pytest.approx(math.log(2) * len(ANSWERS), rel=0.3)  # logits near 0 at init
    assert losses[-1] < 0.2 * losses[0]
    outputs = model.eval()(batch)
    assert [o["question_id"] for o in outputs] == [100, 101, 102, 103]
    assert [o["answer"] for o in outputs] == ["red", "no", "2", "blue"]
    assert all(o["scores"].shape == (len(ANSWERS),) and ((o["scores"] > 0) & (o["scores"] < 1)).all() for o in outputs)


def test_fused_image_norm_normalises_the_fused_tokens_with_the_last_stage_layernorm(tokenizer_dir):
    """MODEL.FIBER.COARSE.FUSED_IMAGE_NORM: the fused heads read LayerNorm(raw last-block tokens) with the last
    stage's output norm, which then trains; off (FIBER), the raw tokens, and the norm is frozen."""
    cfg = micro_cfg(tokenizer_dir, "FiberVQAModel")
    cfg.MODEL.FIBER.SWIN.OUT_FEATURES = ["res5"]
    models = {}
    for flag in (False, True):
        cfg.MODEL.FIBER.COARSE.FUSED_IMAGE_NORM = flag
        torch.manual_seed(0)
        models[flag] = FiberVQAModel(cfg, answers=ANSWERS).eval()
    batch = vqa_batch([{"red": 1.0}, {"no": 1.0}])
    raw_model, normed_model = models[False], models[True]
    with torch.no_grad():
        images = raw_model.preprocess_images(batch)
        ids, mask = raw_model.pad_texts([x["input_ids"] for x in batch])
        states = [(m.backbone.encode_image_lower(images), m.backbone.encode_text_lower(ids, mask))
                  for m in models.values()]
        raw, raw_text = raw_model.fused_tokens(*states[0])
        normed, normed_text = normed_model.fused_tokens(*states[1])
    norm = normed_model.backbone.image.out_norms["res5"]
    torch.testing.assert_close(normed, norm(raw), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normed_text, raw_text)
    assert normed.std(-1).mean() == pytest.approx(1.0, abs=0.05) and not torch.allclose(raw, normed)
    assert all(p.requires_grad for p in normed_model.backbone.image.out_norms.parameters())
    assert not any(p.requires_grad for p in raw_model.backbone.image.out_norms.parameters())


def test_vqa_model_rejects_targets_of_another_vocabulary(tokenizer_dir):
    model = FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=ANSWERS)
    batch = vqa_batch([{"red": 1.0}])
    batch[0]["vqa_targets"] = torch.zeros(7)
    with pytest.raises(ValueError, match="7 answers but the model has 5"):
        model(batch)
    del batch[0]["vqa_targets"]
    with pytest.raises(ValueError, match="lack 'vqa_targets'"):
        model(batch)
    with pytest.raises(ValueError, match="unique"):
        FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=["yes", "yes"])


def test_answer_vocabulary_from_a_file_or_the_training_set(tokenizer_dir, tmp_path):
    cfg = micro_cfg(tokenizer_dir, "FiberVQAModel")
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(ANSWERS))
    cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = str(path)
    assert answer_vocabulary_from_config(cfg) == ANSWERS
    model = build_model(cfg)
    assert isinstance(model, FiberVQAModel) and model.answers == ANSWERS
    assert model.heads.vqa[-1].out_features == len(ANSWERS)

    for bad, message in (({"yes": 0}, "JSON list"), (["yes", "no", "yes"], "duplicate answers: \\['yes'\\]")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            answer_vocabulary_from_config(cfg)
    cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        answer_vocabulary_from_config(cfg)

    name = "test_vqa_vocabulary_records"
    records = [
        {"file_name": "a.jpg", "image_id": 1, "question_id": 1, "question": "q?", "answers": ["Yes", "yes", "two"]},
        {"file_name": "b.jpg", "image_id": 2, "question_id": 2, "question": "q?", "answers": ["no", "the"]},
    ]
    DatasetCatalog.register(name, lambda: records)
    try:
        cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = ""
        cfg.DATASETS.TRAIN = (name,)
        assert answer_vocabulary_from_config(cfg) == ["yes", "2", "no"]  # by count, then alphabetically
        cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT = 2
        assert answer_vocabulary_from_config(cfg) == ["yes"]
        cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT = 3
        with pytest.raises(ValueError, match="no answer at least"):
            answer_vocabulary_from_config(cfg)
    finally:
        DatasetCatalog.remove(name)


# ----- captioning -----


def caption_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"])


def caption_model(tokenizer_dir: str, **overrides) -> FiberCaptionModel:
    cfg = micro_cfg(tokenizer_dir, "FiberCaptionModel")
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return build_model(cfg)


@pytest.fixture(scope="module")
def captioner(tokenizer_dir):
    """A caption model overfit on 2 images with 2 different captions; returns (model in eval mode, images)."""
    torch.manual_seed(0)
    model = caption_model(tokenizer_dir)
    open_gates(model)
    batch = [
        {"image": image(10 + i), "image_id": i, "input_ids": caption_ids(model.tokenizer, c)}
        for i, c in enumerate(CAPTIONS)
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(150):
        loss = model(batch)["loss_caption"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.01
    assert_every_trainable_parameter_gets_a_gradient(model)
    return model.eval(), model.preprocess_images(batch)


def test_caption_loss_is_next_token_ce_and_ignores_padding():
    logits = torch.zeros(1, 4, 6)
    logits[0, 0, 3] = math.log(5.0)  # position 0 predicts token 1 (= 3) with p = 5 / 10
    logits[0, 2, 5] = 9.0  # position 2 predicts a padding position: ignored
    input_ids = torch.tensor([[0, 3, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # position 1 predicts token 2 (= 2) with p = 1 / 6
    assert caption_loss(logits, input_ids, mask).item() == pytest.approx((math.log(2) + math.log(6)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="no token to predict"):
        caption_loss(logits[:, :1], input_ids[:, :1], mask[:, :1])


def test_caption_model_loss_is_the_same_with_extra_padding(tokenizer_dir):
    torch.manual_seed(0)
    model = caption_model(tokenizer_dir).eval()
    open_gates(model)
    image_tokens = model.encode_images(model.preprocess_images([{"image": image(0)}, {"image": image(1)}]))
    ids, mask = model.pad_texts([caption_ids(model.tokenizer, c) for c in CAPTIONS])
    padded_ids = torch.cat([ids, torch.full((2, 5), model.pad_token_id)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    loss = caption_loss(model.decoder_logits(image_tokens, ids, mask), ids, mask)
    padded_loss = caption_loss(model.decoder_logits(image_tokens, padded_ids, padded_mask), padded_ids, padded_mask)
    assert padded_loss.item() == pytest.approx(loss.item(), abs=1e-5)


def test_decoder_is_causal_and_is_the_backbones_text_to_image_mode(tokenizer_dir):
    torch.manual_seed(0)
    model = caption_model(tokenizer_dir, **{"MODEL.FIBER.TEXT.SKIP_FINAL_NORM": True}).eval()
    open_gates(model)
    images = model.preprocess_images([{"image": image(0)}])
    ids = caption_ids(model.tokenizer, CAPTIONS[0])[None]
    mask = torch.ones_like(ids)
    logits = model.decoder_logits(model.encode_images(images), ids, mask)
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 7) % 300
    changed_logits = model.decoder_logits(model.encode_images(images), changed, mask)
    assert torch.allclose(logits[:, :4], changed_logits[:, :4], atol=1e-5)
    assert not torch.allclose(logits[:, 4:], changed_logits[:, 4:], atol=1e-3)

    backbone = model.backbone
    image_state, text_state = backbone.encode_image_lower(images), backbone.encode_text_lower(ids, mask, causal=True)
    _, text = backbone.encode_upper(image_state, text_state, FusionMode.TEXT_TO_IMAGE)
    # FIBER's caption head: the MLM head on the fused text projection (objectives.py, compute_caption_mle).
    assert torch.allclose(logits, model.heads.mlm(model.heads.fused.text_transform(text)), atol=1e-5)
    # The decoder keeps the last text LayerNorm (unit weight, zero bias at init: normalising again changes nothing)
    # that fused passes skip (SKIP_FINAL_NORM), as FIBER's infer_caption does.
    def renormalised(x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:])

    assert torch.allclose(text, renormalised(text), atol=1e-4)
    _, fused_text = backbone.encode_upper(image_state, backbone.encode_text_lower(ids, mask), FusionMode.ON)
    assert not torch.allclose(fused_text, renormalised(fused_text), atol=1e-2)
    other_image = model.encode_images(model.preprocess_images([{"image": image(1)}]))
    assert not torch.allclose(logits, model.decoder_logits(other_image, ids, mask), atol=1e-3)  # it reads the image


def teacher_forced_score(model, image_tokens, tokens: list[int]) -> float:
    """Length-normalised log-probability of generating `tokens` after <s> (special tokens but </s> excluded)."""
    ids = torch.tensor([[model.bos_token_id, *tokens]])
    logits = model.decoder_logits(image_tokens, ids, torch.ones_like(ids))[0, :-1].float()
    logits[:, model.banned_tokens] = float("-inf")
    return logits.log_softmax(-1).gather(1, ids[0, 1:, None]).mean().item()


def test_greedy_decoding_reproduces_the_overfit_captions(captioner):
    model, images = captioner
    with torch.no_grad():
        greedy = model.generate(images, beam_size=1)
    for caption, text in zip(greedy, CAPTIONS):
        assert caption.tokens == caption_ids(model.tokenizer, text)[1:].tolist()  # the caption and </s>, then stop
    inputs = [{"image": image(10 + i), "image_id": 7 + i} for i in range(2)]
    expected = [{"image_id": 7, "caption": CAPTIONS[0]}, {"image_id": 8, "caption": CAPTIONS[1]}]
    try:
        for beam_size in (1, 3):
            model.beam_size = beam_size
            assert model(inputs) == expected
    finally:
        model.beam_size = 5


def test_beam_search_of_width_one_is_greedy_and_wider_beams_score_at_least_as_well(captioner, tokenizer_dir):
    trained, images = captioner
    torch.manual_seed(1)
    untrained = caption_model(tokenizer_dir).eval()  # flat distributions: many near-ties, a harder case
    open_gates(untrained)
    noise = untrained.preprocess_images([{"image": image(20 + i)} for i in range(3)])
    for model, pixels in ((trained, images), (untrained, noise)):
        with torch.no_grad():
            image_tokens = model.encode_images(pixels)
            greedy = model.greedy(image_tokens)
            beam_one = model.beam_search(image_tokens, 1)
            beam_three = model.beam_search(image_tokens, 3)
            assert [c.tokens for c in beam_one] == [c.tokens for c in greedy]
            assert [c.score for c in beam_one] == pytest.approx([c.score for c in greedy], abs=1e-5)
            for i, (beam, best_first) in enumerate(zip(beam_three, greedy)):
                one_image = [tokens[i : i + 1] for tokens in image_tokens]
                assert model.beam_search(one_image, 3)[0].tokens == beam.tokens  # the batch's beams are per image
                assert beam.score == pytest.approx(teacher_forced_score(model, one_image, beam.tokens), abs=1e-4)
                greedy_score = teacher_forced_score(model, one_image, best_first.tokens)
                assert best_first.score == pytest.approx(greedy_score, abs=1e-4)
                assert beam.score >= best_first.score - 1e-6


def test_decoding_stops_at_max_length(captioner):
    model, images = captioner
    full = caption_ids(model.tokenizer, CAPTIONS[0])[1:].tolist()
    try:
        for max_length in (3, len(full)):
            model.max_length = max_length
            with torch.no_grad():
                for beam_size in (1, 3):
                    assert model.generate(images[:1], beam_size=beam_size)[0].tokens == full[:max_length]
        model.max_length = 3
        expected = model.tokenizer.decode(full[:3], skip_special_tokens=True).strip()
        assert model([{"image": image(10), "image_id": 0}])[0]["caption"] == expected
    finally:
        model.max_length = 50


def test_a_prompt_starts_every_caption_and_its_tokens_are_not_scored(captioner, tokenizer_dir):
    trained, images = captioner
    prompted = caption_model(tokenizer_dir, **{"MODEL.FIBER.CAPTION.PROMPT": "a red "}).eval()  # stripped
    prompted.load_state_dict(trained.state_dict())
    full = caption_ids(trained.tokenizer, CAPTIONS[0])[1:].tolist()  # the caption and </s>
    prompt = trained.tokenizer("a red", add_special_tokens=False)["input_ids"]
    assert prompted.start_ids.tolist() == [trained.bos_token_id, *prompt] and full[: len(prompt)] == prompt
    with torch.no_grad():
        image_tokens = prompted.encode_images(images)
        for beam_size in (1, 3):
            # Image 0 was trained on this caption: the prompt's continuation is the rest of it.
            caption = prompted.generate(images[:1], beam_size=beam_size)[0]
            assert caption.tokens == full
            # Its score is that of the generated tokens only, given <s> and the prompt.
            ids = torch.tensor([[trained.bos_token_id, *full]])
            logits = trained.decoder_logits([t[:1] for t in image_tokens], ids, torch.ones_like(ids))[0, :-1]
            logits[:, trained.banned_tokens] = float("-inf")
            scores = logits.float().log_softmax(-1).gather(1, ids[0, 1:, None])[len(prompt) :, 0]
            assert caption.score == pytest.approx(scores.mean().item(), abs=1e-4)
            # Image 1's caption is another one, but its caption starts with the prompt all the same.
            assert prompted.generate(images[1:], beam_size=beam_size)[0].tokens[: len(prompt)] == prompt
        prompted.max_length = 2  # MAX_LENGTH counts the tokens after the prompt
        assert prompted.generate(images[:1], beam_size=1)[0].tokens == full[: len(prompt) + 2]
    assert prompted([{"image": image(10), "image_id": 3}])[0]["caption"].startswith("a red ")
    with pytest.raises(ValueError, match=f"PROMPT \\({len(prompt)} tokens\\) \\+ MAX_LENGTH 126"):
        caption_model(tokenizer_dir, **{"MODEL.FIBER.CAPTION.PROMPT": "a red", "MODEL.FIBER.CAPTION.MAX_LENGTH": 126})


def test_caption_model_rejects_bad_settings(tokenizer_dir):
    with pytest.raises(ValueError, match="MAX_LENGTH must be in \\[1, 127\\]"):
        caption_model(tokenizer_dir, **{"MODEL.FIBER.CAPTION.MAX_LENGTH": 128})
    with pytest.raises(ValueError, match="BEAM_SIZE"):
        caption_model(tokenizer_dir, **{"MODEL.FIBER.CAPTION.BEAM_SIZE": 0})
    with pytest.raises(ValueError, match="FUSION.NUM_LAYERS"):
        caption_model(tokenizer_dir, **{"MODEL.FIBER.FUSION.NUM_LAYERS": 0})
    with pytest.raises(ValueError, match="VOCAB_SIZE 200"):
        caption_model(tokenizer_dir, **{"MODEL.FIBER.TEXT.VOCAB_SIZE": 200})
    model = caption_model(tokenizer_dir)
    with pytest.raises(ValueError, match="lack 'image' or 'input_ids'"):
        model([{"image": image(0)}])
    with pytest.raises(ValueError, match="lack 'image' or 'image_id'"):
        model.eval()([{"image": image(0)}])


def test_batched_inference_equals_one_record_at_a_time(tokenizer_dir):
    """TEST.IMS_PER_BATCH batches records of different question and caption lengths: each output must be the one
    the record gets alone (texts are padded with their masks; images are all S x S)."""
    torch.manual_seed(0)
    vqa = FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=ANSWERS).eval()
    open_gates(vqa)
    questions = vqa_batch([{}, {}, {}])
    questions[1]["input_ids"] = questions[1]["input_ids"][:4]  # shorter: padded in the batch
    with torch.no_grad():
        together = vqa(questions)
        alone = [vqa([q])[0] for q in questions]
    assert [o["answer"] for o in together] == [o["answer"] for o in alone]
    for batched, single in zip(together, alone):
        torch.testing.assert_close(batched["scores"], single["scores"], atol=1e-5, rtol=0)
    coarse = build_model(micro_cfg(tokenizer_dir, "FiberCoarseModel")).eval()
    records = [{"image": image(i), "captions_input_ids": [q["input_ids"] for q in questions[: i + 1]]} for i in range(3)]
    with torch.no_grad():
        together = coarse(records)
        alone = [coarse([r])[0] for r in records]
    for batched, single in zip(together, alone):
        torch.testing.assert_close(batched["image_embedding"], single["image_embedding"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["text_embeddings"], single["text_embeddings"], atol=1e-5, rtol=0)


def test_vqa_questions_on_one_image_share_its_lower_part_and_answer_as_alone(tokenizer_dir, monkeypatch):
    torch.manual_seed(0)
    vqa = FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=ANSWERS).eval()
    open_gates(vqa)
    questions = vqa_batch([{}, {}, {}, {}])
    # Questions 0, 2 and 3 ask about one file; question 3's image_id differs, so it is another record's image.
    for q, (name, image_id, pixels) in zip(questions, [("a.jpg", 1, 0), ("b.jpg", 2, 1), ("a.jpg", 1, 0),
                                                       ("a.jpg", 5, 3)]):
        q.update(file_name=name, image_id=image_id, image=image(pixels))
    questions[2]["input_ids"] = questions[2]["input_ids"][:4]
    encoded = []
    encode = vqa.backbone.encode_image_lower
    monkeypatch.setattr(vqa.backbone, "encode_image_lower", lambda images: encoded.append(len(images)) or encode(images))
    with torch.no_grad():
        together = vqa(questions)
        assert encoded == [3]  # a.jpg (id 1), b.jpg, a.jpg (id 5)
        alone = [vqa([q])[0] for q in questions]
        train_mode_logits = vqa.answer_logits(questions)  # training never shares: its images may be augmented
    assert encoded[-1] == 4
    for batched, single, logits in zip(together, alone, train_mode_logits):
        assert batched["answer"] == single["answer"]
        torch.testing.assert_close(batched["scores"], single["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["scores"], logits.sigmoid(), atol=1e-5, rtol=0)


# ----- weights and packaged configs -----


def test_a_coarse_stage_checkpoint_loads_into_both_models(tokenizer_dir):
    coarse = build_model(micro_cfg(tokenizer_dir, "FiberCoarseModel")).state_dict()
    vqa = FiberVQAModel(micro_cfg(tokenizer_dir, "FiberVQAModel"), answers=ANSWERS)
    missing, unexpected = vqa.load_state_dict(coarse, strict=False)
    assert sorted(missing) == sorted(k for k in vqa.state_dict() if k.startswith("heads.vqa."))
    assert all(k.startswith("queue.") for k in unexpected)
    missing, unexpected = caption_model(tokenizer_dir).load_state_dict(coarse, strict=False)
    assert missing == [] and all(k.startswith("queue.") for k in unexpected)


@pytest.mark.parametrize("name", ["fiber_tiny_vqa", "fiber_tiny_caption"])
def test_shapes_configs_build_train_a_step_and_infer(name, tokenizer_dir, tmp_path):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file(f"fiber_shapes/{name}.yaml"))
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    (tmp_path / "answers.json").write_text(json.dumps(ANSWERS))
    cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY = str(tmp_path / "answers.json")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    size = cfg.INPUT.COARSE.IMAGE_SIZE
    if name == "fiber_tiny_vqa":
        batch = [{**x, "image": image(i, size)} for i, x in enumerate(vqa_batch([{"red": 1.0}, {"yes": 0.6}]))]
    else:
        batch = [
            {"image": image(i, size), "image_id": i, "input_ids": caption_ids(model.tokenizer, c)}
            for i, c in enumerate(CAPTIONS)
        ]
    losses = model(batch)
    assert set(losses) == ({"loss_vqa"} if name == "fiber_tiny_vqa" else {"loss_caption"})
    sum(losses.values()).backward()
    optimizer.step()
    assert_every_trainable_parameter_gets_a_gradient(model)
    with torch.no_grad():
        outputs = model.eval()(batch[:1])
    if name == "fiber_tiny_vqa":
        assert outputs[0]["question_id"] == 100 and outputs[0]["answer"] in ANSWERS
    else:
        assert outputs[0]["image_id"] == 0 and isinstance(outputs[0]["caption"], str)


@pytest.mark.parametrize("name", ["coarse_vqa", "coarse_caption"])
def test_fiber_b_lr_multipliers_match_trainable_parameters(name, tokenizer_dir, tmp_path):
    """The FIBER-B configs' (regex, factor) rules, on the FIBER-tiny model of the same class (the same names)."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file(f"fiber_b/{name}.yaml"))
    tiny = micro_cfg(tokenizer_dir, cfg.MODEL.META_ARCHITECTURE)
    tiny.SOLVER.LR_MULTIPLIERS = cfg.SOLVER.LR_MULTIPLIERS
    (tmp_path / "answers.json").write_text(json.dumps(ANSWERS))
    tiny.MODEL.FIBER.VQA.ANSWER_VOCABULARY = str(tmp_path / "answers.json")
    model = build_model(tiny)
    rates = {group["lr"] for group in build_optimizer(tiny, model).param_groups}
    assert rates == {tiny.SOLVER.BASE_LR * factor for factor in (1.0, *(f for _, f in cfg.SOLVER.LR_MULTIPLIERS))}
