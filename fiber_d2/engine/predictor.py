"""FiberPredictor: Detectron2's DefaultPredictor for prompts. `FiberPredictor(cfg)(image, "red circle. blue star")`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model

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
    """Load a grounding model from `cfg` (MODEL.WEIGHTS) and detect the phrases of a prompt in images.

    `__call__(image, prompt)` takes a BGR image (as cv2 reads it, like DefaultPredictor), a numpy array [H, W, 3], and a
    prompt: names separated by MODEL.FIBER.PROMPT.SEPARATOR, or a list of names. It returns
    {"instances": Instances (original pixels) with pred_boxes, scores, pred_classes (index into label_names)},
    "label_names": the names}. Prompts longer than the text limit run in chunks and are merged.
    `predict_batch(images, prompt)` does the same for several images, batching those that pad to the same size.
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

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image resized to (height, width) is padded to in the model's ImageList."""
        stride = max(self.model.backbone.size_divisibility, 1)
        return -(-height // stride) * stride, -(-width // stride) * stride

    def _model_input(self, image: np.ndarray, prompts: list[PromptChunk]) -> dict:
        """One BGR image [H, W, 3] -> the model's input dict: resized as for testing, in INPUT.FORMAT."""
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "prompts": prompts}

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray], prompt: str | Sequence[str]) -> list[dict]:
        """Detect the phrases of `prompt` in each BGR image; one output dict per image, as `__call__` returns.

        Images are resized as `__call__` resizes them. Those whose resized sizes pad to the same size run as one
        forward; the others run in separate forwards, because the model has no padding mask (Swin windows, the
        image-text fusion and the DyHead see the padded border), so padding an image further would change its
        detections. The results are therefore those of `__call__` on each image, whatever the batch holds.
        """
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {index}: expected an array [H, W, 3], got shape {tuple(image.shape)}")
        names = self.prompt_names(prompt)
        chunks = self.prompt_chunks(names)
        inputs = [self._model_input(image, chunks) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, x in enumerate(inputs):
            groups.setdefault(self.padded_size(*x["image"].shape[1:]), []).append(index)
        outputs: list[dict] = [{} for _ in inputs]
        for indices in groups.values():
            for index, output in zip(indices, self.model([inputs[i] for i in indices])):
                outputs[index] = {"instances": output["instances"], "label_names": list(names)}
        return outputs

    def __call__(self, image: np.ndarray, prompt: str | Sequence[str]) -> dict:
        return self.predict_batch([image], prompt)[0]
