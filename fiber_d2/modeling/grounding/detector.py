"""FiberGroundingDetector: FIBER's fine stage as a Detectron2 meta-architecture (registered in META_ARCH_REGISTRY).

images + prompt tokens -> fused backbone + FPN (P3-P7) -> DyHead grounding head -> per anchor: token alignment
logits, box deltas, centerness. Training: ATSS assignment, focal token-alignment, GIoU and centerness losses.
Inference: token scores -> label scores through each prompt's label->token map, NMS per label; long vocabularies are
given as several prompt chunks and their detections merged. With MODEL.FIBER.PROMPT.REUSE_LOWER, the text-independent
lower backbone runs once per image and once per distinct prompt (cached across images), and only the fused upper
part, the FPN and the head run per chunk, MODEL.FIBER.PROMPT.CHUNK_BATCH chunks at a time (chunked_inference.py).
MODEL.FIBER.INFERENCE_DTYPE "bfloat16" / "float16" runs inference under autocast (evaluation and FiberPredictor
included); anchors, box decoding, scores and NMS stay float32.

Inputs (one dict per image, as `GroundingDatasetMapper` writes them): `image` [3, H, W] in INPUT.FORMAT, `height`,
`width`; training: `input_ids` [T] and `instances` with `gt_boxes`, `gt_positive_map` [N, T]; inference: `prompts`
(chunks with `input_ids` [T], `label_token_map` [L, T], `label_ids` [L]). Output per image: {"instances": Instances
with `pred_boxes` (original image pixels), `scores`, `pred_classes` = global label ids (a detection dataset's
contiguous category ids, or a grounding record's phrase index)}.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from torch import nn

from ..backbone import FiberFPN
from ..backbone.text_encoder import TextState, pad_text_states
from .atss import ATSSMatcher
from .chunked_inference import TextStateCache, group_identical_images, own_padding
from .head import GroundingHead
from .inference import merge_chunk_detections, postprocess_detections
from .loss import grounding_losses, pad_targets

if TYPE_CHECKING:
    from ...data.prompts import PromptChunk

HeadOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]
# MODEL.FIBER.INFERENCE_DTYPE -> the autocast dtype of inference (float32: no autocast).
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@META_ARCH_REGISTRY.register()
class FiberGroundingDetector(nn.Module):
    """Fused backbone + FPN + GroundingHead, trained and evaluated on prompts (phrases or category names)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberFPN,
        head: GroundingHead,
        head_in_features: Sequence[str],
        anchor_generator: DefaultAnchorGenerator,
        box2box_transform: Box2BoxTransform,
        matcher: ATSSMatcher,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pad_token_id: int,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reg_loss_weight: float = 2.0,
        score_thresh_test: float = 0.05,
        pre_nms_topk_test: int = 1000,
        nms_thresh_test: float = 0.6,
        max_detections_per_image: int = 100,
        reuse_lower: bool = True,
        chunk_batch: int = 1,
        text_cache_size: int = 64,
        inference_dtype: str = "float32",
    ) -> None:
        super().__init__()
        if chunk_batch < 1:
            raise ValueError(f"MODEL.FIBER.PROMPT.CHUNK_BATCH must be >= 1, got {chunk_batch}")
        if inference_dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"MODEL.FIBER.INFERENCE_DTYPE must be one of {sorted(INFERENCE_DTYPES)}, got {inference_dtype!r}"
            )
        self.inference_dtype = INFERENCE_DTYPES[inference_dtype]
        self.reuse_lower = reuse_lower
        self.chunk_batch = chunk_batch
        self.text_cache = TextStateCache(text_cache_size)
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.anchor_generator = anchor_generator
        if anchor_generator.num_cell_anchors != [1] * len(self.head_in_features):
            raise ValueError(
                f"the grounding head predicts one anchor per location; MODEL.ANCHOR_GENERATOR gives "
                f"{anchor_generator.num_cell_anchors} per level (use one size and one aspect ratio per level)"
            )
        self.box2box_transform = box2box_transform
        self.matcher = matcher
        self.pad_token_id = pad_token_id
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_loss_weight = reg_loss_weight
        self.score_thresh_test = score_thresh_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.nms_thresh_test = nms_thresh_test
        self.max_detections_per_image = max_detections_per_image
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        if not isinstance(backbone, FiberFPN):
            raise ValueError(
                f"FiberGroundingDetector needs MODEL.BACKBONE.NAME = 'build_fiber_fpn_backbone', got "
                f"{cfg.MODEL.BACKBONE.NAME!r}"
            )
        head_in_features = list(backbone.output_shape())  # p3..p7
        shapes = [backbone.output_shape()[name] for name in head_in_features]
        head_cfg = cfg.MODEL.FIBER.HEAD
        text_dim = backbone.bottom_up.text.model.config.hidden_size
        return {
            "backbone": backbone,
            "head": GroundingHead(
                channels=shapes[0].channels,
                text_dim=text_dim,
                num_levels=len(shapes),
                num_convs=head_cfg.NUM_CONVS,
                norm_groups=head_cfg.NORM_GROUPS,
                deformable=head_cfg.DEFORMABLE,
                dyrelu=head_cfg.DYRELU,
                prior_prob=head_cfg.PRIOR_PROB,
                log_scale=head_cfg.LOG_SCALE_INIT,
            ),
            "head_in_features": head_in_features,
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "box2box_transform": Box2BoxTransform(weights=head_cfg.BBOX_REG_WEIGHTS),
            "matcher": ATSSMatcher(topk=head_cfg.ATSS_TOPK),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pad_token_id": backbone.bottom_up.text.model.config.pad_token_id,
            "focal_alpha": head_cfg.FOCAL_ALPHA,
            "focal_gamma": head_cfg.FOCAL_GAMMA,
            "reg_loss_weight": head_cfg.REG_LOSS_WEIGHT,
            "score_thresh_test": head_cfg.SCORE_THRESH_TEST,
            "pre_nms_topk_test": head_cfg.PRE_NMS_TOPK_TEST,
            "nms_thresh_test": head_cfg.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "reuse_lower": cfg.MODEL.FIBER.PROMPT.REUSE_LOWER,
            "chunk_batch": cfg.MODEL.FIBER.PROMPT.CHUNK_BATCH,
            "text_cache_size": cfg.MODEL.FIBER.PROMPT.TEXT_CACHE_SIZE,
            "inference_dtype": cfg.MODEL.FIBER.INFERENCE_DTYPE,
        }

    def train(self, mode: bool = True) -> FiberGroundingDetector:
        """nn.Module.train; also empties the text state cache (train()/eval() mark a possible change of weights)."""
        self.text_cache.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict; also empties the text state cache, which the old weights computed."""
        self.text_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: Sequence[dict]) -> ImageList:
        """Normalise and pad the images to a batch [B, 3, H, W] (H, W multiples of the backbone's divisibility)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def pad_prompts(self, input_ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id sequences [T_i] -> ids [B, T] padded to the longest with the pad token, mask [B, T] (True: real)."""
        length = max(len(ids) for ids in input_ids)
        ids = torch.full((len(input_ids), length), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(input_ids), length), dtype=torch.bool, device=self.device)
        for i, sequence in enumerate(input_ids):
            ids[i, : len(sequence)] = sequence.to(self.device)
            mask[i, : len(sequence)] = True
        return ids, mask

    def run_head(self, images: ImageList, input_ids: torch.Tensor, text_mask: torch.Tensor) -> HeadOutputs:
        """Backbone + FPN + head -> per level: anchors [A_l, 4], token logits [B, A_l, T], deltas, centerness."""
        features, text = self.backbone(images.tensor, input_ids, text_mask.long())
        return self.predict(features, text, text_mask)

    def predict(self, features: dict[str, torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor) -> HeadOutputs:
        """FPN levels {p3..p7: [B, C, H_l, W_l]}, text [B, T, D], text_mask [B, T] (True: real token) -> per level:
        anchors [A_l, 4], token logits [B, A_l, T], box deltas [B, A_l, 4], centerness logits [B, A_l]."""
        levels = [features[name] for name in self.head_in_features]
        anchors = [boxes.tensor for boxes in self.anchor_generator(levels)]
        token_logits, box_deltas, centerness = self.head(levels, text, text_mask)
        return anchors, token_logits, box_deltas, centerness

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor] | list[dict[str, Instances]]:
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x or "input_ids" not in x]
        if missing:
            raise ValueError(f"training inputs {missing} lack 'instances' or 'input_ids' (use GroundingDatasetMapper)")
        images = self.preprocess_image(batched_inputs)
        input_ids, text_mask = self.pad_prompts([x["input_ids"] for x in batched_inputs])
        anchors, token_logits, box_deltas, centerness = self.run_head(images, input_ids, text_mask)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        gt_boxes, gt_valid, positive_maps = pad_targets(
            [instances.gt_boxes.tensor for instances in gt],
            [instances.gt_positive_map for instances in gt],
            input_ids.shape[1],
        )
        return grounding_losses(
            torch.cat(anchors),
            self.matcher(anchors, gt_boxes, gt_valid),
            gt_boxes,
            positive_maps,
            torch.cat(token_logits, dim=1),
            text_mask,
            torch.cat(box_deltas, dim=1),
            torch.cat(centerness, dim=1),
            self.box2box_transform,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            reg_loss_weight=self.reg_loss_weight,
        )

    @torch.no_grad()
    def inference(self, batched_inputs: Sequence[dict]) -> list[dict[str, Instances]]:
        """Run every prompt chunk of every image and merge each image's chunk detections."""
        missing = [i for i, x in enumerate(batched_inputs) if not x.get("prompts")]
        if missing:
            raise ValueError(
                f"inference inputs {missing} have no 'prompts' (use GroundingDatasetMapper or FiberPredictor)"
            )
        images = self.preprocess_image(batched_inputs)
        prompts = [x["prompts"] for x in batched_inputs]
        with self.inference_autocast():
            if self.reuse_lower:
                per_image = self.detect_reusing_lower(images, prompts)
            else:
                per_image = self.detect_chunk_by_chunk(images, prompts)
        results = []
        for x, chunks in zip(batched_inputs, per_image):
            merged = merge_chunk_detections(chunks, self.max_detections_per_image)
            height = x.get("height", merged.image_size[0])
            width = x.get("width", merged.image_size[1])
            results.append({"instances": detector_postprocess(merged, height, width)})
        return results

    def detect_chunk_by_chunk(
        self, images: ImageList, prompts: Sequence[Sequence[PromptChunk]]
    ) -> list[list[Instances]]:
        """The whole model per chunk index, the images that have that chunk as one batch.

        prompts[i]: the PromptChunks of image i. Returns per image its detections per chunk (input pixels).
        """
        per_image: list[list[Instances]] = [[] for _ in prompts]
        for chunk in range(max(len(chunks) for chunks in prompts)):
            indices = [i for i, chunks in enumerate(prompts) if chunk < len(chunks)]
            batch = [prompts[i][chunk] for i in indices]
            sub_images = ImageList(images.tensor[indices], [images.image_sizes[i] for i in indices])
            input_ids, text_mask = self.pad_prompts([prompt.input_ids for prompt in batch])
            outputs = self.run_head(sub_images, input_ids, text_mask)
            for row, (i, prompt) in enumerate(zip(indices, batch)):
                per_image[i].append(self.chunk_detections(outputs, row, prompt, images.image_sizes[i]))
        return per_image

    def detect_reusing_lower(
        self, images: ImageList, prompts: Sequence[Sequence[PromptChunk]]
    ) -> list[list[Instances]]:
        """The image lower part once per distinct image, at the image's own padded size (distinct images of one
        padded size as one batch); then the chunks of every input (e.g. the referring expressions of one image in a
        test batch), `chunk_batch` at a time across the images of that size: their cached text lower states padded
        together, their images' lower states, the fused upper part, FPN and head.

        Gives the detections of `detect_chunk_by_chunk` run on each input alone (to float rounding). Same arguments
        and result.
        """
        bottom_up = self.backbone.bottom_up
        per_image: list[list[Instances]] = [[] for _ in prompts]
        by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}  # padded size -> (group, padded image)
        groups = group_identical_images(images)
        for g, group in enumerate(groups):
            image = own_padding(images, group[0], self.backbone.size_divisibility)
            by_size.setdefault(tuple(image.shape[-2:]), []).append((g, image))
        for members in by_size.values():
            image_lower = bottom_up.encode_image_lower(torch.cat([image for _, image in members]))
            jobs = [
                (slot, i, prompt) for slot, (g, _) in enumerate(members) for i in groups[g] for prompt in prompts[i]
            ]
            for start in range(0, len(jobs), self.chunk_batch):
                batch = jobs[start : start + self.chunk_batch]
                slots = torch.tensor([slot for slot, _, _ in batch], device=self.device)
                image_state = image_lower if len(members) == 1 else image_lower.select(slots)
                text_state = pad_text_states([self.text_lower(prompt.input_ids) for _, _, prompt in batch])
                features, text = bottom_up.encode_upper(image_state, text_state)
                outputs = self.predict(self.backbone.pyramid(features), text, text_state.attention_mask.bool())
                for row, (_, i, prompt) in enumerate(batch):
                    per_image[i].append(self.chunk_detections(outputs, row, prompt, images.image_sizes[i]))
        return per_image

    def inference_autocast(self) -> torch.autocast:
        """Autocast to the inference dtype on the model's device (disabled for float32)."""
        enabled = self.inference_dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.inference_dtype, enabled=enabled)

    def text_lower(self, input_ids: torch.Tensor) -> TextState:
        """One prompt's token ids [T] -> its text state below the fused layers [1, T, D], from the cache if there."""
        embeddings = self.backbone.bottom_up.text.model.embeddings.word_embeddings.weight
        key = (tuple(input_ids.tolist()), embeddings.device, embeddings.dtype, self.inference_dtype)

        def compute() -> TextState:
            ids = input_ids.to(self.device).unsqueeze(0)
            return self.backbone.bottom_up.encode_text_lower(ids, torch.ones_like(ids))

        return self.text_cache.get(key, compute)

    def chunk_detections(
        self, outputs: HeadOutputs, row: int, prompt: PromptChunk, image_size: tuple[int, int]
    ) -> Instances:
        """Detections of batch row `row` of the head outputs for its PromptChunk `prompt` on an image of
        `image_size` (h, w, unpadded input): `postprocess_detections` with the test settings."""
        anchors, token_logits, box_deltas, centerness = outputs
        label_token_map = _pad_tokens(prompt.label_token_map.to(self.device), token_logits[0].shape[-1])
        with torch.autocast(self.device.type, enabled=False):  # scores and boxes in float32 whatever the head's dtype
            return postprocess_detections(
                anchors,
                [level[row].float() for level in token_logits],
                [level[row].float() for level in box_deltas],
                [level[row].float() for level in centerness],
                label_token_map,
                prompt.label_ids.to(self.device),
                image_size,
                self.box2box_transform,
                score_thresh=self.score_thresh_test,
                pre_nms_topk=self.pre_nms_topk_test,
                nms_thresh=self.nms_thresh_test,
                max_detections=self.max_detections_per_image,
            )


def _pad_tokens(token_map: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[N, T_i] bool -> [N, num_tokens], False on the padding tokens."""
    return F.pad(token_map, (0, num_tokens - token_map.shape[1]))
