"""The coarse stage: ITC/ITM/MLM losses on hand-made values, FiberCoarseModel on a micro config, the trainer hook."""
from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from fiber_d2.config import add_fiber_config
from fiber_d2.data.tokenizer import train_roberta_bpe_tokenizer
from fiber_d2.engine.coarse_hook import CoarseStageHook
from fiber_d2.model_zoo import get_config_file
from fiber_d2.modeling.coarse.heads import CoarseHeads
from fiber_d2.modeling.coarse.losses import FeatureQueue, itc_loss, itm_probability, mlm_loss, sample_itm_negatives
from fiber_d2.modeling.coarse.model import FiberCoarseModel


def test_itc_loss_equals_the_hand_computed_value():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # i2t = image @ text.T / 0.5 = [[2, 1.2], [0, 1.6]]; t2i = [[2, 0], [1.2, 1.6]]; targets on the diagonal.
    i2t = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    t2i = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2
    loss, i2t_scores, t2i_scores = itc_loss(image, text, torch.tensor(0.5))
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)
    assert torch.allclose(i2t_scores, torch.tensor([[2.0, 1.2], [0.0, 1.6]]))
    assert torch.allclose(t2i_scores, torch.tensor([[2.0, 0.0], [1.2, 1.6]]))


def test_itc_queue_adds_negatives_and_wraps_around():
    queue = FeatureQueue(3, 2)
    assert queue.contents()[0].shape == (0, 2)
    queue.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    queue.push(torch.tensor([[2.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 3.0]]))
    images, texts = queue.contents()
    assert images.tolist() == [[3.0, 0.0], [0.0, 1.0], [2.0, 0.0]]  # the oldest row was overwritten
    assert texts.tolist() == [[0.0, 3.0], [1.0, 0.0], [0.0, 2.0]]
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])
    loss, i2t, t2i = itc_loss(image, text, torch.tensor(1.0), queue)
    assert i2t.shape == (1, 4) and t2i.shape == (1, 4)
    # i2t row = [1, 0, 1, 0] (the batch text, then the queue's texts); target column 0.
    expected_i2t = -math.log(math.e / (2 * math.e + 2))
    expected_t2i = -math.log(math.e / (math.e + math.exp(3) + 1 + math.exp(2)))
    assert loss.item() == pytest.approx((expected_i2t + expected_t2i) / 2, abs=1e-5)


def test_itm_negatives_are_never_the_positive_or_the_same_image():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(6, 6, generator=generator) * 3
    image_ids = torch.tensor([0, 0, 1, 2, 3, 3])  # two images with two captions each in the batch
    for _ in range(50):
        negative_texts, negative_images = sample_itm_negatives(similarity, similarity.T, image_ids, generator)
        assert (image_ids[negative_texts] != image_ids).all()
        assert (image_ids[negative_images] != image_ids).all()


def test_itm_negatives_follow_the_similarity():
    similarity = torch.tensor([[10.0, 30.0, 0.0], [0.0, 10.0, 30.0], [30.0, 0.0, 10.0]])
    negative_texts, negative_images = sample_itm_negatives(similarity, similarity.T, torch.arange(3))
    assert negative_texts.tolist() == [1, 2, 0]  # the hardest other text (e^-20 odds for anything else)
    assert negative_images.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="two different images"):
        sample_itm_negatives(similarity, similarity.T, torch.zeros(3, dtype=torch.long))


def test_mlm_loss_counts_only_the_masked_tokens_and_itm_is_a_probability():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3.0)  # p(token 2) = 3 / 6 at position 1
    labels = torch.tensor([[-100, 2, -100]])
    assert mlm_loss(logits, labels).item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert mlm_loss(logits, torch.full((1, 3), -100)).item() == 0.0
    probability = itm_probability(torch.tensor([[0.0, math.log(3.0)]]))
    assert probability.item() == pytest.approx(0.75)


# ----- the model on a micro config -----


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    colours = ["red", "blue", "green", "white", "black", "yellow"]
    shapes = ["circle", "square", "star", "triangle", "cross", "hexagon"]
    texts = [f"a {c} {s} left of a {s}" for c in colours for s in shapes] * 3
    return str(train_roberta_bpe_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300))


def micro_cfg(tokenizer_dir: str, **overrides):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "FiberCoarseModel"
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 300
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.0
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def pair(seed: int, image_id: int, size: int = 64) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.tensor([0]), torch.randint(5, 300, (6,), generator=generator), torch.tensor([2])])
    labels = torch.full_like(ids, -100)
    masked = ids.clone()
    masked[3], labels[3] = 4, ids[3]  # <mask> is id 4 in train_roberta_bpe_tokenizer's special tokens
    return {
        "image": torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8),
        "image_id": image_id,
        "input_ids": ids,
        "mlm_input_ids": masked,
        "mlm_labels": labels,
    }


def open_gates(model, value: float = 0.5) -> None:
    for name, parameter in model.named_parameters():
        if name.endswith("alpha"):
            parameter.data.fill_(value)


def test_coarse_model_trains_all_objectives_on_one_batch(tokenizer_dir):
    torch.manual_seed(0)
    model = build_model(micro_cfg(tokenizer_dir))
    assert isinstance(model, FiberCoarseModel)
    batch = [pair(i, image_id=i) for i in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(40):
        losses = model(batch)
        assert set(losses) == {"loss_itc", "loss_itm", "loss_mlm"}
        total = sum(losses.values())
        first = first or {k: v.item() for k, v in losses.items()}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    last = {k: v.item() for k, v in model(batch).items()}
    assert first["loss_itc"] == pytest.approx(math.log(4), abs=0.3)  # chance at init: log(batch)
    assert last["loss_itc"] < 0.3 * first["loss_itc"]
    assert last["loss_mlm"] < 0.3 * first["loss_mlm"]
    assert last["loss_itm"] < first["loss_itm"]


def test_dual_encoder_embeddings_do_not_depend_on_the_other_modality(tokenizer_dir):
    torch.manual_seed(0)
    model = build_model(micro_cfg(tokenizer_dir)).eval()
    open_gates(model)  # fusion would change everything if it were used
    a, b = pair(0, 0), pair(1, 1)
    out_a = model([{**a, "captions_input_ids": [a["input_ids"]]}])[0]
    out_mixed = model([{**a, "captions_input_ids": [b["input_ids"], a["input_ids"]]}])[0]
    assert out_a["image_embedding"].shape == (128,) and out_a["text_embeddings"].shape == (1, 128)
    assert torch.allclose(out_a["image_embedding"], out_mixed["image_embedding"], atol=1e-6)
    assert torch.allclose(out_a["text_embeddings"][0], out_mixed["text_embeddings"][1], atol=1e-6)
    assert torch.allclose(out_mixed["text_embeddings"].norm(dim=-1), torch.ones(2), atol=1e-5)
    ids, mask = model.pad_texts([a["input_ids"], b["input_ids"]])
    images = model.preprocess_images([a, b])
    probability = model.match_probability(images, ids, mask)
    assert probability.shape == (2,) and ((probability > 0) & (probability < 1)).all()


def test_itc_batch_norm_centres_the_pooled_features_before_the_l2_norm():
    torch.manual_seed(0)
    plain = CoarseHeads(image_dim=8, text_dim=4, vocab_size=10)
    normed = CoarseHeads(image_dim=8, text_dim=4, vocab_size=10, itc_batch_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    assert not any("norm" in name for name in plain.state_dict() if name.startswith("itc_"))  # FIBER's layout
    # Nearly identical images: the plain embeddings are one vector; the batch-normed ones spread around the origin.
    tokens = torch.randn(1, 5, 8) + 0.01 * torch.randn(6, 5, 8)
    pooled = plain.itc.pool_image(tokens)
    assert (plain.itc_image_embedding(tokens) @ plain.itc_image_embedding(tokens).T).min() > 0.99
    expected = torch.nn.functional.normalize((pooled - pooled.mean(0)) / (pooled.var(0, unbiased=False) + 1e-5).sqrt(), dim=-1)
    assert torch.allclose(normed.itc_image_embedding(tokens), expected, atol=1e-4)
    # Evaluation uses the running statistics (momentum 0.1 from mean 0, variance 1), the same for any batch size.
    normed.eval()
    running = normed.itc_image_norm.norm
    assert torch.allclose(running.running_mean, 0.1 * pooled.mean(0), atol=1e-5)
    single = normed.itc_image_embedding(tokens[:1])
    assert torch.allclose(single, normed.itc_image_embedding(tokens)[:1], atol=1e-5)
    text = torch.randn(3, 7, 4)
    mask = torch.ones(3, 7, dtype=torch.long)
    assert torch.allclose(normed.itc_text_embedding(text, mask).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_coarse_model_shares_a_detector_backbone(tokenizer_dir):
    cfg = micro_cfg(tokenizer_dir)
    cfg.merge_from_file(get_config_file("fiber_shapes/fiber_tiny_grounding.yaml"))
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 300
    detector = build_model(cfg)
    coarse = FiberCoarseModel(cfg, backbone=detector.backbone)
    assert coarse.backbone is detector.backbone.bottom_up
    alpha = next(p for n, p in coarse.named_parameters() if n.endswith("alpha"))
    assert any(alpha is p for p in detector.parameters())


def _hook(tokenizer_dir, batches):
    cfg = micro_cfg(
        tokenizer_dir,
        **{
            "COARSE_STAGE.ENABLED": True,
            "COARSE_STAGE.DATASETS": ("unused",),
            "COARSE_STAGE.MAX_ITER": 6,
            "COARSE_STAGE.BASE_LR": 1e-3,
            "COARSE_STAGE.WARMUP_ITERS": 2,
        },
    )
    torch.manual_seed(0)
    detector = build_model(micro_cfg(tokenizer_dir, **{"MODEL.META_ARCHITECTURE": "FiberCoarseModel"}))
    hook = CoarseStageHook(cfg, detector)
    hook._data = iter(batches)
    return hook


def test_hook_saves_and_resumes_to_the_same_state(tokenizer_dir):
    batches = [[pair(4 * step + i, image_id=i) for i in range(3)] for step in range(6)]
    straight = _hook(tokenizer_dir, batches)
    for _ in range(6):
        metrics = straight.run_step()
    assert set(metrics) == {"coarse/loss_itc", "coarse/loss_itm", "coarse/loss_mlm", "coarse/total_loss", "coarse/lr"}

    interrupted = _hook(tokenizer_dir, batches)
    for _ in range(3):
        interrupted.run_step()
    saved_state = interrupted.state_dict()
    saved_backbone = {k: v.clone() for k, v in interrupted.model.backbone.state_dict().items()}

    resumed = _hook(tokenizer_dir, batches[3:])
    resumed.model.backbone.load_state_dict(saved_backbone)  # the trainer's checkpoint restores the detector
    resumed.load_state_dict(saved_state)
    assert resumed.iter == 3
    assert resumed.scheduler.last_epoch == 3
    for _ in range(3):
        resumed.run_step()
    for (name, expected), actual in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(expected.float(), actual.float(), atol=1e-5), name


def test_hook_rejects_bad_settings(tokenizer_dir):
    cfg = micro_cfg(tokenizer_dir, **{"COARSE_STAGE.ENABLED": True, "COARSE_STAGE.MAX_ITER": 5})
    model = build_model(micro_cfg(tokenizer_dir))
    with pytest.raises(ValueError, match="COARSE_STAGE.DATASETS"):
        CoarseStageHook(cfg, model)
    cfg.COARSE_STAGE.DATASETS = ("x",)
    cfg.COARSE_STAGE.MODE = "after"
    with pytest.raises(ValueError, match="COARSE_STAGE.MODE"):
        CoarseStageHook(cfg, model)


def test_itm_scorer_gives_the_models_match_probability_for_dataset_pairs(tokenizer_dir, register):
    from fiber_d2.evaluation.itm_scorer import DatasetItmScorer

    torch.manual_seed(0)
    # With dropout: the scorer must score in eval mode even when the model is in training mode (evaluators run after
    # Detectron2's inference loop has put the model back in its own mode).
    model = build_model(micro_cfg(tokenizer_dir, **{"MODEL.FIBER.TEXT.DROPOUT": 0.5})).train()
    open_gates(model)
    records = {i: pair(seed=i, image_id=i) for i in (7, 8, 9)}
    captions = {i: [pair(seed=10 * i + j, image_id=i)["input_ids"] for j in range(2)] for i in records}
    mapped = []

    def mapper(record):
        mapped.append(record["image_id"])
        return {"image": records[record["image_id"]]["image"], "captions_input_ids": captions[record["image_id"]]}

    name = register([{"image_id": i} for i in records])
    scorer = DatasetItmScorer(model, name, mapper, batch_size=2)
    lower_batches = []
    encode_image_lower = model.backbone.encode_image_lower
    model.backbone.encode_image_lower = lambda images: lower_batches.append(len(images)) or encode_image_lower(images)
    image_ids = [7, 7, 7, 8, 9]
    pairs = [(7, 0), (8, 1), (9, 0), (7, 1), (9, 1)]
    probabilities = scorer(image_ids, pairs)
    assert probabilities.shape == (5,)
    assert lower_batches == [1, 2, 1]  # batches of two pairs: image 7 once, then 7 and 8, then 9
    del model.backbone.encode_image_lower
    assert model.training  # left in its own mode
    model.eval()
    for p, (image_id, (text_image, j)) in enumerate(zip(image_ids, pairs)):
        ids = captions[text_image][j]
        expected = model.match_probability(
            model.preprocess_images([records[image_id]]), ids[None], torch.ones(1, len(ids), dtype=torch.long)
        )
        assert probabilities[p].item() == pytest.approx(expected.item(), abs=1e-5)
    assert len(set(probabilities.tolist())) > 1  # the pairs really differ
    # Captions are kept once mapped; only the current image is kept: 7 once, 8 and 9 for a caption, then an image.
    assert {i: mapped.count(i) for i in records} == {7: 1, 8: 2, 9: 2}
    with pytest.raises(KeyError, match="image_id 5 is not a record"):
        scorer([5], [(7, 0)])
