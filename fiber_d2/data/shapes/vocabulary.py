"""The attribute vocabulary of FIBER-Shapes: shapes, colours, sizes, backgrounds, and the category lists built on it."""
from typing import Dict, List, Tuple

import numpy as np

# Detection categories, in category-id order (ids 1..6).
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
SHAPE_PLURALS: Dict[str, str] = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
# The shape each shape word names, singular or plural ("circles" -> "circle").
SHAPE_OF_WORD: Dict[str, str] = {**{shape: shape for shape in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()}}

# Named colours and their nominal RGB values (0-255); objects get at most COLOUR_JITTER per channel on top.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "purple": (135, 50, 185),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOUR_JITTER = 12

# Size classes as circumradius ranges in pixels (the shape fits in a circle of that radius), [low, high].
SIZES: Dict[str, Tuple[int, int]] = {"small": (12, 20), "large": (36, 56)}

# Background textures, and the word used for each in captions ("on a striped background").
BACKGROUNDS: Dict[str, str] = {
    "noise": "noisy",
    "gradient": "gradient",
    "stripes": "striped",
    "checker": "checkered",
    "blotches": "blotchy",
}

Combination = Tuple[str, str]  # (colour, shape)


def colorshape_name(colour: str, shape: str) -> str:
    """Category name of a colour-shape combination, e.g. "red circle"."""
    return f"{colour} {shape}"


def shape_categories() -> List[dict]:
    """COCO categories for the shapes: ids 1..len(SHAPES)."""
    return [{"id": i + 1, "name": shape, "supercategory": "shape"} for i, shape in enumerate(SHAPES)]


def colorshape_categories() -> List[dict]:
    """COCO categories for every colour-shape combination, shape-major (ids as in `colorshape_id`)."""
    return [
        {"id": colorshape_id(colour, shape), "name": colorshape_name(colour, shape), "supercategory": shape}
        for shape in SHAPES
        for colour in COLOURS
    ]


def shape_id(shape: str) -> int:
    """Category id of a shape in `shape_categories()`."""
    return SHAPES.index(shape) + 1


def colorshape_id(colour: str, shape: str) -> int:
    """Category id of a colour-shape combination in `colorshape_categories()`."""
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour) + 1


def choose_heldout_combinations(rng: np.random.Generator) -> List[Combination]:
    """Pick one held-out colour for each shape, every colour used at most once.

    Every shape then still occurs with len(COLOURS) - 1 colours and every colour with at least len(SHAPES) - 1 shapes
    in train/val. Returned sorted by shape order.
    """
    colours = list(COLOURS)
    picked = rng.permutation(len(colours))[: len(SHAPES)]
    return [(colours[int(c)], shape) for c, shape in zip(picked, SHAPES)]


def all_combinations() -> List[Combination]:
    """Every (colour, shape) pair, shape-major (the order of `colorshape_categories()`)."""
    return [(colour, shape) for shape in SHAPES for colour in COLOURS]
