"""Character spans -> token positive maps (GLIP's rule), detection prompts, vocabulary chunks, training prompts,
and the left/right swap of flipped captions. Token indices are hand-checked against the tiny tokenizer below."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from fiber_d2.data.grounding_mapper import swap_left_right
from fiber_d2.data.positive_map import (
    PromptError,
    char_spans_to_token_map,
    encode_prompt,
    encode_prompt_with_cut,
    fits,
    prompt_length,
)
from fiber_d2.data.prompts import (
    PromptChunk,
    clean_category_name,
    detection_prompt,
    training_detection_prompt,
    vocabulary_chunks,
)
from fiber_d2.data.tokenizer import load_tokenizer, train_roberta_bpe_tokenizer

COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
SHAPES = ["circle", "square", "star", "triangle", "cross"]


def tiny_tokenizer_texts() -> list[str]:
    texts = [f"{c} {s}. the {c} {s} left of a {s}, right of the {c} one" for c in COLOURS for s in SHAPES] * 4
    return texts + [f"{c}. {s}" for c in COLOURS for s in SHAPES] * 4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(train_roberta_bpe_tokenizer(tiny_tokenizer_texts(), tmp_path_factory.mktemp("tok"),
                                                          vocab_size=400)))


def token_sets(positive_map: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in positive_map]


# "the red circles left of a star."
#  0 <s> | 1 't' (0,1) | 2 'he' (1,3) | 3 'Ġred' (4,7) | 4 'Ġcircle' (8,14) | 5 's' (14,15) | 6 'Ġleft' (16,20)
#  7 'Ġof' (21,23) | 8 'Ġa' (24,25) | 9 'Ġstar' (26,30) | 10 '.' (30,31) | 11 </s>
CAPTION = "the red circles left of a star."


def test_tokens_of_the_test_caption(tokenizer):
    ids, offsets = encode_prompt(tokenizer, CAPTION, 256)
    assert ids.dtype == torch.long and ids.shape == (12,)
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == [
        "<s>", "t", "he", "Ġred", "Ġcircle", "s", "Ġleft", "Ġof", "Ġa", "Ġstar", ".", "</s>"
    ]
    assert offsets[0] == offsets[-1] == (0, 0)
    assert offsets[3:6] == [(4, 7), (8, 14), (14, 15)]
    assert prompt_length(tokenizer, CAPTION) == 12 and fits(tokenizer, CAPTION, 12) and not fits(tokenizer, CAPTION, 11)


@pytest.mark.parametrize(
    "spans, expected",
    [
        ([[4, 7]], {3}),  # "red"
        ([[3, 7]], {3}),  # " red": starts on a space -> retried at start+1
        ([[4, 8]], {3}),  # "red ": ends on a space -> retried at end-2
        ([[2, 8]], {2, 3}),  # "e red ": a sub-word start and a trailing space
        ([[26, 31]], {9, 10}),  # "star.": ends on punctuation, which is its own token
        ([[8, 14]], {4}),  # "circle" inside "circles": only the sub-word token
        ([[8, 15]], {4, 5}),  # "circles"
        ([[4, 15]], {3, 4, 5}),  # "red circles"
        ([[4, 7], [26, 30]], {3, 9}),  # two spans, one target: "red" ... "star"
        ([[0, 31]], set(range(1, 11))),  # the whole caption: never the special tokens
    ],
)
def test_positive_map_of_tricky_spans(tokenizer, spans, expected):
    ids, offsets = encode_prompt(tokenizer, CAPTION, 256)
    positive_map = char_spans_to_token_map(offsets, [spans], len(ids), "test", CAPTION)
    assert positive_map.dtype == torch.bool and positive_map.shape == (1, 12)
    assert token_sets(positive_map) == [expected]


def test_positive_map_is_glips_rule_on_every_span(tokenizer):
    """Every span of the caption, against GLIP's create_positive_map written with HF's char_to_token."""
    encoding = tokenizer(CAPTION, return_offsets_mapping=True)
    ids, offsets = encode_prompt(tokenizer, CAPTION, 256)

    def glip(start, end):
        first = encoding.char_to_token(start)
        for retry in (start + 1, start + 2):
            if first is None and retry < len(CAPTION):
                first = encoding.char_to_token(retry)
        last = encoding.char_to_token(end - 1)
        for retry in (end - 2, end - 3):
            if last is None and retry >= 0:
                last = encoding.char_to_token(retry)
        return set() if first is None or last is None else set(range(first, last + 1))

    checked = 0
    for start in range(len(CAPTION)):
        for end in range(start + 1, len(CAPTION) + 1):
            expected = glip(start, end)
            if expected:
                assert token_sets(char_spans_to_token_map(offsets, [[[start, end]]], len(ids), "x", CAPTION)) == [
                    expected
                ], (start, end)
                checked += 1
            else:  # GLIP leaves the row empty; we refuse
                with pytest.raises(PromptError):
                    char_spans_to_token_map(offsets, [[[start, end]]], len(ids), "x", CAPTION)
    assert checked > 400


def test_span_beyond_truncation_names_the_record(tokenizer):
    # max_len 6: <s> 't' 'he' 'Ġred' 'Ġcircle' </s>; "s" (14) is the first character cut.
    ids, offsets, cut = encode_prompt_with_cut(tokenizer, CAPTION, 6)
    assert ids.tolist() == encode_prompt(tokenizer, CAPTION, 6)[0].tolist() and len(ids) == 6 and cut == 14
    assert token_sets(char_spans_to_token_map(offsets, [[[4, 7]]], 6, "w", CAPTION)) == [{3}]
    with pytest.raises(PromptError, match=r"file a\.json, image_id 7, annotation 2: span \[26, 30\] 'star' lies beyond"):
        char_spans_to_token_map(offsets, [[[4, 7]], [[26, 30]]], 6, ["a", "file a.json, image_id 7, annotation 2"],
                                CAPTION)
    assert encode_prompt_with_cut(tokenizer, CAPTION, 12)[2] == len(CAPTION)


def test_span_covering_no_token_is_an_error(tokenizer):
    # 0 <s> | 1 'a' (0,1) | 2 'Ġ' (2,2) | 3 'Ġ' (3,3) | 4 'Ġred' (4,7) | 5 ',' | ...: characters 1-3 are in no token
    caption = "a   red,circle"
    ids, offsets = encode_prompt(tokenizer, caption, 256)
    assert tokenizer.convert_ids_to_tokens(ids.tolist())[:6] == ["<s>", "a", "Ġ", "Ġ", "Ġred", ","]
    assert token_sets(char_spans_to_token_map(offsets, [[[2, 7]]], len(ids), "w", caption)) == [{4}]
    with pytest.raises(PromptError, match=r"image_id 3, target 0: span \[1, 4\] '   ' covers no token"):
        char_spans_to_token_map(offsets, [[[1, 4]]], len(ids), "image_id 3", caption)
    with pytest.raises(PromptError, match="not a non-empty range"):
        char_spans_to_token_map(offsets, [[[5, 5]]], len(ids), "w", caption)
    with pytest.raises(PromptError, match="not a non-empty range"):
        char_spans_to_token_map(offsets, [[[5, 99]]], len(ids), "w", caption)


def test_positive_map_width_and_empty_targets(tokenizer):
    ids, offsets = encode_prompt(tokenizer, CAPTION, 256)
    wide = char_spans_to_token_map(offsets, [[[4, 7]]], 20, "w")  # no caption: still works, zero-padded
    assert wide.shape == (1, 20) and token_sets(wide) == [{3}]
    assert char_spans_to_token_map(offsets, [], len(ids), "w", CAPTION).shape == (0, 12)
    with pytest.raises(ValueError):
        char_spans_to_token_map(offsets, [], 5, "w", CAPTION)


def test_clean_category_name_is_glips():
    assert clean_category_name("bow_(weapon)") == "bow "  # GLIP keeps the space before the parenthesis
    assert clean_category_name("baseball_bat") == "baseball bat"
    assert clean_category_name("Bat_(animal)") == "Bat "  # no lowercasing
    assert clean_category_name("a__b") == "a b"
    assert clean_category_name("person") == "person"


def test_detection_prompt_format():
    caption, spans = detection_prompt(["red circle", "star", "blue square"])
    assert caption == "red circle. star. blue square"  # no separator after the last name (GLIP)
    assert spans == [[0, 10], [12, 16], [18, 29]]
    assert [caption[s:e] for s, e in spans] == ["red circle", "star", "blue square"]
    assert detection_prompt(["a", "b"], " ") == ("a b", [[0, 1], [2, 3]])
    assert detection_prompt([]) == ("", [])


def test_vocabulary_chunks_of_a_large_vocabulary(tokenizer):
    names = [f"{COLOURS[i % 6]} {SHAPES[i // 6 % 5]}" for i in range(1203)]
    chunks = vocabulary_chunks(names, tokenizer, 256, 40)
    assert len(chunks) == 31 and all(isinstance(c, PromptChunk) for c in chunks)
    assert [len(c.label_names) for c in chunks] == [40] * 30 + [3]
    assert torch.cat([c.label_ids for c in chunks]).tolist() == list(range(1203))  # every name once, in order
    for chunk in chunks:
        assert chunk.label_ids.dtype == torch.long and chunk.input_ids.dtype == torch.long
        assert chunk.label_names == [names[i] for i in chunk.label_ids.tolist()]
        assert chunk.caption == detection_prompt(chunk.label_names)[0]
        assert len(chunk.input_ids) <= 256 and chunk.input_ids.tolist() == tokenizer(chunk.caption)["input_ids"]
        assert chunk.label_token_map.shape == (len(chunk.label_names), len(chunk.input_ids))
        assert chunk.label_token_map.dtype == torch.bool
        assert (chunk.label_token_map.sum(1) == 2).all()  # "Ġred", "Ġcircle" (the first: "red", "Ġcircle")
        assert not chunk.label_token_map.any(0)[[0, -1]].any()
    greedy = vocabulary_chunks(names, tokenizer, 256, 0)
    assert len(greedy) == 15 and all(len(c.input_ids) <= 256 for c in greedy)  # 85 names = 3 * 85 + 1 tokens
    assert torch.cat([c.label_ids for c in greedy]).tolist() == list(range(1203))


def test_vocabulary_chunks_split_chunks_that_do_not_fit(tokenizer):
    names = ["red circle", "star", "blue square", "green", "white triangle", "cross", "black star"]
    # "red circle. star": <s> 'red' 'Ġcircle' '.' 'Ġstar' </s> = 6 tokens; adding ". blue square" makes 9 > 8.
    chunks = vocabulary_chunks(names, tokenizer, 8, 4)
    assert [c.label_ids.tolist() for c in chunks] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [c.caption for c in chunks] == ["red circle. star", "blue square. green", "white triangle. cross",
                                           "black star"]
    assert all(len(c.input_ids) <= 8 for c in chunks)
    assert token_sets(chunks[0].label_token_map) == [{1, 2}, {4}]
    assert token_sets(chunks[3].label_token_map) == [{1, 2}]
    assert [c.label_ids.tolist() for c in vocabulary_chunks(names, tokenizer, 256, 4)] == [[0, 1, 2, 3], [4, 5, 6]]
    with pytest.raises(PromptError, match="'red circle blue square' \\(label 1\\) alone is longer than 5 tokens"):
        vocabulary_chunks(["star", "red circle blue square"], tokenizer, 5, 0)
    with pytest.raises(PromptError, match="category ''"):
        vocabulary_chunks(["star", ""], tokenizer, 20, 0)
    with pytest.raises(PromptError, match="empty"):
        vocabulary_chunks([], tokenizer, 20, 0)


NAMES = ["red circle", "blue square", "green star", "white triangle", "black cross", "yellow circle",
         "red star", "blue cross"]  # each 2 tokens: a prompt of k names is 2 + 2 + 3 (k - 1) = 3k + 1 tokens


def check_prompt(caption, labels, spans, tokenizer, max_len):
    assert [caption[s:e] for s, e in spans] == [NAMES[i] for i in labels]
    assert caption == detection_prompt([NAMES[i] for i in labels])[0]
    assert len(tokenizer(caption)["input_ids"]) <= max_len


def test_training_prompt_positives_and_negatives(tokenizer):
    caption, labels, spans = training_detection_prompt([3, 0, 3], NAMES, 3, False, random.Random(0), tokenizer, 256)
    assert labels[:2] == [3, 0] and len(labels) == 5 and len(set(labels)) == 5  # positives once, 3 negatives
    check_prompt(caption, labels, spans, tokenizer, 256)
    # more negatives asked than exist: all other categories
    caption, labels, spans = training_detection_prompt([1], NAMES, 85, True, random.Random(1), tokenizer, 256)
    assert sorted(labels) == list(range(8))
    check_prompt(caption, labels, spans, tokenizer, 256)
    # numpy generators work too, and shuffling mixes positives and negatives
    orders = set()
    for seed in range(6):
        caption, labels, spans = training_detection_prompt(
            [5, 6], NAMES, 2, True, np.random.default_rng(seed), tokenizer, 256
        )
        check_prompt(caption, labels, spans, tokenizer, 256)
        assert {5, 6} <= set(labels) and len(labels) == 4 and all(isinstance(i, int) for i in labels)
        orders.add(tuple(i in (5, 6) for i in labels))
    assert len(orders) > 1


def test_training_prompt_drops_negatives_first_then_positives(tokenizer, caplog):
    # max_len 10 holds 3 names: both positives and one negative
    caption, labels, spans = training_detection_prompt([2, 4], NAMES, 5, False, random.Random(0), tokenizer, 10)
    assert labels[:2] == [2, 4] and len(labels) == 3 and labels[2] not in (2, 4)
    check_prompt(caption, labels, spans, tokenizer, 10)
    # max_len 7 holds 2 names: the positives only
    caption, labels, spans = training_detection_prompt([2, 4], NAMES, 5, True, random.Random(0), tokenizer, 7)
    assert sorted(labels) == [2, 4]
    check_prompt(caption, labels, spans, tokenizer, 7)
    # max_len 4 holds 1 name: one positive is dropped (the caller drops its boxes), at debug level
    with caplog.at_level(logging.DEBUG, logger="fiber_d2.data.prompts"):
        caption, labels, spans = training_detection_prompt([2, 4], NAMES, 5, False, random.Random(0), tokenizer, 4)
    assert labels == [2] and caption == "green star" and spans == [[0, 10]]
    assert "dropped 5 of 5 negatives and 1 of 2 positives" in caplog.text


def test_swap_left_right_keeps_spans_on_their_words():
    caption = "the left circle right of the star"
    spans = [[[4, 8]], [[9, 15]], [[16, 21]], [[0, 15]], [[16, 33]], [[4, 8], [29, 33]]]
    swapped, moved = swap_left_right(caption, spans)
    assert swapped == "the right circle left of the star"
    assert [[swapped[s:e] for s, e in target] for target in moved] == [
        ["right"], ["circle"], ["left"], ["the right circle"], ["left of the star"], ["right", "star"]
    ]
    swapped, moved = swap_left_right("Left of the RIGHT one, leftover left-hand", [[[0, 4]], [[12, 17]], [[23, 31]],
                                                                                  [[32, 41]]])
    assert swapped == "Right of the LEFT one, leftover right-hand"
    assert [swapped[s:e] for (s, e), in moved] == ["Right", "LEFT", "leftover", "right-hand"]
    assert swap_left_right("no sides", [[[0, 2]]]) == ("no sides", [[[0, 2]]])
