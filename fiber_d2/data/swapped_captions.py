"""Hard negative captions for ITM and ITC (as NegCLIP's, Yuksekgonul et al., ICLR 2023), of two kinds:

- word swaps (INPUT.COARSE.ITM_SWAP_WORDS): one word of the caption that belongs to a group of interchangeable words
  (colours, shapes, ...) replaced by another word of its group, so that the caption no longer fits its image in one
  attribute;
- order swaps (INPUT.COARSE.ITM_SWAP_ORDER): the two phrases either side of an asymmetric relation exchanged, "a red
  circle left of a blue star" -> "a blue star left of a red circle". The negative has exactly the positive's words, so
  only a model that reads the relation in the image can tell them apart. A word swap of a relation ("left" ->
  "right") cannot promise that: where the data say "above" more often than "below", its negatives say "below" more
  often than its positives do, and a model learns to prefer "above" without looking at the image (measured,
  docs/EXPERIMENTS.md)."""
from __future__ import annotations

import random
import re
from typing import Sequence

from .phrases import LEADING_WORDS, find_phrases

_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = "aeiou"


def check_swap_groups(groups: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """The groups as lower-case tuples; a ValueError for a group of fewer than two words or a word in two groups."""
    out, seen = [], {}
    for index, group in enumerate(groups):
        words = tuple(str(word).lower() for word in group)
        if len(set(words)) < 2 or not all(_WORD.fullmatch(word) for word in words):
            raise ValueError(
                f"INPUT.COARSE.ITM_SWAP_WORDS group #{index} needs two or more distinct words, got {group!r}"
            )
        for word in words:
            if word in seen and seen[word] != index:
                raise ValueError(f"INPUT.COARSE.ITM_SWAP_WORDS: {word!r} is in groups #{seen[word]} and #{index}")
            seen[word] = index
        out.append(words)
    return out


def swap_one_word(caption: str, groups: Sequence[Sequence[str]], rng: random.Random) -> str | None:
    """`caption` with one randomly chosen word of a group (whole word, any case) replaced by another word of that group,
    in lower case; an article "a"/"an" just before it follows the new word. None if no word of the caption is in a
    group."""
    group_of = {word: group for group in groups for word in group}
    matches = [m for m in _WORD.finditer(caption) if m.group().lower() in group_of]
    if not matches:
        return None
    match = matches[rng.randrange(len(matches))]
    old = match.group().lower()
    return _replace_word(caption, match, rng.choice([word for word in group_of[old] if word != old]))


def word_swaps(caption: str, groups: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Every swap `swap_one_word` can make: (the replaced word in lower case, the swapped caption), in caption order."""
    group_of = {word: group for group in groups for word in group}
    return [(match.group().lower(), _replace_word(caption, match, new))
            for match in _WORD.finditer(caption) if match.group().lower() in group_of
            for new in group_of[match.group().lower()] if new != match.group().lower()]


def _replace_word(caption: str, match: re.Match, new: str) -> str:
    before = caption[: match.start()]
    article = re.search(r"\b(a|an|A|An)(\s+)$", before)
    if article:
        word = ("an" if new[0] in _VOWELS else "a")
        word = word.capitalize() if article.group(1)[0] == "A" else word
        before = before[: article.start()] + word + article.group(2)
    return before + new + caption[match.end():]


def check_order_relations(relations: Sequence[str]) -> list[str]:
    """The relations as lower-case strings, longest first (so "to the left of" is found before "left of"); a
    ValueError for an empty one or a repeat."""
    out = [" ".join(str(relation).lower().split()) for relation in relations]
    if not all(out) or len(set(out)) < len(out):
        raise ValueError(f"INPUT.COARSE.ITM_SWAP_ORDER needs distinct non-empty relations, got {list(relations)!r}")
    return sorted(out, key=len, reverse=True)


def swap_phrase_order(caption: str, relations: Sequence[str], rng: random.Random) -> str | None:
    """`caption` with the phrases just before and just after one randomly chosen relation of `relations` (whole
    words, any case; `check_order_relations` order) exchanged, each with its leading articles and numbers, in the
    case of the place it moves to: "A red circle left of an orange star ." -> "An orange star left of a red circle .".
    None if no relation of the caption has a phrase (`find_phrases`) right before and right after it."""
    swaps = order_swaps(caption, relations)
    return swaps[rng.randrange(len(swaps))][1] if swaps else None


def order_swaps(caption: str, relations: Sequence[str]) -> list[tuple[str, str]]:
    """Every swap `swap_phrase_order` can make: (the relation, the swapped caption), in caption order."""
    phrases = [span for (span,) in find_phrases(caption)]
    found: list[tuple[re.Match, str]] = []
    for relation in relations:
        pattern = r"\b" + r"\s+".join(map(re.escape, relation.split())) + r"\b"
        for match in re.finditer(pattern, caption, re.IGNORECASE):
            # A relation inside a longer one already found ("left of" in "to the left of") is that one.
            if not any(match.start() < other.end() and other.start() < match.end() for other, _ in found):
                found.append((match, relation))
    swaps = []
    for match, relation in sorted(found, key=lambda item: item[0].start()):
        before = [(s, e) for s, e in phrases if e <= match.start()][-1:]
        after = [(s, e) for s, e in phrases if s >= match.end()][:1]
        if not before or not after or caption[before[0][1]:match.start()].strip():
            continue
        (s1, e1), (s2, e2) = _with_leading_words(caption, *before[0]), _with_leading_words(caption, *after[0])
        if caption[match.end():s2].strip():
            continue
        first, second = caption[s1:e1], caption[s2:e2]
        swapped = caption[:s1] + _case_like(second, first) + caption[e1:s2] + _case_like(first, second)
        swaps.append((relation, swapped + caption[e2:]))
    return swaps


def _with_leading_words(caption: str, start: int, end: int) -> tuple[int, int]:
    """The span [start, end) of a phrase widened back over the leading words just before it (articles, numbers,
    possessives: `phrases.LEADING_WORDS`)."""
    while True:
        match = re.search(r"\b([A-Za-z]+)\s+$", caption[:start])
        if not match or match.group(1).lower() not in LEADING_WORDS:
            return start, end
        start = match.start()


def _case_like(text: str, place: str) -> str:
    """`text` with its first letter upper-case where `place` starts with one (a caption's first word), else lower."""
    if not text:
        return text
    return (text[0].upper() if place[:1].isupper() else text[0].lower()) + text[1:]

