"""CoarseDatasetMapper: an image-text, VQA or caption record -> the inputs of the coarse models.

Tasks (the record formats are those of `datasets/image_text_pairs.py`, `vqa.py` and `coco_captions.py`):
- "pretrain" (and its alias "retrieval"): records `file_name, image_id, captions: [str, ...]`. Training: one random
  caption, its token ids and their MLM-masked copy (`mask_tokens`). Inference: every caption and its token ids.
- "vqa": records `file_name, image_id, question_id, question, answers: [str, ...]`. The question's token ids and, when
  the record has answers (required in training), soft targets over an answer vocabulary (`build_answer_vocabulary`).
- "caption": records `file_name, image_id, captions`. Training: one random caption and its ids. Inference: the image
  (and the reference `captions` when the record has them).
- "text": records with `captions`, training only, no image is read: one random caption, its ids and their MLM-masked
  copy, with `image_id` (FiberTextPretrainer).

Output, always (but for "text"): `image` (uint8 [3, S, S], INPUT.FORMAT channels; S = INPUT.COARSE.IMAGE_SIZE in
training, INPUT.COARSE.TEST_IMAGE_SIZE if set at inference), `height`, `width` (of the original image), `image_id`,
`file_name`. Token ids are LongTensor [T]: <s> ... </s>, T <= INPUT.COARSE.MAX_TEXT_LEN (longer texts are truncated,
</s> kept last), unpadded.
Training images: a random resized crop (area fraction in INPUT.COARSE.CROP_SCALE, aspect ratio in [3/4, 4/3]) resized to
S x S, then (INPUT.COARSE.RANDOM_FLIP) a horizontal flip with probability 0.5 that swaps the words "left" and "right" of
the caption, or of the question and its answers. Inference images: resized to S x S, nothing else.
All random choices use Python's `random` module (MLM through a torch generator seeded from it): `random.seed` makes
the mapper deterministic.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from PIL import Image

from .datasets.errors import check_on_bad_record
from .grounding_mapper import swap_left_right
from .image_io import describe_record, read_record_image_or_skip
from .positive_map import encode_prompt
from .swapped_captions import check_order_relations, check_swap_groups, swap_one_word, swap_phrase_order
from .tokenizer import load_tokenizer
from .vqa_answers import normalize_vqa_answer, vqa_soft_score

logger = logging.getLogger(__name__)

TASKS = ("pretrain", "retrieval", "vqa", "caption", "text")
# Of the tokens chosen for MLM: this fraction becomes <mask>, the next fraction a random token, the rest stays.
_MASK_FRACTION = 0.8
_RANDOM_FRACTION = 0.1
# Aspect ratios (width / height) of the training crops, as torchvision's RandomResizedCrop.
_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Hugging Face's DataCollatorForLanguageModeling): returns (masked_ids, labels), both as input_ids.

    input_ids: LongTensor, e.g. [B, T] (any shape). special_tokens_mask: BoolTensor of the same shape, True where a
    token must never be chosen (<s>, </s>, <pad>). Each other token is chosen with `probability`; a chosen token becomes
    `mask_token_id` (80%), a uniformly random id in [0, vocab_size) (10%; it may equal the original) or stays (10%).
    labels: the original id where chosen, -100 elsewhere. Deterministic given `generator` (on input_ids' device).
    """
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask has shape {tuple(special_tokens_mask.shape)}, input_ids {tuple(input_ids.shape)}"
        )
    if special_tokens_mask.dtype != torch.bool:
        raise TypeError(f"special_tokens_mask must be a BoolTensor, got {special_tokens_mask.dtype}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"the masking probability must be in [0, 1], got {probability}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    shape, device = input_ids.shape, input_ids.device
    chosen = (torch.rand(shape, generator=generator, device=device) < probability) & ~special_tokens_mask
    action = torch.rand(shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device, dtype=input_ids.dtype)
    to_mask = chosen & (action < _MASK_FRACTION)
    to_random = chosen & (action >= _MASK_FRACTION) & (action < _MASK_FRACTION + _RANDOM_FRACTION)
    masked_ids = input_ids.clone()
    masked_ids[to_mask] = mask_token_id
    masked_ids[to_random] = random_ids[to_random]
    labels = torch.full_like(input_ids, -100)
    labels[chosen] = input_ids[chosen]
    return masked_ids, labels


def _where(record: dict) -> str:
    """The record's name in error messages: its dataset, file, image_id and (VQA) question_id."""
    where = describe_record(record)
    if "question_id" in record:
        where += f", question_id {record['question_id']}"
    return where


def _answers(record: dict) -> list[str]:
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{_where(record)}: 'answers' must be a non-empty list of str, got {answers!r}")
    return answers


def build_answer_vocabulary(records: Sequence[dict], min_count: int = 1) -> list[str]:
    """The VQA answer classes: the normalised (`normalize_vqa_answer`) human answers of `records`, kept if given at
    least `min_count` times in all, sorted by descending count, then alphabetically. Answers that normalise to the
    empty string (e.g. "the") are left out."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts = Counter(normalize_vqa_answer(answer) for record in records for answer in _answers(record))
    counts.pop("", None)
    return sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))


def _random_crop_box(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) in pixels of a random crop covering a fraction in `scale` of the image's area, with an aspect
    ratio in [3/4, 4/3] (torchvision's RandomResizedCrop.get_params, on Python's `random`). If 10 draws do not fit, the
    largest centred crop with a ratio in that range. A scale of (1, 1) is the whole image."""
    if scale[0] >= 1.0:
        return 0, 0, width, height
    log_ratio = (math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1]))
    for _ in range(_CROP_ATTEMPTS):
        area = height * width * random.uniform(*scale)
        ratio = math.exp(random.uniform(*log_ratio))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, width - w), random.randint(0, height - h), w, h
    w, h = width, height
    if width / height < _CROP_RATIO[0]:
        h = round(width / _CROP_RATIO[0])
    elif width / height > _CROP_RATIO[1]:
        w = round(height * _CROP_RATIO[1])
    return (width - w) // 2, (height - h) // 2, w, h


class CoarseDatasetMapper:
    """Reads an image and makes it S x S (training: random crop, maybe a flip); tokenises its text per task."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        task: str,
        image_size: int,
        crop_scale: tuple[float, float],
        random_flip: bool,
        image_format: str,
        tokenizer: Any,
        max_text_len: int,
        mlm_probability: float,
        answer_vocabulary: list[str] | None = None,
        on_bad_record: str = "raise",
        itm_swap_words: Sequence[Sequence[str]] = (),
        itm_swap_order: Sequence[str] = (),
    ) -> None:
        """
        Args:
            is_train: training output (random crop and flip, one caption, MLM) or inference output.
            task: "pretrain", "retrieval" (the same), "vqa", "caption" or "text" (training only).
            image_size: S, the side of the output images in pixels. crop_scale: (min, max) area fraction of the
                training crops, 0 < min <= max <= 1. random_flip: flip training images with probability 0.5.
            image_format: INPUT.FORMAT. tokenizer: a fast RoBERTa tokenizer with a <mask> token.
            max_text_len: the most tokens of a text, <s> and </s> included. mlm_probability: MLM's choice rate.
            answer_vocabulary: the VQA answer classes (required for "vqa"), e.g. `build_answer_vocabulary`'s.
            on_bad_record: DATASETS.ON_BAD_RECORD. An image that is missing, empty, corrupt, truncated or not of the
                record's size raises an ImageError naming dataset, file and image_id ("raise"), or, in training
                only, is logged and the record skipped ("skip": the mapper returns None and Detectron2's loader
                takes another record). At inference it always raises.
            itm_swap_words: groups of interchangeable words (INPUT.COARSE.ITM_SWAP_WORDS); when set, "pretrain"
                training inputs get `swap_input_ids`, the caption with one such word swapped (`swap_one_word`), as
                an ITM negative, if the caption has one.
            itm_swap_order: asymmetric relations (INPUT.COARSE.ITM_SWAP_ORDER): likewise, the caption with the phrases
                either side of one of them exchanged (`swap_phrase_order`). A caption open to both kinds of swap gets
                one of the two at equal odds.
        """
        check_on_bad_record(on_bad_record)
        if task not in TASKS:
            raise ValueError(f"unknown coarse task {task!r}; expected one of {TASKS}")
        if image_size < 1:
            raise ValueError(f"INPUT.COARSE.IMAGE_SIZE must be positive, got {image_size}")
        crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"INPUT.COARSE.CROP_SCALE must be (min, max) with 0 < min <= max <= 1, got {crop_scale}")
        if max_text_len < 2:
            raise ValueError(f"INPUT.COARSE.MAX_TEXT_LEN must leave room for <s> and </s>, got {max_text_len}")
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no <mask> token, which MLM needs")
        if task == "text" and not is_train:
            raise ValueError("the 'text' task (text-only MLM) has no inference output")
        if task == "vqa":
            if not answer_vocabulary:
                raise ValueError("the 'vqa' task needs a non-empty answer_vocabulary (see build_answer_vocabulary)")
            if len(set(answer_vocabulary)) < len(answer_vocabulary):
                duplicates = sorted(a for a, n in Counter(answer_vocabulary).items() if n > 1)
                raise ValueError(f"the answer vocabulary has duplicate answers: {duplicates[:10]}")
        self.is_train = is_train
        self.task = task
        self.image_size = image_size
        self.crop_scale = crop_scale
        self.random_flip = random_flip
        self.image_format = image_format
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.mlm_probability = mlm_probability
        self.on_bad_record = on_bad_record
        self.answer_vocabulary = list(answer_vocabulary) if answer_vocabulary is not None else None
        self.itm_swap_words = check_swap_groups(itm_swap_words)
        self.itm_swap_order = check_order_relations(itm_swap_order)
        self._answer_index = {a: i for i, a in enumerate(self.answer_vocabulary or [])}
        self._special_ids = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
        logger.info(
            "[CoarseDatasetMapper] task %r, %s: %s", task, "training" if is_train else "inference",
            "texts only" if task == "text" else f"{image_size} x {image_size} images"
            + (f", crop scale {crop_scale}, random flip {random_flip}" if is_train else ""),
        )

    @classmethod
    def from_config(
        cls,
        cfg: CfgNode,
        is_train: bool = True,
        task: str = "pretrain",
        answer_vocabulary: list[str] | None = None,
    ) -> dict[str, Any]:
        coarse = cfg.INPUT.COARSE
        if coarse.TEST_IMAGE_SIZE < 0:
            raise ValueError(f"INPUT.COARSE.TEST_IMAGE_SIZE must be >= 0 (0: IMAGE_SIZE), got {coarse.TEST_IMAGE_SIZE}")
        return {
            "is_train": is_train,
            "task": task,
            "image_size": coarse.IMAGE_SIZE if is_train or not coarse.TEST_IMAGE_SIZE else coarse.TEST_IMAGE_SIZE,
            "crop_scale": tuple(coarse.CROP_SCALE),
            "random_flip": coarse.RANDOM_FLIP,
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": load_tokenizer(cfg.MODEL.FIBER.TOKENIZER),
            "max_text_len": coarse.MAX_TEXT_LEN,
            "mlm_probability": coarse.MLM_PROBABILITY,
            "answer_vocabulary": answer_vocabulary,
            "on_bad_record": cfg.DATASETS.ON_BAD_RECORD,
            "itm_swap_words": cfg.INPUT.COARSE.ITM_SWAP_WORDS,
            "itm_swap_order": cfg.INPUT.COARSE.ITM_SWAP_ORDER,
        }

    def __call__(self, dataset_dict: dict) -> dict | None:
        record = dict(dataset_dict)  # read_record_image may add width/height; nothing nested is modified
        where = _where(record)
        if self.task == "text":
            captions = self._captions(record, where)
            caption = captions[random.randrange(len(captions))]
            out = {"image_id": record.get("image_id"), "caption": caption, "input_ids": self._encode(caption)}
            out["mlm_input_ids"], out["mlm_labels"] = self._mask(out["input_ids"])
            return out
        skip = self.is_train and self.on_bad_record == "skip"
        image = read_record_image_or_skip(record, self.image_format, where, skip)
        if image is None:
            return None
        image, flip = self._transform_image(image)
        out = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": record["height"],
            "width": record["width"],
            "image_id": record.get("image_id"),
            "file_name": record["file_name"],
        }
        if self.task == "vqa":
            out.update(self._vqa(record, flip, where))
        elif self.is_train:
            captions = self._captions(record, where)
            caption = self._flipped(captions[random.randrange(len(captions))], flip)
            out.update(caption=caption, input_ids=self._encode(caption))
            if self.task != "caption":
                out["mlm_input_ids"], out["mlm_labels"] = self._mask(out["input_ids"])
            swapped = self._swapped(caption) if self.task in ("pretrain", "retrieval") else None
            if swapped is not None:
                out["swap_input_ids"] = self._encode(swapped)
        elif self.task != "caption":
            captions = self._captions(record, where)
            out.update(captions=captions, captions_input_ids=[self._encode(c) for c in captions])
        elif "captions" in record:
            out["captions"] = self._captions(record, where)
        return out

    def _transform_image(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """HWC image -> (S x S image, whether it was flipped)."""
        height, width = image.shape[:2]
        size = self.image_size
        if not self.is_train:
            return T.ResizeTransform(height, width, size, size, Image.BICUBIC).apply_image(image), False
        x0, y0, w, h = _random_crop_box(height, width, self.crop_scale)
        image = T.CropTransform(x0, y0, w, h, width, height).apply_image(image)
        image = T.ResizeTransform(h, w, size, size, Image.BICUBIC).apply_image(image)
        flip = self.random_flip and random.random() < 0.5
        if flip:
            image = T.HFlipTransform(size).apply_image(image)
        return image, flip

    @staticmethod
    def _flipped(text: str, flip: bool) -> str:
        return swap_left_right(text, [])[0] if flip else text

    @staticmethod
    def _captions(record: dict, where: str) -> list[str]:
        captions = record.get("captions")
        if not isinstance(captions, list) or not captions:
            raise ValueError(f"{where}: the record has no captions (a non-empty list of str), got {captions!r}")
        for index, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{where}: caption #{index} is not a non-empty str: {caption!r}")
        return captions

    def _swapped(self, caption: str) -> str | None:
        if not self.itm_swap_words and not self.itm_swap_order:
            return None
        rng = random.Random(random.getrandbits(63))
        swaps = []
        if self.itm_swap_words:
            swaps.append(swap_one_word(caption, self.itm_swap_words, rng))
        if self.itm_swap_order:
            swaps.append(swap_phrase_order(caption, self.itm_swap_order, rng))
        swaps = [swapped for swapped in swaps if swapped is not None]
        if len(swaps) > 1:  # open to both kinds of swap: one of them at equal odds
            return swaps[rng.randrange(len(swaps))]
        return swaps[0] if swaps else None

    def _encode(self, text: str) -> torch.Tensor:
        return encode_prompt(self.tokenizer, text, self.max_text_len)[0]

    def _mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(random.getrandbits(63))
        return mask_tokens(
            input_ids, torch.isin(input_ids, self._special_ids), self.tokenizer.mask_token_id, len(self.tokenizer),
            self.mlm_probability, generator,
        )

    def _vqa(self, record: dict, flip: bool, where: str) -> dict:
        """question_id, question (words swapped if flipped), input_ids [T] and, with answers, vqa_targets [A]."""
        question = record.get("question")
        if "question_id" not in record or not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: a VQA record needs a 'question_id' and a non-empty 'question' str")
        question = self._flipped(question, flip)
        out = {"question_id": record["question_id"], "question": question, "input_ids": self._encode(question)}
        if self.is_train or record.get("answers"):
            answers = [self._flipped(answer, flip) for answer in _answers(record)]
            targets = torch.zeros(len(self._answer_index), dtype=torch.float32)
            for answer in {normalize_vqa_answer(a) for a in answers} & self._answer_index.keys():
                targets[self._answer_index[answer]] = vqa_soft_score(answer, answers)
            out["vqa_targets"] = targets
        return out
