"""fiber_d2: FIBER (Fusion-In-the-Backbone transformER, Dou et al., NeurIPS 2022) for Detectron2."""
__version__ = "0.1.0"
