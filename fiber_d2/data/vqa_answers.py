"""VQA answers as the official VQA evaluation reads them, and the soft score of a training target.

The rules are those of the official evaluation (GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`,
`processPunctuation` and `processDigitArticle`); `evaluation/vqa.py` applies them the way that script does, and the
data mapper uses them to build the answer vocabulary and the training targets.
"""
from __future__ import annotations

import re
from typing import Sequence

# Marks that `process_punctuation` deletes or turns into a space, in the official order. Apostrophes, colons and
# periods are not among them (periods have their own rule).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official script passes re.UNICODE (= 32) where `sub` takes its count, so it deletes at most 32 periods.
_MAX_PERIODS_DELETED = 32
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset(("a", "an", "the"))
# The official table of contractions written without (some of) their apostrophes, less the entries that can never
# apply: "Im", "Ive", "Id've" and "I'dve" (looked up after lowercasing, so "im" stays "im") and the identities "let's"
# and "she's". "somebody'd" -> "somebodyd" is as official.
CONTRACTIONS = {
    "'ow'sat": "'ow's'at", "'ows'at": "'ow's'at", "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldn'tve": "couldn't've", "couldnt": "couldn't", "couldnt've": "couldn't've", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadn'tve": "hadn't've", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "he'dve": "he'd've", "hed": "he'd",
    "hed've": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't",
    "it'dve": "it'd've", "itd": "it'd", "itd've": "it'd've", "itll": "it'll", "maam": "ma'am",
    "mightn'tve": "mightn't've", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "shant": "shan't", "she'dve": "she'd've", "shed've": "she'd've",
    "shouldn'tve": "shouldn't've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldve": "should've",
    "somebody'd": "somebodyd", "somebody'dve": "somebody'd've", "somebodyd've": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someone'dve": "someone'd've", "someoned": "someone'd",
    "someoned've": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "something'dve": "something'd've", "somethingd": "something'd", "somethingd've": "something'd've",
    "somethingll": "something'll", "thats": "that's", "there'dve": "there'd've", "thered": "there'd",
    "thered've": "there'd've", "therere": "there're", "theres": "there's", "they'dve": "they'd've",
    "theyd": "they'd", "theyd've": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "we'dve": "we'd've", "wed've": "we'd've", "werent": "weren't",
    "weve": "we've", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "who'dve": "who'd've",
    "whod": "who'd", "whod've": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldn'tve": "wouldn't've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldve": "would've", "y'all'dve": "y'all'd've", "y'alld've": "y'all'd've",
    "y'allll": "y'all'll", "yall": "y'all", "yall'd've": "y'all'd've", "yall'll": "y'all'll", "you'dve": "you'd've",
    "youd": "you'd", "youd've": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def strip_vqa_answer(text: str) -> str:
    """Tabs and newlines as spaces, leading and trailing whitespace removed: what the official script does to every
    answer, predicted or human, before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation rule. Whether a mark of `PUNCTUATION` is deleted or becomes a space is decided on the
    text as given (case, spacing and the other marks untouched): deleted when the text has the mark next to a space
    or has a digit-comma-digit anywhere ("1,000"), else a space ("t-shirt" -> "t shirt"). Then periods not followed
    by a digit are deleted ("3.5" keeps its period), at most 32 of them."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        spaced = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if spaced or delete_all else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_DELETED)


def process_digit_article(text: str) -> str:
    """The official word rule: lowercase, split on whitespace, number words zero..ten (and "none") as digits,
    articles (a, an, the) dropped, then `CONTRACTIONS` applied word by word; words joined by single spaces."""
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official evaluation normalises it (when the human answers of its question differ):
    `process_digit_article(process_punctuation(strip_vqa_answer(text)))`, e.g. "Two dogs." -> "2 dogs"."""
    return process_digit_article(process_punctuation(strip_vqa_answer(text)))


def vqa_soft_score(answer: str, human_answers: Sequence[str]) -> float:
    """The soft target of `answer` in [0, 1] for training: for each human answer left out in turn, min(#of the others
    equal to `answer` / 3, 1), averaged, all answers compared after `normalize_vqa_answer` (10 answers: 0, 0.3, 0.6,
    0.9 or 1 for 0, 1, 2, 3 or more matches). With fewer answers the same leave-one-out runs over those given."""
    if not human_answers:
        raise ValueError(f"vqa_soft_score needs at least one human answer (answer {answer!r})")
    answer = normalize_vqa_answer(answer)
    matches = sum(normalize_vqa_answer(human) == answer for human in human_answers)
    # Leaving out a matching answer leaves matches - 1 equal ones, leaving out another leaves all of them.
    left_out_match = matches * min((matches - 1) / 3, 1.0)
    left_out_other = (len(human_answers) - matches) * min(matches / 3, 1.0)
    return (left_out_match + left_out_other) / len(human_answers)
