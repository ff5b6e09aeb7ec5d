"""FIBER's fused Swin + RoBERTa backbone (registered as "build_fiber_backbone")."""
from .fused_backbone import FiberBackbone, build_fiber_backbone
from .fusion import FusionMode
from .swin import ImageState, SwinTransformer
from .text_encoder import RobertaTextEncoder, TextState

__all__ = [
    "FiberBackbone",
    "FusionMode",
    "ImageState",
    "RobertaTextEncoder",
    "SwinTransformer",
    "TextState",
    "build_fiber_backbone",
]
