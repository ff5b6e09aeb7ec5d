"""FiberFPN: Detectron2's FPN over the fused backbone, P3-P7 as in FIBER's fine stage ("build_fiber_fpn_backbone").

FIBER's FPN (GLIP's): C3-C5 (Swin stages 2-4) -> 1x1 laterals and 3x3 outputs with `MODEL.FPN.OUT_CHANNELS` channels,
P6 and P7 by stride-2 3x3 convolutions from P5 (ReLU between them). Unlike a plain Detectron2 backbone, the forward
pass takes the prompt too: forward(images, input_ids, attention_mask, fusion) -> ({p3..p7}, text hidden [B, T, D]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from torch import nn

from .fused_backbone import FiberBackbone, build_fiber_backbone
from .fusion import FusionMode


class FiberFPN(FPN):
    """FPN whose bottom-up network is a `FiberBackbone`; `pyramid` is the top-down pass on given bottom-up features."""

    def __init__(self, bottom_up: FiberBackbone, **kwargs) -> None:
        if not isinstance(bottom_up, FiberBackbone):
            raise TypeError(f"FiberFPN needs a FiberBackbone as its bottom-up network, got {type(bottom_up).__name__}")
        super().__init__(bottom_up=bottom_up, **kwargs)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        fusion: FusionMode | str = FusionMode.ON,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """images [B, 3, H, W], input_ids/attention_mask [B, T] -> ({p3..p7: [B, C, H/s, W/s]}, text [B, T, D])."""
        features, text = self.bottom_up(images, input_ids, attention_mask, fusion)
        return self.pyramid(features), text

    def pyramid(self, bottom_up_features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detectron2's top-down pass; the upsampling goes to each lateral's exact size (odd sizes allowed)."""
        results = []
        prev = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev))
        for name, lateral_conv, output_conv in zip(
            reversed(self.in_features[:-1]), self.lateral_convs[1:], self.output_convs[1:]
        ):
            lateral = lateral_conv(bottom_up_features[name])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            results.extend(top_levels(self.top_block, results[self._out_features.index(self.top_block.in_feature)]))
        return dict(zip(self._out_features, results))


def top_levels(top_block: nn.Module, feature: torch.Tensor) -> list[torch.Tensor]:
    """P6, P7 from P5 [B, C, H, W] by `top_block`. On a CPU under autocast they are computed in float32 and returned in
    the autocast dtype: oneDNN's bfloat16 backward of a stride-2 3x3 convolution of a 1x1 map (P6 of a batch padded to
    64 x 64 px or less) returns NaN now and then (3-11 of 60 random draws, measured with torch 2.14); these maps
    are small, so float32 costs little."""
    if feature.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return top_block(feature)
    with torch.autocast("cpu", enabled=False):
        levels = top_block(feature.float())
    return [level.to(feature.dtype) for level in levels]


@BACKBONE_REGISTRY.register()
def build_fiber_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FiberFPN:
    """MODEL.BACKBONE.NAME = "build_fiber_fpn_backbone": FiberBackbone + FPN on MODEL.FPN.IN_FEATURES, P6/P7 from P5."""
    bottom_up = build_fiber_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FiberFPN(
        bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
