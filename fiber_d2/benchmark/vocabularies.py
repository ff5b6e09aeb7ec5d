"""The vocabularies the detector benchmarks prompt with (LVIS, FIBER-Shapes), and a tokenizer for them when the
config's MODEL.FIBER.TOKENIZER is absent (random-weight models need no particular vocabulary)."""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.data.datasets.lvis import get_lvis_instances_meta

from ..data.prompts import clean_category_name
from ..data.shapes.vocabulary import colorshape_categories
from ..data.tokenizer import resolve_path, train_roberta_bpe_tokenizer
from ..engine.predictor import FiberPredictor
from .common import logger


def lvis_names() -> list[str]:
    """The 1203 LVIS v1 category names as the evaluation prompts them (detectron2's thing_classes, cleaned)."""
    return [clean_category_name(name) for name in get_lvis_instances_meta("lvis_v1")["thing_classes"]]


def shapes_names() -> list[str]:
    """The 48 FIBER-Shapes "colour shape" category names."""
    return [category["name"] for category in colorshape_categories()]


def names_tokenizer(cfg: CfgNode, names: Sequence[str], train_on_names: bool, workdir: str,
                    vocabulary: str) -> tuple[str, str]:
    """(tokenizer directory, description): MODEL.FIBER.TOKENIZER if that directory exists and `train_on_names` is
    False, else a byte-level BPE trained in `workdir` on the names (vocabulary at most min(the model's, 8000): about
    one token per word), so that the prompts have lengths close to those of real prompts. `vocabulary` names the
    names in logs."""
    path = cfg.MODEL.FIBER.TOKENIZER
    if not train_on_names and path and os.path.isdir(resolve_path(path)):
        return path, path
    vocab_size = min(cfg.MODEL.FIBER.TEXT.VOCAB_SIZE, 8000)
    logger.info("tokenizer: a byte-level BPE (vocabulary <= %d) trained on the %s names", vocab_size, vocabulary)
    directory = train_roberta_bpe_tokenizer(names, workdir, vocab_size=vocab_size, min_frequency=1)
    return str(directory), f"byte-level BPE trained on the {vocabulary} names (vocab <= {vocab_size})"


def shapes_predictor(cfg: CfgNode, train_on_names: bool) -> tuple[FiberPredictor, list[str], str]:
    """(random-weight FiberPredictor of `cfg`, the 48 FIBER-Shapes names, tokenizer description): the predictor
    reads `names_tokenizer`'s tokenizer (MODEL.FIBER.TOKENIZER is set to it) when it is built."""
    names = shapes_names()
    with tempfile.TemporaryDirectory() as workdir:
        cfg.MODEL.FIBER.TOKENIZER, tokenizer_name = names_tokenizer(cfg, names, train_on_names, workdir,
                                                                    "FIBER-Shapes colour+shape")
        predictor = FiberPredictor(cfg)
    return predictor, names, tokenizer_name
