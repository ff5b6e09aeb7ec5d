"""FIBER-Shapes: a synthetic vision-language benchmark (coloured shapes on textured backgrounds) written in the formats
of the real FIBER datasets (docs/DATA_FORMATS.md). `generate_fiber_shapes(root)` builds it."""
from .generate import GENERATOR_VERSION, SPLITS, GenerationReport, generate_fiber_shapes, heldout_combinations
from .generate import load_complete_meta, load_split_scenes

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "GenerationReport",
    "generate_fiber_shapes",
    "heldout_combinations",
    "load_complete_meta",
    "load_split_scenes",
]
