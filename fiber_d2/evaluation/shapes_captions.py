"""Are the objects a FIBER-Shapes caption names really in the image? Colour-shape pairs named by a caption against
the image's annotated objects."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

from ..data.shapes.vocabulary import COLOURS, SHAPE_OF_WORD

__all__ = ["caption_pairs", "load_colorshape_objects", "shapes_caption_scores"]

_PAIR = re.compile(
    r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(sorted(SHAPE_OF_WORD, key=len, reverse=True)) + r")\b"
)


def caption_pairs(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: a colour word directly followed by a shape word, singular or plural,
    e.g. "two red circles and a blue star" -> {("red", "circle"), ("blue", "star")}."""
    return {(colour, SHAPE_OF_WORD[shape]) for colour, shape in _PAIR.findall(caption.lower())}


def load_colorshape_objects(json_file: str) -> dict[Any, set[tuple[str, str]]]:
    """{image_id: {(colour, shape)}} from a FIBER-Shapes colour+shape COCO file (category names "red circle")."""
    with open(json_file, encoding="utf-8") as f:
        coco = json.load(f)
    names = {category["id"]: tuple(category["name"].split(" ", 1)) for category in coco["categories"]}
    objects: dict[Any, set[tuple[str, str]]] = defaultdict(set)
    for image in coco["images"]:
        objects[image["id"]]  # noqa: B018  (an image without objects still has an entry)
    for annotation in coco["annotations"]:
        objects[annotation["image_id"]].add(names[annotation["category_id"]])
    return dict(objects)


def shapes_caption_scores(
    captions: Mapping[Any, str], objects: Mapping[Any, Iterable[tuple[str, str]]]
) -> dict[str, float]:
    """Percentages over the captioned images:
    - "pairs_all_present": captions that name at least one colour-shape pair, every one of them in the image;
    - "pair_precision": named pairs (distinct per caption) that are in the image, over all named pairs;
    - "names_no_pair": captions that name no colour-shape pair at all.
    """
    all_present = named = correct = no_pair = 0
    for image_id, caption in captions.items():
        pairs = caption_pairs(caption)
        present = set(objects[image_id])
        hits = len(pairs & present)
        named += len(pairs)
        correct += hits
        no_pair += not pairs
        all_present += bool(pairs) and hits == len(pairs)
    total = max(len(captions), 1)
    return {
        "pairs_all_present": 100.0 * all_present / total,
        "pair_precision": 100.0 * correct / max(named, 1),
        "names_no_pair": 100.0 * no_pair / total,
    }
