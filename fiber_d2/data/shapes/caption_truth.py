"""Is a FIBER-Shapes retrieval caption true of a scene, and how ambiguous are the captions of a split?

The captions are the entity sentences of `dataset_fiber_shapes.json` (written by `text.entity_sentences`): noun
phrases "a [size] [colour] shape" and "NUMBER [colour] shapes" after an optional prefix ("a picture of", "there are",
...), joined by "," and "and", or two of them joined by a relation ("left of", "under", "next to", ...), optionally
followed by "on a WORD background". Several images can fit one caption ("there are two stars ." fits every image with
exactly two stars), so even a model that ranks exactly the fitting images first cannot always put the captioned image
first: `text_to_image_ceiling` gives that model's text-to-image Recall@1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .scenes import Scene, ShapeObject
from .text import NUMBER_WORDS, RELATION_WORDS, spatial_relation
from .vocabulary import BACKGROUNDS, COLOURS, SHAPE_OF_WORD, SIZES

__all__ = ["Claim", "NounPhrase", "is_true_of", "parse_caption", "text_to_image_ceiling"]

_BACKGROUND_OF_WORD = {word: kind for kind, word in BACKGROUNDS.items()}
_RELATION_OF_WORDS = {words: relation for relation, options in RELATION_WORDS.items() for words in options}
# Longest first, so "to the left of" is not read as "left of".
_RELATION = re.compile(r" (" + "|".join(sorted(_RELATION_OF_WORDS, key=len, reverse=True)) + r") ")
_BACKGROUND = re.compile(r" on an? (\w+) background\b")


@dataclass(frozen=True)
class NounPhrase:
    """ "a small red circle" (count None: one object) or "two green circles" / "three crosses" (count objects)."""

    count: Optional[int]
    size: Optional[str]
    colour: Optional[str]
    shape: str

    def matches(self, obj: ShapeObject) -> bool:
        """Whether `obj` has this phrase's shape and every attribute the phrase names."""
        return obj.shape == self.shape and self.size in (None, obj.size) and self.colour in (None, obj.colour)


@dataclass(frozen=True)
class Claim:
    """What a caption says: its noun phrases, the relation of the first to the second ("left", "right", "above",
    "below", "near") if it names one, and the background (a BACKGROUNDS key) if it names one."""

    phrases: Tuple[NounPhrase, ...]
    relation: Optional[str] = None
    background: Optional[str] = None


def _noun_phrase(words: Sequence[str], caption: str) -> NounPhrase:
    shapes = [word for word in words if word in SHAPE_OF_WORD]
    if len(shapes) != 1 or words[-1] != shapes[0]:
        raise ValueError(f"cannot read a noun phrase in {' '.join(words)!r} of caption {caption!r}")
    numbers = [NUMBER_WORDS.index(word) for word in words if word in NUMBER_WORDS]
    return NounPhrase(
        count=numbers[0] if numbers else None,
        size=next((word for word in words if word in SIZES), None),
        colour=next((word for word in words if word in COLOURS), None),
        shape=SHAPE_OF_WORD[shapes[0]],
    )


def parse_caption(caption: str) -> Claim:
    """The claim of one entity sentence, e.g. "there is a star to the right of a blue cross ." ->
    Claim((NounPhrase(None, None, None, "star"), NounPhrase(None, None, "blue", "cross")), "right").
    Raises ValueError, naming the caption, where it does not follow the grammar above."""
    text = " " + caption.lower().strip().rstrip(".").strip() + " "
    background = None
    match = _BACKGROUND.search(text)
    if match:
        if match.group(1) not in _BACKGROUND_OF_WORD:
            raise ValueError(f"unknown background {match.group(1)!r} in caption {caption!r}")
        background = _BACKGROUND_OF_WORD[match.group(1)]
        text = text[: match.start()] + " "
    relation = None
    parts = _RELATION.split(text)
    if len(parts) == 3:
        relation = _RELATION_OF_WORDS[parts[1]]
        chunks = [parts[0], parts[2]]
    elif len(parts) == 1:
        chunks = re.split(r"\s*,\s*|\s+and\s+", text)
    else:
        raise ValueError(f"more than one relation in caption {caption!r}")
    phrases = tuple(_noun_phrase(chunk.split(), caption) for chunk in chunks)
    return Claim(phrases, relation, background)


def is_true_of(claim: Claim, scene: Scene, strict: bool = True) -> bool:
    """Whether `scene` fits `claim`: the background if named; for each phrase, exactly `count` matching objects
    (groups), or exactly one (`strict`, as the generator uses "a ...": the description fits one object) or at least
    one (not `strict`); with a relation, some object of the first phrase in that relation to one of the second."""
    if claim.background is not None and scene.background != claim.background:
        return False
    found: List[List[ShapeObject]] = []
    for phrase in claim.phrases:
        objects = [obj for obj in scene.objects if phrase.matches(obj)]
        if phrase.count is not None:
            fits = len(objects) == phrase.count
        else:
            fits = len(objects) == 1 if strict else bool(objects)
        if not fits:
            return False
        found.append(objects)
    if claim.relation is None:
        return True
    first, second = found
    return any(a is not b and spatial_relation(a, b) == claim.relation for a in first for b in second)


def text_to_image_ceiling(
    captions: Sequence[Sequence[str]], scenes: Sequence[Scene], strict: bool = True, ignore_relation: bool = False
) -> Dict[str, float]:
    """Text-to-image Recall@1 (percent) of a model that ranks the images a caption is true of first, in random order:
    the mean over captions of 1 / (number of images the caption is true of). `captions[i]` are image i's captions,
    `scenes[i]` its scene. `ignore_relation`: the model reads every phrase but not the relation between two ("a star
    left of a cross" fits every image with a star and a cross). Returns "R@1", "R@1_sentence_k" over each image's
    k-th caption, and "mean_fitting_images". Raises ValueError if a caption does not fit its own image."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} caption lists for {len(scenes)} scenes")
    by_position: Dict[int, List[float]] = {}
    fitting: List[int] = []
    for own, sentences in enumerate(captions):
        for position, caption in enumerate(sentences):
            claim = parse_caption(caption)
            if ignore_relation:
                claim = Claim(claim.phrases, None, claim.background)
            fits = [is_true_of(claim, scene, strict) for scene in scenes]
            if not fits[own]:
                raise ValueError(f"caption {caption!r} does not fit its own image (image_id {scenes[own].image_id})")
            fitting.append(sum(fits))
            by_position.setdefault(position, []).append(1.0 / sum(fits))
    everything = [value for values in by_position.values() for value in values]
    result = {"R@1": 100.0 * sum(everything) / max(len(everything), 1)}
    for position, values in sorted(by_position.items()):
        result[f"R@1_sentence_{position}"] = 100.0 * sum(values) / len(values)
    result["mean_fitting_images"] = sum(fitting) / max(len(fitting), 1)
    return result
