"""The grounding detector (FIBER's fine stage): `FiberGroundingDetector` (detector.py) with its DyHead grounding head
(head.py, dyhead.py, deform_conv.py), ATSS assignment (atss.py), losses (loss.py), post-processing (inference.py) and
chunked prompt inference (chunked_inference.py). Importing this registers the detector with META_ARCH_REGISTRY."""
from .detector import FiberGroundingDetector

__all__ = ["FiberGroundingDetector"]
