"""ptb_tokenize: coco-caption's tokenisation (Stanford PTBTokenizer 3.4.1 -preserveLines -lowerCase, then its
PUNCTUATIONS dropped). Every expected value follows the tokenizer's rules; each one was also checked against the Java
program."""
import pytest

from fiber_d2.evaluation.ptb_tokenizer import ptb_tokenize


@pytest.mark.parametrize("caption, tokens", [
    # clitics and negations split off; assimilations split
    ("A man's hat.", "a man 's hat"),
    ("I don't know, CAN'T you see? It won't work; I cannot.", "i do n't know ca n't you see it wo n't work i can not"),
    ("They're gonna sell 'em.", "they 're gon na sell 'em"),
    ("rock'n'roll at 5 o'clock", "rock 'n' roll at 5 o'clock"),
    # hyphenated words stay whole; free-standing dashes are punctuation
    ("A t-shirt, a black-and-white photo - and a dog -- wow --- yes",
     "a t-shirt a black-and-white photo and a dog wow yes"),
    # quotes become `` '' ` ' and are dropped
    ('She said "hello" to \'Bob\'.', "she said hello to bob"),
    ("\u201cCurly\u201d quotes and caf\u00e9", "curly quotes and caf\u00e9"),
    # brackets become -LRB- ... and, lower-cased, survive coco-caption's upper-case list
    ("A hat (red) on [a] {box}", "a hat -lrb- red -rrb- on -lsb- a -rsb- -lcb- box -rcb-"),
    # abbreviations keep their period; numbers, times, dates, fractions and slashes stay whole
    ("A U.S. Army truck", "a u.s. army truck"),
    ("Dr. Smith's dog, etc.", "dr. smith 's dog etc."),
    ("3.5 ft/tall; 1,000 dogs: 10:30 12/25/2014", "3.5 ft/tall 1,000 dogs 10:30 12/25/2014"),
    ("$5 or 50% at AT&T &amp; co", "$ 5 or 50 % at at&t & co"),
    ("a 5 7/8 inch pipe", "a 5\u00a07/8 inch pipe"),  # one token, a no-break space inside
    # ellipses go; "?!" is one token, not in the list
    ("wait... what\u2026", "wait what"),
    ("?!...", "?!"),
    ("", ""),
])
def test_ptb_tokenize_follows_the_ptb_rules(caption, tokens):
    assert ptb_tokenize([caption]) == [tokens]


def test_captions_are_one_text_one_per_line():
    # A one-letter acronym before a line starting with a typical sentence opener loses its period ("b", the period
    # read next and dropped); before a lower-case line it keeps it.
    assert ptb_tokenize(["He saw plan B.", "The end", "He saw plan B.", "the end"]) == [
        "he saw plan b", "the end", "he saw plan b.", "the end"]
    assert ptb_tokenize(["two\nlines", "x"]) == ["two lines", "x"]  # a newline inside a caption is a space
    assert ptb_tokenize([]) == []
