"""Detection vocabularies as prompts: GLIP's name cleaning and prompt format, chunking, training prompts.

A prompt for category names is the names joined by the separator, with nothing after the last one:
"person. bicycle. car" (GLIP/FIBER `engine/inference.py::create_queries_and_maps` and
`od_to_grounding.py::convert_object_detection_to_grounding_optimized_for_od`, `SEPARATION_TOKENS ". "`). Each name's
character span [start, start + len(name)) is one label of the prompt. A vocabulary too long for one prompt is split
into chunks (GLIP's `TEST.CHUNKED_EVALUATION`), never truncated.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import torch

from .positive_map import PromptError, char_spans_to_token_map, encode_prompt, encode_prompt_with_cut, fits

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PromptChunk:
    """One prompt and its L labels (a dataclass).

    caption: the prompt text. input_ids: LongTensor [T], <s> ... </s>, no padding. label_token_map: BoolTensor [L, T],
    row l marks the tokens of label l (every row has at least one token). label_ids: LongTensor [L], the global label
    index of each local label (a contiguous category id, or a phrase index). label_names: the L label texts.
    """

    caption: str
    input_ids: torch.Tensor
    label_token_map: torch.Tensor
    label_ids: torch.Tensor
    label_names: list[str]


def clean_category_name(name: str) -> str:
    """GLIP's `clean_name`, exactly: drop "(...)" (greedy: from the first "(" to the last ")"), "_" -> " ", then
    replace each pair of spaces by one. No lowercasing and no stripping: "bow_(weapon)" -> "bow " as in GLIP/FIBER
    (the trailing space stays in the prompt; the positive map's end retry skips it)."""
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def detection_prompt(names: Sequence[str], separator: str = ". ") -> tuple[str, list[list[int]]]:
    """names -> (caption, [[start, end)] per name): "name1. name2. name3", no separator after the last name."""
    caption, spans = "", []
    for index, name in enumerate(names):
        if index:
            caption += separator
        spans.append([len(caption), len(caption) + len(name)])
        caption += name
    return caption, spans


def make_prompt_chunk(
    names: Sequence[str], label_ids: Sequence[int], tokenizer, max_len: int, separator: str = ". "
) -> PromptChunk:
    """The PromptChunk of `names` (labels `label_ids`); raises PromptError if it exceeds max_len tokens."""
    caption, spans = detection_prompt(names, separator)
    if not fits(tokenizer, caption, max_len):
        raise PromptError(f"the prompt of {len(names)} names is longer than {max_len} tokens: {caption[:200]!r}")
    input_ids, offsets = encode_prompt(tokenizer, caption, max_len)
    where = [f"category {name!r} (label {label})" for name, label in zip(names, label_ids)]
    label_token_map = char_spans_to_token_map(offsets, [[span] for span in spans], len(input_ids), where, caption)
    label_ids = torch.tensor(list(label_ids), dtype=torch.long)
    return PromptChunk(caption, input_ids, label_token_map, label_ids, list(names))


def caption_chunk(
    caption: str, phrases: Sequence[Sequence[Sequence[int]]], tokenizer, max_len: int, where: str = "the caption"
) -> PromptChunk:
    """The PromptChunk of a grounding caption whose labels are `phrases` (each a list of [start, end) character
    spans), labels 0..L-1 named by their text (a phrase's spans joined by spaces).

    Raises PromptError naming `where` if the caption exceeds max_len tokens, has no phrase, or a span maps to no
    token."""
    input_ids, offsets, cut = encode_prompt_with_cut(tokenizer, caption, max_len)
    if cut < len(caption):
        raise PromptError(
            f"{where}: the caption is longer than MODEL.FIBER.MAX_QUERY_LEN = {max_len} tokens (with <s> and </s>): "
            f"{caption[:200]!r}"
        )
    if not phrases:
        raise PromptError(f"{where}: no phrase to ground in {caption[:200]!r}")
    label_token_map = char_spans_to_token_map(
        offsets, phrases, len(input_ids), [f"{where}, phrase {p}" for p in range(len(phrases))], caption
    )
    names = [" ".join(caption[start:end] for start, end in spans) for spans in phrases]
    return PromptChunk(caption, input_ids, label_token_map, torch.arange(len(phrases), dtype=torch.long), names)


def _longest_fitting_prefix(names: Sequence[str], tokenizer, max_len: int, separator: str) -> int:
    """The largest k such that the prompt of names[:k] fits in max_len tokens (0 if not even the first name fits)."""
    if fits(tokenizer, detection_prompt(names, separator)[0], max_len):
        return len(names)
    low, high = 0, len(names) - 1  # invariant: prefix `low` fits (or is empty), prefix `high + 1` does not
    while low < high:
        middle = (low + high + 1) // 2
        if fits(tokenizer, detection_prompt(names[:middle], separator)[0], max_len):
            low = middle
        else:
            high = middle - 1
    return low


def vocabulary_chunks(
    names: Sequence[str], tokenizer, max_len: int, chunk_size: int = 0, separator: str = ". "
) -> list[PromptChunk]:
    """A vocabulary as prompts: consecutive groups of `chunk_size` names (0: as many as fit in each prompt).

    A group whose prompt exceeds max_len tokens is split further (greedily, the longest fitting prefix first), so no
    label is ever truncated. Names keep their order, every name is in exactly one chunk, and label_ids are indices
    into `names`. Names are used as given (clean them first with `clean_category_name`). A name too long for a prompt
    on its own, or an empty name, raises PromptError naming it.
    """
    names = list(names)
    if not names:
        raise PromptError("the vocabulary is empty: no category names to build prompts from")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0: as many names as fit), got {chunk_size}")
    size = chunk_size or len(names)
    chunks: list[PromptChunk] = []
    for group_start in range(0, len(names), size):
        start, group_end = group_start, min(group_start + size, len(names))
        while start < group_end:
            count = _longest_fitting_prefix(names[start:group_end], tokenizer, max_len, separator)
            if count == 0:
                raise PromptError(
                    f"category {names[start]!r} (label {start}) alone is longer than {max_len} tokens "
                    "(MODEL.FIBER.MAX_QUERY_LEN) with <s> and </s>"
                )
            chunks.append(make_prompt_chunk(names[start : start + count], range(start, start + count), tokenizer,
                                            max_len, separator))
            start += count
    return chunks


def _sample(rng, population: list[int], k: int) -> list[int]:
    if hasattr(rng, "sample"):  # random.Random or the `random` module
        return rng.sample(population, k)
    return [population[int(i)] for i in rng.choice(len(population), size=k, replace=False)]  # numpy


def _shuffle(rng, values: list[int]) -> None:
    if hasattr(rng, "sample"):
        rng.shuffle(values)
    else:  # numpy Generator / RandomState: permute indices, so the list's items stay Python ints
        values[:] = [values[int(i)] for i in rng.permutation(len(values))]


def training_detection_prompt(
    positive_ids: Sequence[int],
    names: Sequence[str],
    num_negatives: int,
    shuffle: bool,
    rng,
    tokenizer,
    max_len: int,
    separator: str = ". ",
) -> tuple[str, list[int], list[list[int]]]:
    """GLIP's prompt for a detection image in training (`od_to_grounding.py`): the image's categories plus up to
    `num_negatives` random other categories, in random order if `shuffle`.

    positive_ids: the image's category ids (indices into `names`; repeats are fine). rng: `random.Random`, the
    `random` module, or a numpy Generator/RandomState. Returns (caption, label_ids, spans): the category id of each
    name in prompt order, and its [start, end) span in the caption. If the prompt exceeds max_len tokens, negatives
    are dropped first, then positives (logged at debug level): the positives kept are those in `label_ids`; the
    caller must drop the boxes of the others.
    """
    positives = list(dict.fromkeys(int(i) for i in positive_ids))
    if shuffle:  # as GLIP, which positives survive an overflow is random
        _shuffle(rng, positives)
    positive_set = set(positives)
    others = [i for i in range(len(names)) if i not in positive_set]
    negatives = _sample(rng, others, min(max(num_negatives, 0), len(others)))
    labels = positives + negatives
    if shuffle:
        _shuffle(rng, labels)

    caption, spans = detection_prompt([names[i] for i in labels], separator)
    if not fits(tokenizer, caption, max_len):
        # Drop negatives, then positives, keeping the longest prefix (in drop order) that fits; order is kept.
        ordered = positives + negatives  # kept first to last
        low, high = 0, len(ordered)  # prefix `low` fits, `high` does not
        while high - low > 1:
            middle = (low + high) // 2
            kept = set(ordered[:middle])
            if fits(tokenizer, detection_prompt([names[i] for i in labels if i in kept], separator)[0], max_len):
                low = middle
            else:
                high = middle
        kept = set(ordered[:low])
        dropped_positives = [names[i] for i in positives if i not in kept]
        logger.debug(
            "training prompt longer than %d tokens: dropped %d of %d negatives and %d of %d positives %s",
            max_len, sum(i not in kept for i in negatives), len(negatives), len(dropped_positives), len(positives),
            dropped_positives,
        )
        labels = [i for i in labels if i in kept]
        caption, spans = detection_prompt([names[i] for i in labels], separator)
    return caption, labels, spans
