"""The phrases of a grounding record (MDETR format): the labels of its prompt, shared by the mapper and the evaluators.

A phrase is a list of character spans `[start, end)` of the record's caption. The model's `pred_classes` for a
grounding prompt are indices into `grounding_phrases(record)`, so the evaluators and the data mapper must agree on
this order.
"""
from __future__ import annotations

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
