"""The grounding head: a DyHead tower on the FPN levels, then per anchor box deltas, centerness and token alignment.

Alignment (GLIP's dot-product token head, FIBER's fine stage): with t = L2-normalised text features [B, T, D],
    logit[b, a, j] = <v[b, a], P(t[b, j] / 2)> / exp(log_scale) + <t[b, j], bias_lang> + bias0,
where v are the tower's features at anchor a (C channels) and P: D -> C. Logits are clamped to +-50000. The text
features are the backbone's last layer output with padding tokens zeroed; padding columns carry no meaning and are
masked by the loss and ignored at inference.
"""
from __future__ import annotations

import math

import torch
from detectron2.layers import Conv2d
from torch import nn

from .dyhead import DyHeadTower

LOGIT_CLAMP = 50000.0


class LevelScale(nn.Module):
    """A learnable scalar (init 1) that multiplies one FPN level's box deltas."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GroundingHead(nn.Module):
    """DyHead tower + 1x1 box/centerness predictors + token alignment logits; one anchor per location.

    The 1x1 predictors keep their convolution parameters (official names and shapes) and run as one matrix product
    (the same values; a 1x1 convolution to 1 or 4 channels takes oneDNN 0.3 ms per call in bfloat16).

    log_scale: initial value of the learnable log temperature (GLIP/FIBER: 0; negative values sharpen the logits).
    """

    def __init__(
        self,
        *,
        channels: int,
        text_dim: int,
        num_levels: int,
        num_convs: int = 6,
        norm_groups: int = 16,
        deformable: bool = True,
        dyrelu: bool = True,
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
    ) -> None:
        super().__init__()
        self.tower = DyHeadTower(channels, num_convs, norm_groups=norm_groups, deformable=deformable, dyrelu=dyrelu)
        self.bbox_pred = Conv2d(channels, 4, kernel_size=1)
        self.centerness = Conv2d(channels, 1, kernel_size=1)
        self.scales = nn.ModuleList(LevelScale() for _ in range(num_levels))
        self.text_projection = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale)]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        for layer in (self.bbox_pred, self.centerness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(
        self, features: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """features: FPN levels [B, C, H_l, W_l]; text [B, T, D]; text_mask [B, T] (True on real tokens).

        Returns per level, anchors in Detectron2's order (row-major over the map): token logits [B, H_l*W_l, T],
        box deltas [B, H_l*W_l, 4] and centerness logits [B, H_l*W_l].
        """
        if len(features) != len(self.scales):
            raise ValueError(f"the head was built for {len(self.scales)} FPN levels, got {len(features)}")
        text = nn.functional.normalize(text * text_mask.unsqueeze(-1).to(text.dtype), p=2, dim=-1)
        tokens = self.text_projection(text / 2.0)  # [B, T, C]
        token_bias = text @ self.bias_lang + self.bias0  # [B, T]
        inverse_temperature = torch.exp(-self.log_scale)
        # The two 1x1 convolutions as one product with the anchors' features: [4 + 1, C] (box deltas, centerness).
        box_weight = torch.cat([self.bbox_pred.weight, self.centerness.weight]).flatten(1)
        box_bias = torch.cat([self.bbox_pred.bias, self.centerness.bias])
        token_logits, box_deltas, centerness = [], [], []
        for level, feature in enumerate(self.tower(features)):
            queries = _flatten_anchors(feature)  # [B, A, C]
            logits = queries @ tokens.transpose(1, 2) * inverse_temperature + token_bias.unsqueeze(1)
            token_logits.append(logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP))
            boxes = nn.functional.linear(queries, box_weight, box_bias)  # [B, A, 5]
            box_deltas.append(self.scales[level](boxes[..., :4]))
            centerness.append(boxes[..., 4])
        return token_logits, box_deltas, centerness


def _flatten_anchors(x: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] -> [B, H*W, K]."""
    return x.flatten(2).transpose(1, 2)
