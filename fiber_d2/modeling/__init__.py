"""fiber_d2 models; importing this registers them with Detectron2's registries."""
from .backbone import FiberBackbone, FiberFPN, FusionMode, build_fiber_backbone, build_fiber_fpn_backbone
from .coarse_model import FiberCoarseModel
from .meta_arch import FiberGroundingDetector

__all__ = [
    "FiberBackbone",
    "FiberCoarseModel",
    "FiberFPN",
    "FiberGroundingDetector",
    "FusionMode",
    "build_fiber_backbone",
    "build_fiber_fpn_backbone",
]
