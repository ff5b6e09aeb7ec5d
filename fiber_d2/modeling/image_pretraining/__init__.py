"""FiberImagePretrainer: FIBER's Swin pretrained alone on box labels (the stand-in for an ImageNet-pretrained Swin)."""
from .model import FiberImagePretrainer, token_targets

__all__ = ["FiberImagePretrainer", "token_targets"]
