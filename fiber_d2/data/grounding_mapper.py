"""GroundingDatasetMapper: a grounding or detection record -> the inputs of FiberGroundingDetector.

A record with a `caption` is a grounding record (MDETR format: boxes with `tokens_positive` character spans); its
caption is the prompt. Any other record is a detection record (Detectron2 dict, contiguous `category_id`); its prompt
is made of the cleaned `thing_classes` of its dataset (`record["source_dataset"]`, else the mapper's `dataset_name`):
in training, the image's categories plus random negatives (GLIP's od_to_grounding); at inference, the whole vocabulary
in chunks (computed once per dataset).

Output, always: `image` (uint8 [3, H, W], INPUT.FORMAT channels, resized), `height`, `width` (original size),
`image_id`, `file_name`.
Training: `caption` (str), `input_ids` (LongTensor [T], <s> ... </s>, T <= MAX_QUERY_LEN, unpadded), `instances`
(Instances of the resized image: `gt_boxes` Boxes XYXY, `gt_classes` LongTensor [N] = phrase index into
`grounding_phrases(record)` (-1 if the box is in none) or contiguous category id, `gt_positive_map` BoolTensor [N, T]).
Inference: `prompts` (list of PromptChunk) and `label_names` (all global label names, indexed by label id).
"""
from __future__ import annotations

import logging
import random
import re
from typing import Any, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .datasets.errors import check_on_bad_record
from .image_io import describe_record, read_record_image, read_record_image_or_skip
from .phrases import grounding_phrases, phrase_annotation_indices
from .positive_map import PromptError, char_spans_to_token_map, encode_prompt, encode_prompt_with_cut
from .prompts import PromptChunk, caption_chunk, clean_category_name, training_detection_prompt, vocabulary_chunks
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left"}


def _swap_word(word: str) -> str:
    swapped = _SWAP[word.lower()]
    if word.isupper():
        return swapped.upper()
    if word[0].isupper():
        return swapped.capitalize()
    return swapped


def has_left_right(caption: str) -> bool:
    """Whether `caption` contains the word "left" or "right" (whole word, any case)."""
    return _LEFT_RIGHT.search(caption) is not None


def swap_left_right(
    caption: str, spans_lists: Sequence[Sequence[Sequence[int]]]
) -> tuple[str, list[list[list[int]]]]:
    """Swap the whole words "left" and "right" (keeping lower/Capital/UPPER case), for a horizontally flipped image.

    spans_lists: for each target, its [start, end) character spans of `caption`. Returns the new caption and the
    spans moved so that each still covers the same words ("right" is one character longer than "left"). A span edge
    at the start or end of a swapped word moves with that word's edge.
    """
    pieces: list[str] = []
    edges: list[tuple[int, int, int, int]] = []  # per swapped word: old start, old end, shift before, shift after
    position = shift = 0
    for match in _LEFT_RIGHT.finditer(caption):
        word, swapped = match.group(0), _swap_word(match.group(0))
        pieces += [caption[position : match.start()], swapped]
        edges.append((match.start(), match.end(), shift, shift + len(swapped) - len(word)))
        shift = edges[-1][3]
        position = match.end()
    pieces.append(caption[position:])

    def moved(index: int) -> int:
        shift = 0
        for start, end, before, after in edges:
            if index <= start:  # before the word, or at its start
                return index + before
            if index < end:  # inside the word: stay inside the swapped word
                return min(index + before, end + after - 1)
            shift = after  # at or after the word's end
        return index + shift

    return "".join(pieces), [[[moved(int(s)), moved(int(e))] for s, e in spans] for spans in spans_lists]


class GroundingDatasetMapper:
    """Reads and resizes an image (in training, may flip it); builds its prompt(s) and token-aligned targets."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        resize: T.Augmentation,
        horizontal_flip: bool,
        image_format: str,
        tokenizer: Any,
        max_query_len: int,
        separator: str = ". ",
        chunk_size: int = 0,
        train_negatives: int = 85,
        train_shuffle: bool = True,
        swap_left_right_on_flip: bool = True,
        dataset_name: str | None = None,
        on_bad_record: str = "raise",
    ) -> None:
        """
        Args:
            is_train: training output (caption, input_ids, instances) or inference output (prompts, label_names).
            resize: the resize augmentation (ResizeShortestEdge). horizontal_flip: flip with probability 0.5.
            image_format: INPUT.FORMAT. tokenizer: a fast RoBERTa tokenizer. max_query_len: MODEL.FIBER.MAX_QUERY_LEN.
            separator, chunk_size, train_negatives, train_shuffle: MODEL.FIBER.PROMPT.*.
            swap_left_right_on_flip: INPUT.FLIP_SWAP_LEFT_RIGHT (False: never flip a caption with left/right).
            dataset_name: the dataset of detection records without `source_dataset`.
            on_bad_record: DATASETS.ON_BAD_RECORD. An image that is missing, empty, corrupt, truncated or not of the
                record's size raises an ImageError naming dataset, file and image_id ("raise"), or, in training
                only, is logged and the record skipped ("skip": the mapper returns None and Detectron2's loader
                takes another record). At inference it always raises: a skipped image would go unevaluated.
        """
        check_on_bad_record(on_bad_record)
        self.is_train = is_train
        self.resize = resize
        self.horizontal_flip = horizontal_flip
        self.image_format = image_format
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.separator = separator
        self.chunk_size = chunk_size
        self.train_negatives = train_negatives
        self.train_shuffle = train_shuffle
        self.swap_left_right_on_flip = swap_left_right_on_flip
        self.dataset_name = dataset_name
        self.on_bad_record = on_bad_record
        self._names: dict[str, list[str]] = {}
        self._chunks: dict[str, list[PromptChunk]] = {}
        # inference: the last image read, (file, (height, width), resized [C, H, W] tensor); see `_test_image`
        self._last_image: tuple[str, tuple[int, int], torch.Tensor] | None = None
        logger.info("[GroundingDatasetMapper] %s: %s, horizontal flip %s", "training" if is_train else "inference",
                    resize, horizontal_flip)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True, dataset_name: str | None = None) -> dict[str, Any]:
        if is_train:
            resize = T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            )
        else:
            resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for grounding data, got {cfg.INPUT.RANDOM_FLIP!r}"
            )
        prompt = cfg.MODEL.FIBER.PROMPT
        return {
            "is_train": is_train,
            "resize": resize,
            "horizontal_flip": is_train and cfg.INPUT.RANDOM_FLIP == "horizontal",
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": load_tokenizer(cfg.MODEL.FIBER.TOKENIZER),
            "max_query_len": cfg.MODEL.FIBER.MAX_QUERY_LEN,
            "separator": prompt.SEPARATOR,
            "chunk_size": prompt.CHUNK_SIZE,
            "train_negatives": prompt.TRAIN_NEGATIVES,
            "train_shuffle": prompt.TRAIN_SHUFFLE,
            "swap_left_right_on_flip": cfg.INPUT.FLIP_SWAP_LEFT_RIGHT,
            "dataset_name": dataset_name,
            "on_bad_record": cfg.DATASETS.ON_BAD_RECORD,
        }

    # ----- detection vocabularies (cached per dataset) -----

    def category_names(self, dataset_name: str) -> list[str]:
        """The cleaned `thing_classes` of a detection dataset, in contiguous id order (cached)."""
        if dataset_name not in self._names:
            classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
            if not classes:
                raise PromptError(
                    f"dataset {dataset_name!r} has no thing_classes in its metadata: cannot build its detection prompts"
                )
            self._names[dataset_name] = [clean_category_name(name) for name in classes]
        return self._names[dataset_name]

    def vocabulary(self, dataset_name: str) -> list[PromptChunk]:
        """The inference prompts of a detection dataset's whole vocabulary (built once, then the same objects)."""
        if dataset_name not in self._chunks:
            self._chunks[dataset_name] = vocabulary_chunks(
                self.category_names(dataset_name), self.tokenizer, self.max_query_len, self.chunk_size, self.separator
            )
        return self._chunks[dataset_name]

    # ----- the mapping -----

    def __call__(self, dataset_dict: dict, short_edge: int | None = None) -> dict | None:
        """One record's model input; `short_edge` (training, DATALOADER.SIZE_GROUPING) replaces the shortest edge
        the resize augmentation would draw."""
        record = dict(dataset_dict)  # read_record_image may add width/height; nothing nested is modified
        where = self._where(record)
        if not self.is_train and not self.horizontal_flip:
            return self._inference_inputs(record, self._test_image(record, where), where)
        skip = self.is_train and self.on_bad_record == "skip"
        image = read_record_image_or_skip(record, self.image_format, where, skip)
        if image is None:
            return None
        is_grounding = "caption" in record

        if short_edge is None:
            resize = self.resize.get_transform(image)
        else:
            height, width = image.shape[:2]
            shape = T.ResizeShortestEdge.get_output_shape(height, width, short_edge, self.resize.max_size)
            resize = T.ResizeTransform(height, width, *shape, self.resize.interp)
        image = resize.apply_image(image)
        transforms = [resize]
        flip = self.horizontal_flip and random.random() < 0.5
        if flip and is_grounding and not self.swap_left_right_on_flip and has_left_right(record["caption"]):
            flip = False  # the caption would describe the mirrored scene wrongly
        if flip:
            transforms.append(T.HFlipTransform(image.shape[1]))
            image = transforms[-1].apply_image(image)

        image_tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return self._inference_inputs(record, image_tensor, where)
        out = {
            "image": image_tensor,
            "height": record["height"],
            "width": record["width"],
            "image_id": record.get("image_id"),
            "file_name": record["file_name"],
        }

        annotations = [(i, a) for i, a in enumerate(record.get("annotations", [])) if a.get("iscrowd", 0) == 0]
        if is_grounding:
            caption, input_ids, offsets, targets = self._grounding_targets(record, annotations, flip, where)
        else:
            caption, input_ids, offsets, targets = self._detection_targets(record, annotations, where)
        # targets: (annotation index, annotation, class, spans) per kept box
        image_size = image.shape[:2]
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(self._transformed_boxes([t[1] for t in targets], T.TransformList(transforms),
                                                           image_size))
        instances.gt_classes = torch.tensor([t[2] for t in targets], dtype=torch.long)
        instances.gt_positive_map = char_spans_to_token_map(
            offsets, [t[3] for t in targets], len(input_ids), [f"{where}, annotation {t[0]}" for t in targets], caption
        )
        out.update(caption=caption, input_ids=input_ids, instances=instances[instances.gt_boxes.nonempty()])
        return out

    @staticmethod
    def _transformed_boxes(annotations: list[dict], transform: T.Transform, image_size) -> torch.Tensor:
        """XYXY boxes in the transformed image, clipped to it (as Detectron2's transform_instance_annotations)."""
        if not annotations:
            return torch.zeros((0, 4), dtype=torch.float32)
        boxes = np.array(
            [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float64
        )
        boxes = transform.apply_box(boxes).clip(min=0)
        boxes = np.minimum(boxes, [image_size[1], image_size[0], image_size[1], image_size[0]])
        return torch.as_tensor(boxes, dtype=torch.float32)

    def _test_image(self, record: dict, where: str) -> torch.Tensor:
        """Inference without flips: the record's image read and resized, [C, H, W] uint8 (the record gets `height`
        and `width`). The last one is kept, so the consecutive records of one image (its referring expressions or
        captions) read and resize it once."""
        name, size = record["file_name"], (record.get("height"), record.get("width"))
        last = self._last_image
        if last is None or last[0] != name or any(s not in (None, c) for s, c in zip(size, last[1])):
            image = read_record_image(record, self.image_format, where)  # sets (and checks) height and width
            image = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            self._last_image = last = (name, (record["height"], record["width"]), tensor)
        record["height"], record["width"] = last[1]
        return last[2]

    def _inference_inputs(self, record: dict, image: torch.Tensor, where: str) -> dict:
        """The model's inputs at inference: the image [C, H, W], the original size and the prompt chunks."""
        out = {
            "image": image,
            "height": record["height"],
            "width": record["width"],
            "image_id": record.get("image_id"),
            "file_name": record["file_name"],
        }
        if "caption" in record:
            chunk = self._grounding_chunk(record, where)
            out.update(prompts=[chunk], label_names=list(chunk.label_names))
        else:
            dataset = self._dataset_of(record, where)
            out.update(prompts=self.vocabulary(dataset), label_names=self.category_names(dataset))
        return out

    def _where(self, record: dict) -> str:
        return describe_record(record, self.dataset_name)

    def _dataset_of(self, record: dict, where: str) -> str:
        name = record.get("source_dataset") or self.dataset_name
        if not name:
            raise PromptError(
                f"{where}: a detection record (no 'caption') needs 'source_dataset' (set by "
                "load_grounding_dataset_dicts) or the mapper's dataset_name to find its category names"
            )
        return name

    def _grounding_chunk(self, record: dict, where: str) -> PromptChunk:
        phrases = grounding_phrases(record)
        if not phrases:
            raise PromptError(f"{where}: the record has no phrase to ground (no tokens_positive)")
        return caption_chunk(record["caption"], phrases, self.tokenizer, self.max_query_len, where)

    def _grounding_targets(self, record: dict, annotations: list[tuple[int, dict]], flip: bool, where: str):
        caption = record["caption"]
        phrases = grounding_phrases(record)
        members = phrase_annotation_indices(record, phrases)
        spans = [[[int(s), int(e)] for s, e in a["tokens_positive"]] for _, a in annotations]
        classes = [next((p for p, m in enumerate(members) if i in m), -1) for i, _ in annotations]
        if flip and self.swap_left_right_on_flip:
            caption, spans = swap_left_right(caption, spans)
        input_ids, offsets, cut = encode_prompt_with_cut(self.tokenizer, caption, self.max_query_len)
        keep = [k for k, target_spans in enumerate(spans) if all(end <= cut for _, end in target_spans)]
        if cut < len(caption):
            logger.warning(
                "%s: caption longer than MODEL.FIBER.MAX_QUERY_LEN = %d tokens, truncated after character %d; "
                "dropped %d of %d boxes whose phrase was cut",
                where, self.max_query_len, cut, len(spans) - len(keep), len(spans),
            )
        targets = [(annotations[k][0], annotations[k][1], classes[k], spans[k]) for k in keep]
        return caption, input_ids, offsets, targets

    def _detection_targets(self, record: dict, annotations: list[tuple[int, dict]], where: str):
        names = self.category_names(self._dataset_of(record, where))
        category_ids = [int(a["category_id"]) for _, a in annotations]
        bad = sorted({c for c in category_ids if not 0 <= c < len(names)})
        if bad:
            raise PromptError(f"{where}: category ids {bad} are outside the dataset's {len(names)} categories")
        caption, label_ids, label_spans = training_detection_prompt(
            category_ids, names, self.train_negatives, self.train_shuffle, random, self.tokenizer,
            self.max_query_len, self.separator,
        )
        span_of = dict(zip(label_ids, label_spans))
        targets = [(i, a, c, [span_of[c]]) for (i, a), c in zip(annotations, category_ids) if c in span_of]
        if len(targets) < len(annotations):
            logger.debug("%s: dropped %d boxes whose category did not fit in the prompt",
                         where, len(annotations) - len(targets))
        input_ids, offsets = encode_prompt(self.tokenizer, caption, self.max_query_len)
        return caption, input_ids, offsets, targets
