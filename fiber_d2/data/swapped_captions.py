"""Hard negative captions by word swaps, for ITM (INPUT.COARSE.ITM_SWAP_WORDS; as NegCLIP's swapped captions,
Yuksekgonul et al., ICLR 2023): one word of the caption that belongs to a group of interchangeable words (colours,
shapes, ...) replaced by another word of its group, so that the caption no longer fits its image in one attribute."""
from __future__ import annotations

import random
import re
from typing import Sequence

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
    new = rng.choice([word for word in group_of[old] if word != old])
    before = caption[: match.start()]
    article = re.search(r"\b(a|an|A|An)(\s+)$", before)
    if article:
        word = ("an" if new[0] in _VOWELS else "a")
        word = word.capitalize() if article.group(1)[0] == "A" else word
        before = before[: article.start()] + word + article.group(2)
    return before + new + caption[match.end():]
