"""FiberTextPretrainer: FIBER's text encoder pretrained alone by MLM (the stand-in for a pretrained RoBERTa)."""
from .model import FiberTextPretrainer

__all__ = ["FiberTextPretrainer"]
