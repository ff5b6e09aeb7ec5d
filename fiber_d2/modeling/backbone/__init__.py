"""FIBER's fused Swin + RoBERTa backbone ("build_fiber_backbone"), and with the FPN ("build_fiber_fpn_backbone")."""
from .fpn import FiberFPN, build_fiber_fpn_backbone
from .fused_backbone import FiberBackbone, build_fiber_backbone
from .fusion import FusionMode
from .swin import ImageState, SwinTransformer
from .text_encoder import RobertaTextEncoder, TextState

__all__ = [
    "FiberBackbone",
    "FiberFPN",
    "FusionMode",
    "ImageState",
    "RobertaTextEncoder",
    "SwinTransformer",
    "TextState",
    "build_fiber_backbone",
    "build_fiber_fpn_backbone",
]
