"""fiber_d2 models; importing this registers them with Detectron2's registries."""
from .backbone import FiberBackbone, FusionMode, build_fiber_backbone

__all__ = ["FiberBackbone", "FusionMode", "build_fiber_backbone"]
