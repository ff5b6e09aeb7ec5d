"""fiber_d2 models; importing this registers them with Detectron2's registries."""
from .backbone import FiberBackbone, FiberFPN, FusionMode, build_fiber_backbone, build_fiber_fpn_backbone
from .caption_model import FiberCaptionModel
from .coarse_model import FiberCoarseModel
from .meta_arch import FiberGroundingDetector
from .vqa_model import FiberVQAModel

__all__ = [
    "FiberBackbone",
    "FiberCaptionModel",
    "FiberCoarseModel",
    "FiberFPN",
    "FiberGroundingDetector",
    "FiberVQAModel",
    "FusionMode",
    "build_fiber_backbone",
    "build_fiber_fpn_backbone",
]
