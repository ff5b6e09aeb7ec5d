"""LabelFittingVisualizer: Detectron2's Visualizer with every label kept inside the image.

Detectron2 puts a box's label at the box's top-left corner (or beside it for small boxes), so the label of a box at
the image's right or bottom edge is cut off. This subclass draws the label where Detectron2 does, measures it
(text and its dark background), then moves it back inside the image by as little as needed (shrinking a label
wider than the image).
"""
from __future__ import annotations

from detectron2.utils.visualizer import VisImage, Visualizer
from matplotlib.text import Text


def _data_extent(text: Text, output: VisImage) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in image pixels of a drawn label: its text and its background box."""
    renderer = output.canvas.get_renderer()
    text.update_bbox_position_size(renderer)
    extents = [text.get_window_extent(renderer)]
    if text.get_bbox_patch() is not None:
        extents.append(text.get_bbox_patch().get_window_extent(renderer))
    points = output.ax.transData.inverted().transform([corner for e in extents for corner in ((e.x0, e.y0),
                                                                                               (e.x1, e.y1))])
    return points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()  # rows grow downwards


def fit_text_in_image(text: Text, output: VisImage) -> None:
    """Move a drawn label (text and background box) by the least amount that puts it inside the image; a label
    wider or taller than the image is first shrunk to fit it."""
    left, top, right, bottom = _data_extent(text, output)
    shrink = min(output.width / (right - left), output.height / (bottom - top))
    if shrink < 1:
        text.set_fontsize(text.get_fontsize() * shrink * 0.95)
        left, top, right, bottom = _data_extent(text, output)
    dx = -left if left < 0 else min(0.0, output.width - right)
    dy = -top if top < 0 else min(0.0, output.height - bottom)
    if dx or dy:
        x, y = text.get_position()
        text.set_position((x + dx, y + dy))


class LabelFittingVisualizer(Visualizer):
    """Detectron2's Visualizer whose labels (`draw_text`) stay inside the image."""

    def draw_text(self, text, position, **kwargs) -> VisImage:
        output = super().draw_text(text, position, **kwargs)
        fit_text_in_image(self.output.ax.texts[-1], self.output)
        return output
