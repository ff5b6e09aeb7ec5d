"""Scene sampling for FIBER-Shapes: which objects an image holds, where they go, and the rendered picture.

Objects are placed one by one (later ones on top) at random positions, rejecting positions that would hide more than
30% of an earlier object or let two objects of the same colour touch. Boxes are the tight boxes of the pixels where an
object is visible (coverage >= 0.5), in integer pixels.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .render import paint, render_background, shape_mask
from .vocabulary import COLOUR_JITTER, COLOURS, SIZES, Combination

IMAGE_SIDE = (256, 512)  # range of image width and height, pixels
MIN_SIDE_DIFFERENCE = 32  # |width - height| >= this, pixels (no square images)
MAX_OBJECTS = 8
MIN_VISIBLE_FRACTION = 0.7  # of an object's coverage that must stay unoccluded
BORDER = 2  # free pixels between every shape and the image border
SAME_COLOUR_GAP = 4  # pixels between the patches of two objects of the same colour
PLACEMENT_TRIES = 30
MAX_ROTATION = {"circle": 0.0, "square": 25.0, "triangle": 25.0, "star": 36.0, "hexagon": 30.0, "cross": 25.0}  # deg
# Probabilities of starting a scene with a pair of objects that share the shape, the colour, or both.
PAIR_PROBABILITIES = {"same_shape": 0.3, "same_colour": 0.25, "same_both": 0.15}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. `box` is (x, y, w, h) in pixels; `area` the number of visible pixels."""

    shape: str
    colour: str
    size: str
    box: Tuple[int, int, int, int]
    area: int

    @property
    def center(self) -> Tuple[float, float]:
        """Centre (x, y) of the box, pixels."""
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0


@dataclass(frozen=True)
class Scene:
    """An image's content: size in pixels, background kind, and objects in drawing order (first is at the bottom)."""

    image_id: int
    width: int
    height: int
    background: str
    objects: Tuple[ShapeObject, ...]


@dataclass(frozen=True)
class _Spec:
    """What to draw for one object."""

    colour: str
    shape: str
    size: str


def pick(rng: np.random.Generator, items: Sequence):
    """A uniformly chosen element of `items` (unlike `rng.choice`, tuples stay tuples)."""
    return items[int(rng.integers(len(items)))]


def _pairs_with(mode: str, combo: Combination, first: Combination) -> bool:
    """Whether `combo` makes a pair of kind `mode` (a PAIR_PROBABILITIES key) with `first`."""
    same_colour, same_shape = combo[0] == first[0], combo[1] == first[1]
    if mode == "same_shape":
        return same_shape and not same_colour
    if mode == "same_colour":
        return same_colour and not same_shape
    return same_colour and same_shape


def _sample_specs(
    rng: np.random.Generator, allowed: Sequence[Combination], required: Optional[Combination] = None
) -> List[_Spec]:
    """Draw 1..MAX_OBJECTS object attributes from the `allowed` (colour, shape) combinations.

    `required` (if given) becomes the first object. Many scenes start with a pair sharing the shape, the colour or both
    (PAIR_PROBABILITIES), so that referring expressions need attributes to single an object out.
    """
    first = required or pick(rng, allowed)
    combos = [first]
    draw = rng.random()
    for mode, probability in PAIR_PROBABILITIES.items():
        if draw < probability:
            partners = [combo for combo in allowed if _pairs_with(mode, combo, first)]
            if partners:
                combos.append(pick(rng, partners))
            break
        draw -= probability
    count = max(int(rng.integers(1, MAX_OBJECTS + 1)), len(combos))
    combos += [pick(rng, allowed) for _ in range(count - len(combos))]
    return [_Spec(colour, shape, pick(rng, list(SIZES))) for colour, shape in combos]


@dataclass
class _Placed:
    """An object during placement: its patch's top-left corner (x, y) in the image, and masks of the patch's size."""

    spec: _Spec
    x: int
    y: int
    mask: np.ndarray  # coverage
    visible: np.ndarray  # coverage not hidden by later objects
    rgb: np.ndarray


Cut = Tuple[slice, slice, slice, slice]


def _overlap(a: _Placed, bx: int, by: int, bw: int, bh: int, margin: int = 0) -> Optional[Cut]:
    """Slices (a's rows, a's cols, b's rows, b's cols) of the intersection of a's patch (grown by `margin`) and b's."""
    ah, aw = a.mask.shape
    x0, y0 = max(a.x - margin, bx), max(a.y - margin, by)
    x1, y1 = min(a.x + aw + margin, bx + bw), min(a.y + ah + margin, by + bh)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0 - a.y, y1 - a.y), slice(x0 - a.x, x1 - a.x), slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx)


def _try_place(placed: List[_Placed], spec: _Spec, mask: np.ndarray, x: int, y: int) -> Optional[List[Tuple]]:
    """Occlusion updates [(object, rows, cols, new visible values)] if `mask` fits at (x, y), else None."""
    h, w = mask.shape
    updates = []
    for other in placed:
        if other.spec.colour == spec.colour and _overlap(other, x, y, w, h, SAME_COLOUR_GAP) is not None:
            return None
        cut = _overlap(other, x, y, w, h)
        if cut is None:
            continue
        rows, cols, mrows, mcols = cut
        hidden = other.visible[rows, cols] * (1.0 - mask[mrows, mcols])
        remaining = other.visible.sum() - other.visible[rows, cols].sum() + hidden.sum()
        if remaining < MIN_VISIBLE_FRACTION * other.mask.sum():
            return None
        updates.append((other, rows, cols, hidden))
    return updates


def _place_all(rng: np.random.Generator, specs: Sequence[_Spec], width: int, height: int) -> List[_Placed]:
    """Place objects in order, each at the first of PLACEMENT_TRIES random positions that fits (else it is dropped)."""
    placed: List[_Placed] = []
    for spec in specs:
        radius = rng.uniform(*SIZES[spec.size])
        angle = rng.uniform(-MAX_ROTATION[spec.shape], MAX_ROTATION[spec.shape])
        mask = shape_mask(spec.shape, radius, angle, tuple(rng.uniform(-0.5, 0.5, size=2)))
        rgb = np.array(COLOURS[spec.colour], dtype=np.float32) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        side = mask.shape[0]  # at most 2 * 56 + 2 pixels, so it always fits in an image
        for _ in range(PLACEMENT_TRIES):
            x = int(rng.integers(BORDER, width - side - BORDER + 1))
            y = int(rng.integers(BORDER, height - side - BORDER + 1))
            updates = _try_place(placed, spec, mask, x, y)
            if updates is not None:
                for other, rows, cols, hidden in updates:
                    other.visible[rows, cols] = hidden
                placed.append(_Placed(spec, x, y, mask, mask.copy(), np.clip(rgb, 0.0, 255.0)))
                break
    return placed


def _visible_object(item: _Placed) -> ShapeObject:
    """The final object: box and area of the pixels at least half visible."""
    seen = item.visible >= 0.5
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    box = (item.x + int(cols[0]), item.y + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return ShapeObject(item.spec.shape, item.spec.colour, item.spec.size, box, int(seen.sum()))


def sample_image_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(width, height) in IMAGE_SIDE, at least MIN_SIDE_DIFFERENCE pixels apart."""
    width = int(rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1))
    while True:
        height = int(rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1))
        if abs(width - height) >= MIN_SIDE_DIFFERENCE:
            return width, height


def sample_scene(
    rng: np.random.Generator, image_id: int, allowed: Sequence[Combination], required: Optional[Combination] = None
) -> Tuple[Scene, np.ndarray]:
    """Sample and draw one image: returns its Scene and the H x W x 3 uint8 RGB picture.

    Objects use the `allowed` (colour, shape) combinations; `required` is always the first (bottom) object, which is
    always placed. Objects that find no free position are left out.
    """
    width, height = sample_image_size(rng)
    background, image = render_background(rng, height, width)
    placed = _place_all(rng, _sample_specs(rng, allowed, required), width, height)
    for item in placed:
        paint(image, item.mask, (item.x, item.y), item.rgb)
    scene = Scene(image_id, width, height, background, tuple(_visible_object(item) for item in placed))
    return scene, np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
