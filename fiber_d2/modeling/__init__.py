"""fiber_d2 models; importing this registers them with Detectron2's registries.

backbone/   the fused Swin + RoBERTa backbone and its FPN (shared by both families)
grounding/  the grounding detector (FIBER's fine stage)
coarse/     the coarse models (FIBER's coarse stage: pre-training and retrieval, VQA, captioning)
image_pretraining/  the Swin pretrained alone on box labels, where no ImageNet weights can be had
text_pretraining/   the text encoder pretrained alone by MLM, where no pretrained RoBERTa can be had
"""
from .backbone import FiberBackbone, FiberFPN, FusionMode, build_fiber_backbone, build_fiber_fpn_backbone
from .coarse import FiberCaptionModel, FiberCoarseModel, FiberVQAModel
from .grounding import FiberGroundingDetector
from .image_pretraining import FiberImagePretrainer
from .text_pretraining import FiberTextPretrainer

__all__ = [
    "FiberBackbone",
    "FiberCaptionModel",
    "FiberCoarseModel",
    "FiberFPN",
    "FiberGroundingDetector",
    "FiberImagePretrainer",
    "FiberTextPretrainer",
    "FiberVQAModel",
    "FusionMode",
    "build_fiber_backbone",
    "build_fiber_fpn_backbone",
]
