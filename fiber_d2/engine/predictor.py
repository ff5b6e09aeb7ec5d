"""FiberPredictor: Detectron2's DefaultPredictor for prompts and captions.

    predictor = FiberPredictor(cfg)
    predictor(image, "red circle. blue star", score_threshold=0.3)        # detect the names of a prompt
    predictor.ground(image, "a red circle left of a blue star")           # ground the phrases of a caption
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torchvision.ops import nms

from ..checkpoint.checkpointer import FiberCheckpointer
from ..data.image_io import ImageError, check_image_array
from ..data.phrases import find_phrases
from ..data.positive_map import PromptError
from ..data.prompts import PromptChunk, caption_chunk, clean_category_name, vocabulary_chunks
from ..data.tokenizer import load_tokenizer
from ..modeling import FiberGroundingDetector

Spans = list[list[int]]


def split_prompt(prompt: str | Sequence[str], separator: str = ". ") -> list[str]:
    """"red circle. blue star." -> ["red circle", "blue star"]; a list of names is taken as it is (names cleaned)."""
    if isinstance(prompt, str):
        names = [name.strip() for name in prompt.split(separator.strip())]
    else:
        names = [str(name).strip() for name in prompt]
    names = [clean_category_name(name) for name in names if name.strip()]
    if not names:
        raise ValueError(f"the prompt {prompt!r} names nothing to detect")
    return names


def _as_phrases(spans: Sequence) -> list[Spans]:
    """Phrase spans as given ([start, end] or a list of them, per phrase) -> one list of [start, end] per phrase."""
    phrases = []
    for index, phrase in enumerate(spans):
        pairs = [phrase] if len(phrase) == 2 and all(isinstance(v, (int, np.integer)) for v in phrase) else phrase
        if not pairs or not all(len(pair) == 2 and all(isinstance(v, (int, np.integer)) for v in pair)
                                for pair in pairs):
            raise PromptError(f"spans[{index}] = {phrase!r}: expected [start, end] or a list of [start, end] (ints)")
        phrases.append([[int(start), int(end)] for start, end in pairs])
    return phrases


class FiberPredictor:
    """Load a grounding model from `cfg` (MODEL.WEIGHTS) and detect a prompt's names, or a caption's phrases, in images.

    Images are BGR (as cv2 reads them, like DefaultPredictor): numpy uint8 arrays [H, W, 3]. A prompt is names
    separated by MODEL.FIBER.PROMPT.SEPARATOR, or a list of names; prompts longer than the text limit run in chunks
    and are merged. Every call returns a dict:
      "instances": Instances in original pixels, sorted by decreasing score: pred_boxes, scores, pred_classes
                   (index into label_names);
      "label_names": the prompt's names or the caption's phrases, in label order;
      "text_labels": the label name of each detection (Hugging Face's `text_labels`);
      ("phrase_spans": from `ground`, the [start, end) character spans of each phrase).
    Options of every call: `score_threshold` keeps detections scoring at least this (None: all the model returns,
    i.e. above MODEL.FIBER.HEAD.SCORE_THRESH_TEST); `one_label_per_box` keeps, of boxes that overlap by more than
    MODEL.FIBER.HEAD.NMS_THRESH_TEST IoU whatever their labels, only the best (the model's NMS is per label, so one
    object can carry several labels).
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        if not isinstance(self.model, FiberGroundingDetector):
            built = type(self.model).__name__
            raise ValueError(f"FiberPredictor needs a FIBER grounding detector (MODEL.META_ARCHITECTURE "
                             f"FiberGroundingDetector); the config builds {built}")
        self.model.eval()
        FiberCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)  # no pickled code runs; wrong weights fail
        self.tokenizer = load_tokenizer(cfg.MODEL.FIBER.TOKENIZER)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"FiberPredictor reads RGB or BGR images; INPUT.FORMAT is {self.input_format!r}")
        self._chunk_cache: dict[tuple[str, ...], list[PromptChunk]] = {}

    def prompt_chunks(self, names: Sequence[str]) -> list[PromptChunk]:
        """The prompt chunks of a vocabulary (cached: a repeated prompt is tokenised once)."""
        key = tuple(names)
        if key not in self._chunk_cache:
            prompt_cfg = self.cfg.MODEL.FIBER.PROMPT
            self._chunk_cache[key] = vocabulary_chunks(
                list(names), self.tokenizer, self.cfg.MODEL.FIBER.MAX_QUERY_LEN, prompt_cfg.CHUNK_SIZE,
                prompt_cfg.SEPARATOR,
            )
        return self._chunk_cache[key]

    def prompt_names(self, prompt: str | Sequence[str]) -> list[str]:
        """The label names of a prompt, in the order of `pred_classes`."""
        return split_prompt(prompt, self.cfg.MODEL.FIBER.PROMPT.SEPARATOR)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image resized to (height, width) is padded to in the model's ImageList."""
        stride = max(self.model.backbone.size_divisibility, 1)
        return -(-height // stride) * stride, -(-width // stride) * stride

    def _model_input(self, image: np.ndarray, prompts: list[PromptChunk], name: str) -> dict:
        """One BGR image [H, W, 3] -> the model's input dict: resized as for testing, in INPUT.FORMAT."""
        image = check_image_array(image, name)
        height, width = image.shape[:2]
        resize = self.resize.get_transform(image)
        if min(resize.new_h, resize.new_w) < 1:
            raise ImageError(
                f"{name}: a {height}x{width} (height x width) image resized to at most INPUT.MAX_SIZE_TEST = "
                f"{self.cfg.INPUT.MAX_SIZE_TEST} pixels on its long side would be {resize.new_h}x{resize.new_w}; "
                f"expected a long side at most {2 * self.cfg.INPUT.MAX_SIZE_TEST} times the short side"
            )
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        resized = resize.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "prompts": prompts}

    def _detect(self, images: Sequence[np.ndarray], chunks: list[PromptChunk]) -> list[Instances]:
        """The model's detections of `chunks` in each image (original pixels), batching images of one padded size."""
        inputs = [self._model_input(image, chunks, f"image {index}") for index, image in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, x in enumerate(inputs):
            groups.setdefault(self.padded_size(*x["image"].shape[1:]), []).append(index)
        detections: dict[int, Instances] = {}
        for indices in groups.values():
            for index, output in zip(indices, self.model([inputs[i] for i in indices])):
                detections[index] = output["instances"].to("cpu")
        return [detections[index] for index in range(len(inputs))]

    def _output(self, instances: Instances, names: list[str], score_threshold: float | None,
                one_label_per_box: bool) -> dict:
        if score_threshold is not None:
            instances = instances[instances.scores >= score_threshold]
        if one_label_per_box:
            instances = instances[nms(instances.pred_boxes.tensor, instances.scores, self.model.nms_thresh_test)]
        text_labels = [names[label] for label in instances.pred_classes.tolist()]
        return {"instances": instances, "label_names": list(names), "text_labels": text_labels}

    @staticmethod
    def _check_threshold(score_threshold: float | None) -> None:
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1] or None, got {score_threshold!r}")

    @torch.no_grad()
    def predict_batch(
        self, images: Sequence[np.ndarray], prompt: str | Sequence[str], *, score_threshold: float | None = None,
        one_label_per_box: bool = False,
    ) -> list[dict]:
        """Detect the names of `prompt` in each BGR image; one output dict per image, as `__call__` returns.

        Images are resized as `__call__` resizes them. Those whose resized sizes pad to the same size run as one
        forward; the others run in separate forwards, because the model has no padding mask (Swin windows, the
        image-text fusion and the DyHead see the padded border), so padding an image further would change its
        detections. The results are therefore those of `__call__` on each image, whatever the batch holds.
        """
        self._check_threshold(score_threshold)
        names = self.prompt_names(prompt)
        detections = self._detect(images, self.prompt_chunks(names))
        return [self._output(instances, names, score_threshold, one_label_per_box) for instances in detections]

    def __call__(
        self, image: np.ndarray, prompt: str | Sequence[str], *, score_threshold: float | None = None,
        one_label_per_box: bool = False,
    ) -> dict:
        return self.predict_batch([image], prompt, score_threshold=score_threshold,
                                  one_label_per_box=one_label_per_box)[0]

    @torch.no_grad()
    def ground(
        self, image: np.ndarray, caption: str, spans: Sequence | None = None, *,
        score_threshold: float | None = None, one_label_per_box: bool = False,
    ) -> dict:
        """Phrase grounding of a free caption (GLIP's `run_on_web_image`): boxes for each phrase of `caption`.

        spans: per phrase, its [start, end) character span or a list of them; None finds the caption's phrases with
        `find_phrases`. The caption is the prompt, whole (it must fit MODEL.FIBER.MAX_QUERY_LEN tokens). The output
        also holds "phrase_spans"; label_names are the phrases' texts. Raises PromptError for a caption without
        phrases or a span that is malformed, outside the caption or covers no token.
        """
        self._check_threshold(score_threshold)
        if not isinstance(caption, str) or not caption.strip():
            raise PromptError(f"the caption {caption!r} is empty: nothing to ground")
        phrases = find_phrases(caption) if spans is None else _as_phrases(spans)
        if not phrases:
            raise PromptError(f"found no phrase in the caption {caption!r}: pass its phrases' spans")
        chunk = caption_chunk(caption, phrases, self.tokenizer, self.cfg.MODEL.FIBER.MAX_QUERY_LEN)
        (instances,) = self._detect([image], [chunk])
        output = self._output(instances, chunk.label_names, score_threshold, one_label_per_box)
        output["phrase_spans"] = phrases
        return output
