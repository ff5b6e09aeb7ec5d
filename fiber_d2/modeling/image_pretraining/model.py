"""FiberImagePretrainer: FIBER's image encoder pretrained alone on box-labelled images (registered in
META_ARCH_REGISTRY), the stand-in for the ImageNet-pretrained Swin that FIBER starts from, where none can be had.

On FIBER-Shapes, a Swin trained from random weights by image-level objectives learns slowly (docs/EXPERIMENTS.md).
This model gives every token of every Swin output stage a target instead, from a detection data set's boxes
(Detectron2's DatasetMapper: `image` [3, H, W], `instances.gt_boxes` in pixels, `instances.gt_classes` in [0, K)):
  loss_cover   sigmoid BCE per token and class: the central part of a box of that class (the box scaled about its
               centre by MODEL.FIBER.IMAGE_PRETRAINING.COVER_SCALE, as FCOS's centre sampling) contains the token's
               centre (a whole box would also label the background around a star or a cross as the object);
  loss_centre  sigmoid BCE per token and class: the centre of a box of that class falls in the token's cell;
  loss_presence  sigmoid BCE per image and class, from the mean of the last stage's tokens: the image holds that class.
Each is a mean over tokens (or images) of the sum over the K classes; the dense ones are summed over the stages and
loss_presence is weighted by MODEL.FIBER.IMAGE_PRETRAINING.PRESENCE_LOSS_WEIGHT.

The state dict holds a whole FiberBackbone under `backbone.` (text side and fusion untouched and frozen), so a
checkpoint of this model starts any coarse model through MODEL.WEIGHTS; the classifiers sit under `classifiers.`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..backbone import FiberBackbone


def token_targets(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    grid: tuple[int, int],
    stride: int,
    cover_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes [M, 4] (x0, y0, x1, y1 pixels), classes [M] -> (cover, centre), each [K, H, W] of 0/1 for the token grid
    `grid` = (H, W) of cell size `stride` pixels; cover uses the boxes scaled by `cover_scale` about their centres."""
    height, width = grid
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (cover_scale / 2)
    inner = torch.cat([centres - half, centres + half], dim=1)
    cover = boxes.new_zeros(num_classes, height * width)
    centre = boxes.new_zeros(num_classes, height, width)
    if len(boxes):
        ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
        xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
        inside_x = (xs[None] >= inner[:, 0:1]) & (xs[None] <= inner[:, 2:3])  # [M, W]
        inside_y = (ys[None] >= inner[:, 1:2]) & (ys[None] <= inner[:, 3:4])  # [M, H]
        inside = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1).to(boxes.dtype)  # [M, H*W]
        cover.index_add_(0, classes, inside).clamp_(max=1)
        cell_x = (centres[:, 0] // stride).long().clamp(0, width - 1)
        cell_y = (centres[:, 1] // stride).long().clamp(0, height - 1)
        centre[classes, cell_y, cell_x] = 1
    return cover.view(num_classes, height, width), centre


@META_ARCH_REGISTRY.register()
class FiberImagePretrainer(nn.Module):
    """The Swin of a FiberBackbone (fusion off) + a 1x1 classifier per output stage and one on the pooled last stage."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberBackbone,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        prior_prob: float = 0.01,
        presence_loss_weight: float = 0.2,
        cover_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"FiberImagePretrainer needs num_classes > 0, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.presence_loss_weight = presence_loss_weight
        if not 0 < cover_scale <= 1:
            raise ValueError(f"MODEL.FIBER.IMAGE_PRETRAINING.COVER_SCALE must be in (0, 1], got {cover_scale}")
        self.cover_scale = cover_scale
        image = backbone.image
        self.stages = list(image.out_features)
        if image.stage_names[-1] not in self.stages:
            raise ValueError(
                f"FiberImagePretrainer reads {image.stage_names[-1]!r}; add it to MODEL.FIBER.SWIN.OUT_FEATURES"
            )
        channels = {name: image.num_features[image.stage_names.index(name)] for name in self.stages}
        self.classifiers = nn.ModuleDict(
            {name: nn.Conv2d(channels[name], 2 * num_classes, 1) for name in self.stages}
            | {"presence": nn.Linear(channels[image.stage_names[-1]], num_classes)}
        )
        bias = -math.log((1 - prior_prob) / prior_prob)
        for layer in self.classifiers.values():
            nn.init.constant_(layer.bias, bias)
        for parameter in [*backbone.text.parameters(), *(p for n, p in image.named_parameters() if ".i2t." in n)]:
            parameter.requires_grad_(False)  # never read here; kept so the checkpoint starts a whole FIBER model
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        if not isinstance(backbone, FiberBackbone):
            raise TypeError(
                "FiberImagePretrainer needs MODEL.BACKBONE.NAME 'build_fiber_backbone', got "
                f"{type(backbone).__name__}"
            )
        return {
            "backbone": backbone,
            "num_classes": cfg.MODEL.FIBER.IMAGE_PRETRAINING.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "prior_prob": cfg.MODEL.FIBER.IMAGE_PRETRAINING.PRIOR_PROB,
            "presence_loss_weight": cfg.MODEL.FIBER.IMAGE_PRETRAINING.PRESENCE_LOSS_WEIGHT,
            "cover_scale": cfg.MODEL.FIBER.IMAGE_PRETRAINING.COVER_SCALE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def logits(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Normalised padded images [B, 3, H, W] -> ({stage: [B, 2K, h, w] (cover, then centre)}, presence [B, K]);
        presence reads the mean of every last-stage token, those of the padding included."""
        image = self.backbone.image
        features = image.run(image.embed(images), image.num_blocks).outputs
        dense = {name: self.classifiers[name](features[name]) for name in self.stages}
        pooled = features[image.stage_names[-1]].mean(dim=(2, 3))
        return dense, self.classifiers["presence"](pooled)

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        images = ImageList.from_tensors(
            [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs],
            self.backbone.size_divisibility,
        )
        dense, presence = self.logits(images.tensor)
        if not self.training:
            return [{"class_scores": scores} for scores in presence.float().sigmoid()]
        missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
        if missing:
            raise ValueError(f"training inputs {missing} have no 'instances' (INPUT.DATASET_MAPPER_NAME 'detectron2')")
        instances = [x["instances"].to(self.device) for x in batched_inputs]
        k = self.num_classes
        present = torch.zeros_like(presence)
        for i, inst in enumerate(instances):
            present[i, inst.gt_classes] = 1
        presence_loss = F.binary_cross_entropy_with_logits(presence.float(), present) * k
        losses = {"loss_presence": presence_loss * self.presence_loss_weight}
        cover_loss, centre_loss = presence.new_zeros(()), presence.new_zeros(())
        for name in self.stages:
            logits = dense[name].float()
            stride = self.backbone.image.strides[name]
            targets = [
                token_targets(
                    inst.gt_boxes.tensor.float(), inst.gt_classes, k, tuple(logits.shape[2:]), stride, self.cover_scale
                )
                for inst in instances
            ]
            cover = torch.stack([t[0] for t in targets])
            centre = torch.stack([t[1] for t in targets])
            cover_loss = cover_loss + F.binary_cross_entropy_with_logits(logits[:, :k], cover) * k
            centre_loss = centre_loss + F.binary_cross_entropy_with_logits(logits[:, k:], centre) * k
        losses["loss_cover"] = cover_loss
        losses["loss_centre"] = centre_loss
        return losses
