"""Drawing for FIBER-Shapes: low-contrast textured backgrounds and anti-aliased shape masks.

All arrays are float32 in pixel units: images are H x W x 3 with values in [0, 255], masks H x W in [0, 1].
"""
import colorsys
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import BACKGROUNDS

SUPERSAMPLING = 4  # masks are drawn at this many times the resolution, then box-filtered down (anti-aliasing)
STAR_INNER_RADIUS = 0.45  # of the outer radius
CROSS_ARM_LENGTH, CROSS_ARM_HALF_WIDTH = 0.95, 0.3  # of the circumradius


def unit_polygon(shape: str) -> np.ndarray:
    """Vertices (N x 2, x right / y down) of a shape centred at 0 that fits in the unit circle, pointing up."""
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape in ("square", "triangle", "hexagon"):
        corners, start = {"square": (4, 45.0), "triangle": (3, -90.0), "hexagon": (6, 0.0)}[shape]
        angles = np.deg2rad(start + 360.0 / corners * np.arange(corners))
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RADIUS)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        a, w = CROSS_ARM_LENGTH, CROSS_ARM_HALF_WIDTH
        return np.array(
            [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        )
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, radius: float, angle_deg: float, offset: Tuple[float, float]) -> np.ndarray:
    """Anti-aliased coverage mask of one shape in its own patch.

    The patch is a square of side 2 * ceil(radius) + 2 pixels; the shape's centre lies at `offset` (x, y, pixels)
    from the patch centre, with |offset| <= 0.5 so the shape never touches the patch border. Coverage is in [0, 1].
    """
    side = 2 * int(np.ceil(radius)) + 2
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = unit_polygon(shape) @ rotation.T * radius + (side / 2.0 + offset[0], side / 2.0 + offset[1])
    canvas = Image.new("L", (side * SUPERSAMPLING, side * SUPERSAMPLING), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (points * SUPERSAMPLING).tolist()], fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLING), dtype=np.float32) / 255.0


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A desaturated mid-grey RGB colour (0-255) so that the saturated, light or dark object colours stand out."""
    hue, saturation, value = rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.4, 0.6)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255.0


def _texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A H x W pattern in [0, 1] of the given background kind."""
    if kind == "noise":
        return rng.random((height, width), dtype=np.float32)
    if kind == "blotches":
        coarse = rng.random((height // 40 + 2, width // 40 + 2), dtype=np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
        return (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-6)
    theta = rng.uniform(0.0, np.pi)
    xs, ys = np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None]
    along = xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))  # pixels along a random direction
    if kind == "gradient":
        return (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    if kind == "stripes":
        period = rng.uniform(10.0, 40.0)
        wave = 0.5 + 0.5 * np.sin(along * np.float32(2.0 * np.pi / period))
        return (wave > 0.5).astype(np.float32) if rng.random() < 0.5 else wave
    if kind == "checker":
        cell = np.float32(rng.uniform(12.0, 48.0))
        across = ys * np.float32(np.cos(theta)) - xs * np.float32(np.sin(theta))
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def render_background(rng: np.random.Generator, height: int, width: int) -> Tuple[str, np.ndarray]:
    """Sample a background kind from BACKGROUNDS and draw it: returns (kind, H x W x 3 image).

    The texture blends two muted colours at most 30 levels apart per channel, plus uniform pixel noise of standard
    deviation 2-5 levels.
    """
    kind = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    first = _muted_colour(rng)
    second = np.clip(first + rng.uniform(-30.0, 30.0, size=3).astype(np.float32), 0.0, 255.0)
    pattern = _texture(kind, rng, height, width)[..., None]
    image = first + (second - first) * pattern
    noise = rng.random(image.shape, dtype=np.float32) - np.float32(0.5)
    image += noise * np.float32(np.sqrt(12.0) * rng.uniform(2.0, 5.0))  # uniform noise with that standard deviation
    return kind, np.clip(image, 0.0, 255.0, out=image)


def paint(image: np.ndarray, mask: np.ndarray, top_left: Tuple[int, int], rgb: np.ndarray) -> None:
    """Alpha-blend a flat colour (RGB, 0-255) through `mask` into `image` in place; `top_left` is the patch's (x, y)."""
    x, y = top_left
    h, w = mask.shape
    region = image[y : y + h, x : x + w]
    region += (rgb[None, None, :] - region) * mask[..., None]
