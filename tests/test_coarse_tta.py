"""Test-time augmentation of the coarse models (TEST.AUG; fiber_d2/modeling/coarse/tta.py): VQA's views and averaged
answer, retrieval's averaged image embeddings, the Trainer's "_TTA" results, and a clear error for models without
TTA."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from fiber_d2.config import ConfigError, add_fiber_config
from fiber_d2.data.coarse_mapper import CoarseDatasetMapper
from fiber_d2.data.tokenizer import load_tokenizer
from fiber_d2.engine import trainer as trainer_module
from fiber_d2.engine.trainer import Trainer
from fiber_d2.modeling import FiberCaptionModel, FiberCoarseModel, FiberVQAModel
from fiber_d2.modeling.coarse.tta import CoarseViewsMapper, FiberRetrievalWithTTA, FiberVQAWithTTA, build_tta_model
from micro_configs import micro_coarse_cfg

ANSWERS = ["yes", "no", "2", "red", "blue"]
QUESTIONS = ["is the red circle left of the star?", "what colour is the star?", "how many squares are there?"]

pytestmark = pytest.mark.usefixtures("one_thread")


def vqa_cfg(tokenizer_dir: str):
    return micro_coarse_cfg(tokenizer_dir, "FiberVQAModel", overrides={
        "INPUT.COARSE.TEST_IMAGE_SIZE": 64, "TEST.AUG.MIN_SIZES": (64, 96), "TEST.AUG.FLIP": False,
    })


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three questions on two image files (the first two on one image), as the test loader's mapper keeps them."""
    folder = tmp_path_factory.mktemp("images")
    out = []
    for index, (image_id, question) in enumerate(zip([1, 1, 2], QUESTIONS)):
        path = folder / f"{image_id}.png"
        pixels = np.random.default_rng(image_id).integers(0, 256, (70, 90, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        out.append({"file_name": str(path), "height": 70, "width": 90, "image_id": image_id,
                    "question_id": 10 + index, "question": question})
    return out


@pytest.fixture(scope="module")
def model(tokenizer_dir):
    torch.manual_seed(0)
    vqa = FiberVQAModel(vqa_cfg(tokenizer_dir), answers=ANSWERS).eval()
    for name, parameter in vqa.named_parameters():
        if name.endswith("alpha"):
            parameter.data.fill_(0.5)  # open the fusion gates, so the answer depends on image and question together
    return vqa


def test_views_are_one_per_size_and_flip_with_left_and_right_swapped(tokenizer_dir, records):
    cfg = vqa_cfg(tokenizer_dir)
    mapper = CoarseViewsMapper(cfg, sizes=(64, 96), flip=True)
    views = mapper(records[0])
    assert [tuple(v["image"].shape) for v in views] == [(3, 64, 64), (3, 96, 96)] * 2
    assert all(v["question_id"] == 10 and "vqa_targets" not in v for v in views)
    for size, view in zip((64, 96), views):  # each unflipped view is what the test loader's mapper gives at its size
        args = CoarseDatasetMapper.from_config(cfg, is_train=False, task="vqa", answer_vocabulary=ANSWERS)
        plain = CoarseDatasetMapper(**dict(args, image_size=size))(records[0])
        assert torch.equal(view["image"], plain["image"]) and torch.equal(view["input_ids"], plain["input_ids"])
    next_question = mapper(records[1])  # the same image file: its images are reused, its question is its own
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(views, next_question))
    assert not torch.equal(views[0]["input_ids"], next_question[0]["input_ids"])
    assert not torch.equal(mapper(records[2])[0]["image"], views[0]["image"])
    for plain, flipped in zip(views[:2], views[2:]):
        assert torch.equal(flipped["image"], plain["image"].flip(-1))
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.decode(views[0]["input_ids"], skip_special_tokens=True) == QUESTIONS[0]
    assert tokenizer.decode(views[2]["input_ids"], skip_special_tokens=True) == QUESTIONS[0].replace("left", "right")


def test_tta_answers_from_the_mean_of_the_views_probabilities(tokenizer_dir, records, model):
    cfg = vqa_cfg(tokenizer_dir)
    tta = FiberVQAWithTTA(cfg, model)
    outputs = tta(records)
    views_mapper = CoarseViewsMapper(cfg, sizes=(64, 96), flip=False)
    for record, output in zip(records, outputs):
        with torch.no_grad():
            alone = [model([view])[0]["scores"] for view in views_mapper(record)]  # each view on its own
        expected = torch.stack(alone).mean(dim=0)
        assert output["question_id"] == record["question_id"]
        torch.testing.assert_close(output["scores"], expected, atol=1e-5, rtol=0)
        assert output["answer"] == ANSWERS[int(expected.argmax())]
        assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # the two sizes do give the model different inputs


def test_tta_with_one_view_is_the_plain_model(tokenizer_dir, records, model):
    cfg = vqa_cfg(tokenizer_dir)
    cfg.TEST.AUG.MIN_SIZES = (64,)
    plain_inputs = CoarseViewsMapper(cfg, sizes=(64,), flip=False)
    with torch.no_grad():
        plain = model([plain_inputs(r)[0] for r in records])
    for a, b in zip(FiberVQAWithTTA(cfg, model)(records), plain):
        assert a["answer"] == b["answer"]
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-6, rtol=0)


def test_tta_refuses_training_mode_bad_sizes_and_models_without_tta(tokenizer_dir, records, model):
    cfg = vqa_cfg(tokenizer_dir)
    with pytest.raises(RuntimeError, match="eval mode"):
        FiberVQAWithTTA(cfg, model.train())(records)
    model.eval()
    cfg.TEST.AUG.MIN_SIZES = (64, 0)
    with pytest.raises(ConfigError, match="TEST.AUG.MIN_SIZES"):
        build_tta_model(cfg, model)
    cfg.MODEL.META_ARCHITECTURE = "FiberCaptionModel"
    with pytest.raises(ConfigError, match=r"FiberCoarseModel \(retrieval\), not FiberCaptionModel"):
        build_tta_model(cfg, FiberCaptionModel(cfg))


def retrieval_inputs(cfg, records, size):
    """The retrieval test loader's inputs of `records` (two captions each) at image side `size`."""
    mapper = CoarseDatasetMapper(**dict(CoarseDatasetMapper.from_config(cfg, False, task="retrieval"), image_size=size))
    return [mapper(dict(r, captions=[r["question"], "a star ."])) for r in records[1:]]


def test_retrieval_tta_averages_the_image_embeddings_of_its_sizes(tokenizer_dir, records):
    torch.manual_seed(0)
    cfg = micro_coarse_cfg(tokenizer_dir, "FiberCoarseModel", overrides={
        "INPUT.COARSE.TEST_IMAGE_SIZE": 64, "TEST.AUG.MIN_SIZES": (64, 96), "TEST.AUG.FLIP": False,
    })
    model = FiberCoarseModel(cfg).eval()
    tta = build_tta_model(cfg, model)
    assert isinstance(tta, FiberRetrievalWithTTA)
    inputs = retrieval_inputs(cfg, records, 64)
    outputs = tta(inputs)
    with torch.no_grad():
        small, large = model(inputs), model(retrieval_inputs(cfg, records, 96))
    for output, a, b in zip(outputs, small, large):
        assert not torch.allclose(a["image_embedding"], b["image_embedding"], atol=1e-4)
        expected = torch.nn.functional.normalize(a["image_embedding"] + b["image_embedding"], dim=-1)
        torch.testing.assert_close(output["image_embedding"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(output["text_embeddings"], a["text_embeddings"], atol=1e-6, rtol=0)
        assert output["text_embeddings"].shape[0] == 2
    cfg.TEST.AUG.MIN_SIZES = (64,)  # one size: the plain model
    for output, plain in zip(FiberRetrievalWithTTA(cfg, model)(inputs), small):
        torch.testing.assert_close(output["image_embedding"], plain["image_embedding"], atol=1e-6, rtol=0)
    cfg.TEST.AUG.FLIP = True
    with pytest.raises(ConfigError, match="no flips"):
        build_tta_model(cfg, model)


class ConstantEvaluator(DatasetEvaluator):
    def __init__(self, value: float) -> None:
        self.value = value

    def process(self, inputs, outputs) -> None:
        pass

    def evaluate(self) -> dict:
        return {"vqa": {"accuracy": self.value}}


def test_trainer_reports_tta_results_next_to_the_plain_ones(tmp_path, monkeypatch):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = ("first", "second")
    folders = []
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(lambda cls, cfg, name: [[{"x": 1}]]))
    monkeypatch.setattr(
        Trainer, "build_evaluator",
        classmethod(lambda cls, cfg, name, output_folder=None, model=None:
                    folders.append(output_folder) or ConstantEvaluator(80.0 if output_folder else 70.0)),
    )
    monkeypatch.setattr(trainer_module, "build_tta_model", lambda cfg, model: model)
    model = torch.nn.Identity()
    plain = Trainer.test(cfg, model, [ConstantEvaluator(70.0), ConstantEvaluator(71.0)])
    augmented = Trainer.test_with_TTA(cfg, model)
    assert plain == {"first": {"vqa": {"accuracy": 70.0}}, "second": {"vqa": {"accuracy": 71.0}}}
    assert augmented == {"first_TTA": {"vqa": {"accuracy": 80.0}}, "second_TTA": {"vqa": {"accuracy": 80.0}}}
    assert folders == [str(tmp_path / "inference_TTA" / "first"), str(tmp_path / "inference_TTA" / "second")]
    assert json.loads((tmp_path / "results.json").read_text()) == {**plain, **augmented}
