"""The coarse models (FIBER's coarse-grained stage: image-text pre-training and retrieval, VQA, captioning), on the
shared `CoarseModelBase` (base.py) with the coarse heads (heads.py) and objectives (losses.py): `FiberCoarseModel`
(model.py), `FiberVQAModel` (vqa_model.py), `FiberCaptionModel` (caption_model.py). Importing this registers them
with META_ARCH_REGISTRY."""
from .caption_model import FiberCaptionModel
from .model import FiberCoarseModel
from .vqa_model import FiberVQAModel

__all__ = ["FiberCaptionModel", "FiberCoarseModel", "FiberVQAModel"]
