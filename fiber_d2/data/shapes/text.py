"""Language for FIBER-Shapes scenes: grounded captions, Flickr30k-style entity sentences, referring expressions and
VQA questions. Every phrase span is recorded while its text is appended, so `text[start:end]` is the phrase exactly.

Objects are referred to by their index in `Scene.objects`. Descriptions only use attributes that are true, and a phrase
that names one object ("a small red circle", "the red circle on the left") always names it unambiguously.
"""
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from .scenes import Scene, ShapeObject, pick
from .vocabulary import BACKGROUNDS, SHAPE_PLURALS, SHAPES, Combination

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
# Attribute sets tried, in order, to single an object out among objects of its shape.
ATTRIBUTE_SETS: Tuple[Tuple[str, ...], ...] = ((), ("colour",), ("size",), ("size", "colour"))
EXTRA_ATTRIBUTE_PROBABILITY = 0.35  # chance that a description gets one more (true, unneeded) attribute
DOMINANT_AXIS_RATIO = 1.5  # "left of" needs |dx| >= 1.5 |dy| between box centres (and likewise for above/below)
MIN_AXIS_OFFSET = 16.0  # pixels between box centres along the dominant axis for a directional relation
NEAR_GAP = 24.0  # pixels between boxes (0 when they overlap) for "next to"
LOCATION_MARGIN = 16.0  # pixels by which an object must be the extreme one for "on the left" and the like
RELATION_WORDS: Dict[str, Tuple[str, ...]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
    "near": ("next to", "near"),
}
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above", "near": "near"}
LOCATION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
ANSWERS_PER_QUESTION = 10
ABSENT_COUNT_PROBABILITY = 0.25  # chance that "how many" asks about a shape that is not there (answer "0")


@dataclass(frozen=True)
class Phrase:
    """A caption span [start, end) naming the objects with these indices."""

    start: int
    end: int
    objects: Tuple[int, ...]


@dataclass(frozen=True)
class Caption:
    """A grounded caption; several phrases may name the same object, and a phrase may name several objects."""

    text: str
    phrases: Tuple[Phrase, ...]


@dataclass(frozen=True)
class Entity:
    """A Flickr30k entity: a set of objects (empty for the background) and its phrase type ("other" or "scene")."""

    objects: Tuple[int, ...]
    phrase_type: str


@dataclass(frozen=True)
class Mention:
    """A span [start, end) of an entity sentence mentioning entity number `entity`."""

    start: int
    end: int
    entity: int


@dataclass(frozen=True)
class EntitySentence:
    """A Flickr30k-style sentence: words separated by single spaces (punctuation too), mentions in entity order."""

    text: str
    mentions: Tuple[Mention, ...]


@dataclass(frozen=True)
class ReferringExpression:
    """A RefCOCO-style expression naming exactly one object; `span` is its noun phrase, e.g. "the red star"."""

    text: str
    target: int
    span: Tuple[int, int]


@dataclass(frozen=True)
class Question:
    """A VQA question with its single ground-truth answer and VQAv2 question/answer types."""

    question: str
    answer: str
    question_type: str
    answer_type: str


@dataclass(frozen=True)
class ImageText:
    """All the text generated for one scene."""

    captions: Tuple[Caption, ...]
    entities: Tuple[Entity, ...]
    sentences: Tuple[EntitySentence, ...]
    refexps: Tuple[ReferringExpression, ...]
    questions: Tuple[Question, ...]


class _TextBuilder:
    """Appends text pieces and records the span of each marked piece."""

    def __init__(self) -> None:
        self._parts: List[str] = []
        self._length = 0
        self.spans: List[Tuple[int, int, Hashable]] = []

    def add(self, text: str) -> "_TextBuilder":
        self._parts.append(text)
        self._length += len(text)
        return self

    def mark(self, text: str, ref: Hashable) -> "_TextBuilder":
        start = self._length
        self.add(text)
        self.spans.append((start, self._length, ref))
        return self

    def text(self) -> str:
        return "".join(self._parts)


def with_article(noun_phrase: str) -> str:
    """Prefix "a" or "an" to a singular noun phrase."""
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def noun_phrase(obj: ShapeObject, attributes: Sequence[str]) -> str:
    """Words for an object using the given attributes, in English order: e.g. "small red circle"."""
    return " ".join([obj.size] * ("size" in attributes) + [obj.colour] * ("colour" in attributes) + [obj.shape])


def _same_kind(a: ShapeObject, b: ShapeObject, attributes: Sequence[str]) -> bool:
    return a.shape == b.shape and all(getattr(a, attribute) == getattr(b, attribute) for attribute in attributes)


def distinguishing_attributes(
    objects: Sequence[ShapeObject], index: int, among: Optional[Sequence[int]] = None
) -> Optional[Tuple[str, ...]]:
    """The first of ATTRIBUTE_SETS whose description fits no other object (of `among`, default all), else None."""
    others = [obj for j, obj in enumerate(objects) if j != index and (among is None or j in among)]
    for attributes in ATTRIBUTE_SETS:
        if not any(_same_kind(objects[index], other, attributes) for other in others):
            return attributes
    return None


def _embellish(rng: np.random.Generator, attributes: Tuple[str, ...]) -> Tuple[str, ...]:
    """Sometimes add one unneeded attribute (still true, so a unique description stays unique)."""
    missing = [attribute for attribute in ("colour", "size") if attribute not in attributes]
    if missing and rng.random() < EXTRA_ATTRIBUTE_PROBABILITY:
        attributes = attributes + (missing[0],)
    return attributes


def _box_gap(a: ShapeObject, b: ShapeObject) -> float:
    """Distance in pixels between two boxes (0 when they overlap)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a.box, b.box
    gap_x = max(bx - (ax + aw), ax - (bx + bw), 0)
    gap_y = max(by - (ay + ah), ay - (by + bh), 0)
    return float(np.hypot(gap_x, gap_y))


def spatial_relation(a: ShapeObject, b: ShapeObject) -> Optional[str]:
    """How `a` lies relative to `b` ("left", "right", "above", "below", "near"), or None when it is unclear."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    if abs(dx) >= DOMINANT_AXIS_RATIO * abs(dy) and abs(dx) >= MIN_AXIS_OFFSET:
        return "left" if dx > 0 else "right"
    if abs(dy) >= DOMINANT_AXIS_RATIO * abs(dx) and abs(dy) >= MIN_AXIS_OFFSET:
        return "above" if dy > 0 else "below"
    if _box_gap(a, b) <= NEAR_GAP:
        return "near"
    return None


def _join(builder: _TextBuilder, items: Sequence[Tuple[str, Hashable]], comma: str) -> None:
    """Append marked items as "x", "x and y" or "x<comma>y and z"."""
    for k, (text, ref) in enumerate(items):
        if k > 0:
            builder.add(" and " if k == len(items) - 1 else comma)
        builder.mark(text, ref)


def _groups(objects: Sequence[ShapeObject], by_colour: bool) -> List[Tuple[int, ...]]:
    """Indices of objects grouped by shape (and colour), in order of first appearance."""
    groups: Dict[Tuple[str, ...], List[int]] = defaultdict(list)
    for index, obj in enumerate(objects):
        groups[(obj.colour, obj.shape) if by_colour else (obj.shape,)].append(index)
    return [tuple(members) for members in groups.values()]


def _group_words(objects: Sequence[ShapeObject], members: Sequence[int], with_colour: bool) -> str:
    """ "two green squares" / "three circles" for two or more objects of one shape (and colour)."""
    first = objects[members[0]]
    colour = f"{first.colour} " if with_colour else ""
    return f"{NUMBER_WORDS[len(members)]} {colour}{SHAPE_PLURALS[first.shape]}"


def _related_pairs(objects: Sequence[ShapeObject]) -> List[Tuple[int, int, str]]:
    """(i, j, relation of i to j) for i < j, both uniquely describable, with a clear relation."""
    describable = [i for i in range(len(objects)) if distinguishing_attributes(objects, i) is not None]
    pairs = []
    for a, i in enumerate(describable):
        for j in describable[a + 1 :]:
            relation = spatial_relation(objects[i], objects[j])
            if relation is not None:
                pairs.append((i, j, relation))
    return pairs


# ---- grounded captions (MDETR final_mixed) ----


def _listing_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """Names every object: "a picture of a small red circle, two green squares and a white cross." """
    objects = scene.objects
    groups = _groups(objects, by_colour=True)
    groups = [groups[int(k)] for k in rng.permutation(len(groups))]
    items = []
    for members in groups:
        if len(members) > 1:
            items.append((_group_words(objects, members, with_colour=True), members))
        else:
            attributes = _embellish(rng, ("colour",))
            items.append((with_article(noun_phrase(objects[members[0]], attributes)), members))
    builder = _TextBuilder()
    prefix = pick(rng, ("a picture of ", "an image of ", "there are ", ""))
    if prefix == "there are " and len(groups[0]) == 1:
        prefix = "there is "
    _join(builder.add(prefix), items, ", ")
    return _caption(builder.add("."))


def _relation_caption(scene: Scene, rng: np.random.Generator, coreference: bool) -> Optional[Caption]:
    """ "a small red circle left of a blue star." or, with `coreference`,
    "a red circle and a blue star. the circle is above the star." """
    objects = scene.objects
    pairs = _related_pairs(objects)
    if not pairs:
        return None
    i, j, relation = pick(rng, pairs)
    if rng.random() < 0.5:
        i, j, relation = j, i, INVERSE_RELATION[relation]
    words = {k: noun_phrase(objects[k], _embellish(rng, distinguishing_attributes(objects, k))) for k in (i, j)}
    relation_words = pick(rng, RELATION_WORDS[relation])
    builder = _TextBuilder()
    if coreference:
        builder.mark(with_article(words[i]), (i,)).add(" and ").mark(with_article(words[j]), (j,)).add(". ")
        short = {k: noun_phrase(objects[k], distinguishing_attributes(objects, k, among=(i, j))) for k in (i, j)}
        builder.mark(f"the {short[i]}", (i,)).add(f" is {relation_words} ").mark(f"the {short[j]}", (j,))
    else:
        template = int(rng.integers(3))
        if template == 0:
            builder.mark(with_article(words[i]), (i,)).add(f" {relation_words} ").mark(with_article(words[j]), (j,))
        elif template == 1:
            builder.mark(f"the {words[i]}", (i,)).add(f" is {relation_words} ").mark(f"the {words[j]}", (j,))
        else:
            builder.add("there is ").mark(with_article(words[i]), (i,))
            builder.add(f" {relation_words} ").mark(with_article(words[j]), (j,))
    return _caption(builder.add("."))


def _count_caption(scene: Scene, rng: np.random.Generator) -> Optional[Caption]:
    """ "there are three circles." or "two green squares." for a group of two or more objects."""
    objects = scene.objects
    options = [(members, True) for members in _groups(objects, by_colour=True) if len(members) > 1]
    options += [(members, False) for members in _groups(objects, by_colour=False) if len(members) > 1]
    if not options:
        return None
    members, with_colour = pick(rng, options)
    builder = _TextBuilder().add(pick(rng, ("there are ", "")))
    return _caption(builder.mark(_group_words(objects, members, with_colour), members).add("."))


def _caption(builder: _TextBuilder) -> Caption:
    """The builder's text with its marked spans as phrases (each marked with a tuple of object indices)."""
    return Caption(builder.text(), tuple(Phrase(start, end, tuple(ref)) for start, end, ref in builder.spans))


def grounded_captions(scene: Scene, rng: np.random.Generator) -> List[Caption]:
    """Up to four grounded captions: a listing of every object, a relation, a relation with coreference, a count."""
    captions = [
        _listing_caption(scene, rng),
        _relation_caption(scene, rng, coreference=False),
        _relation_caption(scene, rng, coreference=True),
        _count_caption(scene, rng),
    ]
    return [caption for caption in captions if caption is not None]


# ---- Flickr30k Entities sentences ----


def scene_entities(scene: Scene) -> List[Entity]:
    """The entities sentences may mention, in id order: each uniquely describable object, each group of 2+ objects of
    one colour and shape, each group of 2+ objects of one shape in several colours, then the background."""
    objects = scene.objects
    entities = [Entity((i,), "other") for i in range(len(objects)) if distinguishing_attributes(objects, i) is not None]
    entities += [Entity(members, "other") for members in _groups(objects, by_colour=True) if len(members) > 1]
    entities += [
        Entity(members, "other")
        for members in _groups(objects, by_colour=False)
        if len(members) > 1 and len({objects[i].colour for i in members}) > 1
    ]
    return entities + [Entity((), "scene")]


def _entity_words(scene: Scene, entity: Entity, rng: np.random.Generator) -> str:
    """ "a blue star" (unique), "two green squares" / "three circles" (groups) or "a striped background"."""
    objects = scene.objects
    if not entity.objects:
        return f"a {BACKGROUNDS[scene.background]} background"
    if len(entity.objects) == 1:
        (index,) = entity.objects
        return with_article(noun_phrase(objects[index], _embellish(rng, distinguishing_attributes(objects, index))))
    return _group_words(objects, entity.objects, with_colour=len({objects[i].colour for i in entity.objects}) == 1)


def _entity_sentence(
    scene: Scene, entities: Sequence[Entity], rng: np.random.Generator, prefix: str, mentioned: Sequence[int],
    relation: Optional[str] = None, with_background: bool = False,
) -> EntitySentence:
    """Join entity phrases (sorted by entity number) after `prefix`, e.g. "a picture of X , Y and Z on B ." or, with a
    relation between the two mentioned entities, "there is X left of Y ."."""
    mentioned = sorted(mentioned)
    items = [(_entity_words(scene, entities[k], rng), k) for k in mentioned]
    builder = _TextBuilder().add(prefix)
    if relation is None:
        _join(builder, items, " , ")
    else:
        builder.mark(*items[0]).add(f" {pick(rng, RELATION_WORDS[relation])} ").mark(*items[1])
    if with_background:
        builder.add(" on ").mark(_entity_words(scene, entities[-1], rng), len(entities) - 1)
    text = builder.add(" .").text()
    return EntitySentence(text, tuple(Mention(start, end, ref) for start, end, ref in builder.spans))


def entity_sentences(scene: Scene, entities: Sequence[Entity], rng: np.random.Generator) -> List[EntitySentence]:
    """Three Flickr30k-style sentences: all objects listed, a relation (or a few objects), a group (or a few objects).

    Within a sentence, mentions name disjoint objects and appear in increasing entity number.
    """
    objects = scene.objects
    number = {entity.objects: k for k, entity in enumerate(entities)}
    singles = [k for k, entity in enumerate(entities) if len(entity.objects) == 1]
    groups = [k for k, entity in enumerate(entities) if len(entity.objects) > 1]
    pairs = [(number[(i,)], number[(j,)], relation) for i, j, relation in _related_pairs(objects)]

    def a_few() -> EntitySentence:
        chosen = rng.permutation(singles)[: int(rng.integers(1, min(3, len(singles)) + 1))]
        prefix = pick(rng, ("a picture with ", "we see ", ""))
        return _entity_sentence(scene, entities, rng, prefix, [int(k) for k in chosen])

    def a_group() -> EntitySentence:
        mentioned = [pick(rng, groups)]
        return _entity_sentence(scene, entities, rng, "there are ", mentioned, with_background=rng.random() < 0.3)

    def a_relation() -> EntitySentence:
        first, second, relation = pick(rng, pairs)
        prefix = pick(rng, ("", "there is "))
        return _entity_sentence(scene, entities, rng, prefix, [first, second], relation=relation)

    # Every object is in a group of its colour and shape: a lone one is uniquely describable, so it has an entity.
    listing = [number[members] for members in _groups(objects, by_colour=True)]
    prefix = pick(rng, ("a picture of ", "an image of ", "we see ", ""))
    sentences = [_entity_sentence(scene, entities, rng, prefix, listing, with_background=rng.random() < 0.5)]
    # With no groups every object is uniquely describable, and with no lone objects there are groups.
    sentences.append(a_relation() if pairs else a_few() if singles else a_group())
    sentences.append(a_group() if groups else a_few())
    return sentences


# ---- referring expressions (RefCOCO) ----


def _location(objects: Sequence[ShapeObject], index: int, candidates: Sequence[int]) -> Optional[str]:
    """ "left"/"right"/"top"/"bottom" if `index` is clearly the extreme one of `candidates` that way, else None."""
    x, y = objects[index].center
    others = [objects[j].center for j in candidates if j != index]
    if all(x + LOCATION_MARGIN <= ox for ox, _ in others):
        return "left"
    if all(x - LOCATION_MARGIN >= ox for ox, _ in others):
        return "right"
    if all(y + LOCATION_MARGIN <= oy for _, oy in others):
        return "top"
    if all(y - LOCATION_MARGIN >= oy for _, oy in others):
        return "bottom"
    return None


def _has_distractor(objects: Sequence[ShapeObject], index: int) -> bool:
    """Whether another object shares the shape or the colour of object `index`."""
    target = objects[index]
    return any(j != index and (o.shape == target.shape or o.colour == target.colour) for j, o in enumerate(objects))


def _expression(noun: str, location: Optional[str], index: int, definite: bool = True) -> ReferringExpression:
    """ "[the] <noun> [<location words>]" whose span is the part before the location."""
    head = f"the {noun}" if definite else noun
    text = head if location is None else f"{head} {LOCATION_WORDS[location]}"
    return ReferringExpression(text, index, (0, len(head)))


def referring_expressions(scene: Scene, rng: np.random.Generator) -> List[ReferringExpression]:
    """Up to two expressions for every object that has a distractor sharing its shape or colour and that can be named
    uniquely by attributes ("the red star", "small blue circle") or by attributes and location ("the green square on
    the left")."""
    objects = scene.objects
    expressions = []
    for index, obj in enumerate(objects):
        if not _has_distractor(objects, index):
            continue
        attributes = distinguishing_attributes(objects, index)
        if attributes is not None:
            found = [_expression(noun_phrase(obj, attributes), None, index)]
            found.append(_expression(noun_phrase(obj, _embellish(rng, attributes)), None, index, rng.random() < 0.5))
        else:
            found = []
            for attributes in (("colour",), ("size", "colour")):
                candidates = [j for j, other in enumerate(objects) if _same_kind(obj, other, attributes)]
                location = _location(objects, index, candidates)
                if location is not None:
                    found.append(_expression(noun_phrase(obj, attributes), location, index))
                    break
        expressions += list({expression.text: expression for expression in found}.values())
    return expressions


# ---- VQA ----


def vqa_questions(
    scene: Scene, rng: np.random.Generator, combinations: Sequence[Combination]
) -> List[Question]:
    """Up to four questions: the colour of the only object of a shape, a count of a shape (sometimes an absent one),
    the shape of the only object of a colour, and whether a (colour, shape) combination is present (half the time an
    absent one, drawn from `combinations`)."""
    objects = scene.objects
    shape_counts = {shape: sum(obj.shape == shape for obj in objects) for shape in SHAPES}
    colour_counts: Dict[str, int] = defaultdict(int)
    for obj in objects:
        colour_counts[obj.colour] += 1
    questions = []
    lone_shapes = [shape for shape in SHAPES if shape_counts[shape] == 1]
    if lone_shapes:
        shape = pick(rng, lone_shapes)
        colour = next(obj.colour for obj in objects if obj.shape == shape)
        questions.append(Question(f"what colour is the {shape}?", colour, "what colour is the", "other"))
    present = [shape for shape in SHAPES if shape_counts[shape] > 0]
    absent = [shape for shape in SHAPES if shape_counts[shape] == 0]
    shape = pick(rng, absent if absent and rng.random() < ABSENT_COUNT_PROBABILITY else present)
    questions.append(
        Question(f"how many {SHAPE_PLURALS[shape]} are there?", str(shape_counts[shape]), "how many", "number")
    )
    lone_colours = [colour for colour, count in colour_counts.items() if count == 1]
    if lone_colours:
        colour = pick(rng, lone_colours)
        shape = next(obj.shape for obj in objects if obj.colour == colour)
        questions.append(Question(f"what shape is the {colour} object?", shape, "what shape is the", "other"))
    seen = sorted({(obj.colour, obj.shape) for obj in objects})
    unseen = [combo for combo in combinations if combo not in seen]
    if rng.random() < 0.5 or not unseen:
        (colour, shape), answer = pick(rng, seen), "yes"
    else:
        (colour, shape), answer = pick(rng, unseen), "no"
    questions.append(Question(f"is there {with_article(f'{colour} {shape}')}?", answer, "is there a", "yes/no"))
    return questions


def describe_scene(scene: Scene, rng: np.random.Generator, combinations: Sequence[Combination]) -> ImageText:
    """All text of one scene; `combinations` are the (colour, shape) pairs a yes/no question may ask about."""
    entities = scene_entities(scene)
    return ImageText(
        captions=tuple(grounded_captions(scene, rng)),
        entities=tuple(entities),
        sentences=tuple(entity_sentences(scene, entities, rng)),
        refexps=tuple(referring_expressions(scene, rng)),
        questions=tuple(vqa_questions(scene, rng, combinations)),
    )
