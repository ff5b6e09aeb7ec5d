"""FiberPredictor: Detectron2's DefaultPredictor for prompts. `FiberPredictor(cfg)(image, "red circle. blue star")`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..data.prompts import PromptChunk, clean_category_name, vocabulary_chunks
from ..data.tokenizer import load_tokenizer
from ..modeling import FiberGroundingDetector


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


class FiberPredictor:
    """Load a grounding model from `cfg` (MODEL.WEIGHTS) and detect the phrases of a prompt in single images.

    `__call__(image, prompt)` takes a BGR image (as cv2 reads it, like DefaultPredictor), a numpy array [H, W, 3], and a
    prompt: names separated by MODEL.FIBER.PROMPT.SEPARATOR, or a list of names. It returns
    {"instances": Instances (original pixels) with pred_boxes, scores, pred_classes (index into label_names)},
    "label_names": the names}. Prompts longer than the text limit run in chunks and are merged.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        if not isinstance(self.model, FiberGroundingDetector):
            built = type(self.model).__name__
            raise ValueError(f"FiberPredictor needs a FiberGroundingDetector; the config builds {built}")
        self.model.eval()
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
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

    @torch.no_grad()
    def __call__(self, image: np.ndarray, prompt: str | Sequence[str]) -> dict:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an image array [H, W, 3], got shape {tuple(image.shape)}")
        names = self.prompt_names(prompt)
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width, "prompts": self.prompt_chunks(names)}
        instances: Instances = self.model([inputs])[0]["instances"]
        return {"instances": instances, "label_names": names}
