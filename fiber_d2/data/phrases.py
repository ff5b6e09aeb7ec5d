"""The phrases of a grounding record (MDETR format): the labels of its prompt, shared by the mapper and the evaluators.

A phrase is a list of character spans `[start, end)` of the record's caption. The model's `pred_classes` for a
grounding prompt are indices into `grounding_phrases(record)`, so the evaluators and the data mapper must agree on
this order.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

Spans = list[list[int]]


def grounding_phrases(record: Mapping[str, Any]) -> list[Spans]:
    """The record's phrases in a fixed order.

    `tokens_positive_eval` when the record has it (MDETR's Flickr30k files list every phrase there, boxed or not);
    otherwise the distinct `tokens_positive` of its annotations, in order of first appearance.
    """
    if "tokens_positive_eval" in record:
        return [_as_spans(spans) for spans in record["tokens_positive_eval"]]
    phrases: list[Spans] = []
    for annotation in record.get("annotations", []):
        spans = _as_spans(annotation["tokens_positive"])
        if spans and spans not in phrases:
            phrases.append(spans)
    return phrases


def phrase_annotation_indices(record: Mapping[str, Any], phrases: Sequence[Spans]) -> list[list[int]]:
    """For each phrase, the indices of the record's annotations with a span that overlaps one of the phrase's spans."""
    annotations = record.get("annotations", [])
    return [
        [i for i, annotation in enumerate(annotations) if _overlap(phrase, annotation["tokens_positive"])]
        for phrase in phrases
    ]


def _as_spans(spans: Sequence[Sequence[int]]) -> Spans:
    return [[int(start), int(end)] for start, end in spans]


def _overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(max(s1, s2) < min(e1, e2) for s1, e1 in a for s2, e2 in b)


# find_phrases: words that end a phrase (prepositions, conjunctions, pronouns, auxiliaries) and words dropped from a
# phrase's start (articles, possessives, demonstratives, small numbers; swapped_captions moves them with their phrase).
_BREAK_WORDS = frozenset(
    "of in on at to with by for from into onto over under above below behind beside beneath near next between "
    "through across around against along among inside outside up down off out about toward towards left right "
    "and or but while as than that which who whom whose where when "
    "is are was were be been being has have had do does did can could will would may might "
    "it its they them he him she we us you i me there here not".split()
)
LEADING_WORDS = frozenset(
    "a an the this these those some any each every another his her their our your my "
    "one two three four five six seven eight nine ten".split()
)
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def find_phrases(caption: str) -> list[Spans]:
    """The phrases of a free caption, each as one [start, end) span, in order: for GLIP-style grounding of a caption
    given without spans (GLIP's `run_on_web_image` finds noun phrases with NLTK; this is a simpler rule).

    A phrase is a run of words with no punctuation, no break word (a preposition, conjunction, pronoun or auxiliary
    verb, listed in `_BREAK_WORDS`) and no new article inside it, without its leading articles, possessives or small
    numbers: "a red circle left of two blue stars, and the sky" -> "red circle", "blue stars", "sky". A heuristic,
    not a parser: a verb outside the list stays in its phrase ("a man riding a horse" -> "man riding", "horse").
    """
    phrases: list[Spans] = []
    run: list[re.Match] = []
    position = 0

    def close_run() -> None:
        while run and run[0].group(0).lower() in LEADING_WORDS:
            run.pop(0)
        if run:
            phrases.append([[run[0].start(), run[-1].end()]])
        run.clear()

    for word in _WORD.finditer(caption):
        lower = word.group(0).lower()
        starts_phrase = lower in LEADING_WORDS and any(w.group(0).lower() not in LEADING_WORDS for w in run)
        if caption[position : word.start()].strip() or lower in _BREAK_WORDS or starts_phrase:
            close_run()
        if lower not in _BREAK_WORDS:
            run.append(word)
        position = word.end()
    close_run()
    return phrases
