"""Character spans of a prompt -> the prompt tokens they cover (`create_positive_map`, official FIBER
fine_grained/maskrcnn_benchmark/data/datasets/modulated_coco.py; docs/FIBER_DETAILS.md).

A span [start, end) covers the tokens from the one holding character `start` to the one holding character `end - 1`,
both inclusive. With a byte-level BPE (RoBERTa: trimmed offsets), spaces belong to no token, so, exactly as GLIP's
`char_to_token` retries do, a start that maps to no token is retried at start+1 then start+2, and an end at end-2
then end-3. Unlike GLIP, which silently leaves such a row empty, a span that still maps to no token (only spaces, or
text cut off by truncation) raises a PromptError that names the record and quotes the span.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

Offsets = list[tuple[int, int]]
Where = Union[str, Sequence[str]]


class PromptError(ValueError):
    """A prompt or caption span that cannot be turned into tokens; the message names the record."""


def _encode(tokenizer, caption: str, max_length: int) -> tuple[list[int], Offsets]:
    encoded = tokenizer(caption, return_offsets_mapping=True, truncation=True, max_length=max_length)
    return list(encoded["input_ids"]), [(int(s), int(e)) for s, e in encoded["offset_mapping"]]


def encode_prompt(tokenizer, caption: str, max_len: int) -> tuple[torch.Tensor, Offsets]:
    """caption -> (input ids LongTensor [T]: <s> ... </s>, truncated to max_len tokens, no padding; offsets).

    `offsets[i]` = (first char, end char) of token i in `caption`; special tokens have (0, 0). `tokenizer` is a fast
    (offset-mapping) tokenizer such as `load_tokenizer`'s.
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for <s> and </s>, got {max_len}")
    ids, offsets = _encode(tokenizer, caption, max_len)
    return torch.tensor(ids, dtype=torch.long), offsets


def encode_prompt_with_cut(tokenizer, caption: str, max_len: int) -> tuple[torch.Tensor, Offsets, int]:
    """`encode_prompt` plus where truncation cut the caption: the index of the first character left out.

    That is the first character of the first token dropped, or len(caption) when the whole caption fits. A span
    [start, end) is intact iff end <= the cut (a trailing space before the cut does not matter).
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for <s> and </s>, got {max_len}")
    # One token more than allowed tells whether truncation happens, and where (without tokenising a long caption twice).
    ids, offsets = _encode(tokenizer, caption, max_len + 1)
    if len(ids) <= max_len:
        return torch.tensor(ids, dtype=torch.long), offsets, len(caption)
    cut = offsets[max_len - 1][0]  # <s>, content 1..max_len-2 kept; content token max_len-1 is the first dropped
    ids, offsets = _encode(tokenizer, caption, max_len)
    return torch.tensor(ids, dtype=torch.long), offsets, cut


def prompt_length(tokenizer, caption: str) -> int:
    """Tokens of `caption` with <s> and </s>, without truncation."""
    return len(tokenizer(caption)["input_ids"])


def fits(tokenizer, caption: str, max_len: int) -> bool:
    """Whether `caption` takes at most max_len tokens with <s> and </s> (tokenises at most max_len + 1 tokens)."""
    return len(tokenizer(caption, truncation=True, max_length=max_len + 1)["input_ids"]) <= max_len


def char_to_token_table(offsets: Sequence[tuple[int, int]], num_chars: int) -> list[int]:
    """For each of `num_chars` characters, the index of the token that holds it, or -1 (spaces, truncated text).

    Special tokens (offsets (0, 0)) and other empty tokens hold no character, as in `BatchEncoding.char_to_token`.
    """
    table = [-1] * num_chars
    for index, (start, end) in enumerate(offsets):
        for char in range(max(start, 0), min(end, num_chars)):
            if table[char] < 0:
                table[char] = index
    return table


def span_token_range(table: Sequence[int], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) token index, inclusive, of span [start, end) with GLIP's retries; None if it maps to no token."""

    def token_at(chars):
        return next((table[c] for c in chars if 0 <= c < len(table) and table[c] >= 0), None)

    first = token_at((start, start + 1, start + 2))
    last = token_at((end - 1, end - 2, end - 3))
    if first is None or last is None or last < first:
        return None
    return first, last


def _where_of(where: Where, target: int) -> str:
    return f"{where}, target {target}" if isinstance(where, str) else str(where[target])


def char_spans_to_token_map(
    offsets: Sequence[tuple[int, int]],
    spans_per_target: Sequence[Sequence[Sequence[int]]],
    num_tokens: int,
    where: Where,
    caption: str | None = None,
) -> torch.Tensor:
    """Offsets of the prompt's tokens + each target's character spans -> positive map BoolTensor [N, num_tokens].

    Row n marks the tokens of all of target n's spans (GLIP's rule, see the module doc). `num_tokens` >= len(offsets)
    (wider maps are zero-padded). `where` names the record in errors: a string (the target index is appended) or one
    string per target (e.g. "file X, image_id 7, annotation 2"). With `caption`, errors quote the span's text.
    Raises PromptError for a span that is malformed, maps to no token, or lies past the (truncated) tokens.
    """
    if num_tokens < len(offsets):
        raise ValueError(f"num_tokens ({num_tokens}) is smaller than the number of token offsets ({len(offsets)})")
    if not isinstance(where, str) and len(where) != len(spans_per_target):
        raise ValueError(f"got {len(where)} names in `where` for {len(spans_per_target)} targets")
    covered_end = max((end for _, end in offsets), default=0)  # end of the last character the tokens hold
    num_chars = len(caption) if caption is not None else max(
        [covered_end] + [int(end) for spans in spans_per_target for _, end in spans]
    )
    table = char_to_token_table(offsets, num_chars)
    positive_map = torch.zeros((len(spans_per_target), num_tokens), dtype=torch.bool)
    for target, spans in enumerate(spans_per_target):
        for span in spans:
            problem = _span_problem(span, num_chars)
            if problem is None:
                start, end = int(span[0]), int(span[1])
                token_range = span_token_range(table, start, end)
                if token_range is not None:
                    positive_map[target, token_range[0] : token_range[1] + 1] = True
                    continue
                if start >= covered_end and (caption is None or caption[covered_end:].strip()):
                    problem = f"lies beyond the {len(offsets)} tokens kept (the prompt was truncated)"
                else:
                    problem = "covers no token"
            text = f" {caption[span[0] : span[1]]!r}" if caption is not None and len(span) == 2 else ""
            raise PromptError(f"{_where_of(where, target)}: span {list(span)}{text} {problem}")
    return positive_map


def _span_problem(span: Sequence[int], num_chars: int) -> str | None:
    if len(span) != 2:
        return "is not a [start, end) pair"
    start, end = span
    if not 0 <= start < end <= num_chars:
        return f"is not a non-empty range inside the caption's {num_chars} characters"
    return None
