"""The VQA answer classes of a config, shared by the VQA model (its classifier) and its data loaders (the targets).

MODEL.FIBER.VQA.ANSWER_VOCABULARY names a JSON list of answers in class order (e.g. FIBER's 3129 VQAv2 answers); when
it is "", the classes are the normalised answers of DATASETS.TRAIN given at least INPUT.COARSE.VQA_MIN_ANSWER_COUNT
times.
"""
from __future__ import annotations

import json
import logging
import os

from detectron2.config import CfgNode

from .build import load_grounding_dataset_dicts
from .coarse_mapper import build_answer_vocabulary
from .tokenizer import resolve_path
from .vqa_answers import normalize_vqa_answer

logger = logging.getLogger(__name__)


def load_answer_vocabulary(path: str) -> list[str]:
    """A JSON file holding the list of answer strings in class order.

    Entries must be unique non-empty strings. An entry that `normalize_vqa_answer` would change can never be a training
    target (the mapper matches normalised human answers), which is logged as a warning.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"answer vocabulary {path!r} (MODEL.FIBER.VQA.ANSWER_VOCABULARY) does not exist")
    with open(path, encoding="utf-8") as f:
        answers = json.load(f)
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
        raise ValueError(f"answer vocabulary {path!r} must hold a non-empty JSON list of non-empty answer strings")
    if len(set(answers)) < len(answers):
        duplicates = sorted({a for a in answers if answers.count(a) > 1})
        raise ValueError(f"answer vocabulary {path!r} has duplicate answers: {duplicates[:10]}")
    unnormalised = [a for a in answers if normalize_vqa_answer(a) != a]
    if unnormalised:
        logger.warning(
            "%d answers of %s are not normalised (e.g. %r -> %r) and can never be training targets",
            len(unnormalised), path, unnormalised[0], normalize_vqa_answer(unnormalised[0]),
        )
    return answers


def answer_vocabulary_from_config(cfg: CfgNode) -> list[str]:
    """The answer classes: MODEL.FIBER.VQA.ANSWER_VOCABULARY (a JSON list), or, when that is "", the normalised
    answers of DATASETS.TRAIN given at least INPUT.COARSE.VQA_MIN_ANSWER_COUNT times (`build_answer_vocabulary`)."""
    path = cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY
    if path:
        return load_answer_vocabulary(resolve_path(path))
    if not cfg.DATASETS.TRAIN:
        raise ValueError("VQA needs an answer vocabulary: set MODEL.FIBER.VQA.ANSWER_VOCABULARY or DATASETS.TRAIN")
    answers = build_answer_vocabulary(
        load_grounding_dataset_dicts(cfg.DATASETS.TRAIN), cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT
    )
    if not answers:
        raise ValueError(
            f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} give no answer at least INPUT.COARSE.VQA_MIN_ANSWER_COUNT = "
            f"{cfg.INPUT.COARSE.VQA_MIN_ANSWER_COUNT} times"
        )
    return answers
