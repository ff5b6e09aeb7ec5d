"""VQA answer normalisation and accuracy against the official evaluation's rules (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py); every expected value follows those rules by hand."""
import pytest

from fiber_d2.data.vqa_answers import normalize_vqa_answer, process_punctuation
from fiber_d2.evaluation import VQAEvaluator
from fiber_d2.evaluation.vqa import round_percent, vqa_accuracy


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"), ("the dog.", "dog"), ("Yes!", "yes"), ("  A  Red\tCar ", "red car"), ("none", "0"),
    ("1,000", "1000"), ("3.5", "3.5"), ("1.5.", "1.5"), ("a.b.c", "abc"), ("t-shirt", "t shirt"),
    ("black / white", "black white"), ("blue,white", "blue white"), ("(yes)", "yes"), ("yes (maybe)", "yes maybe"),
    # contractions: the full official table ...
    ("dont", "don't"), ("hed", "he'd"), ("oclock", "o'clock"), ("somebody'd", "somebodyd"), ("Let's go", "let's go"),
    # ... whose capitalised keys "Im"/"Ive" never match the lowercased words
    ("im", "im"), ("Im", "im"), ("ive", "ive"), ("I'm", "i'm"),
    # a digit-comma-digit anywhere deletes every mark; the period rule then drops the final "."
    ("10,000.", "10000"), ("2,5-3", "253"),
    # "," has a space beside it (deleted), "-" has not (a space)
    ("5-10, maybe", "5 10 maybe"),
])
def test_normalize_vqa_answer_follows_the_official_rules(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_punctuation_rule_looks_at_the_original_text():
    # "(" becomes a space; "-" had no space beside it in the original, so both of its occurrences become spaces too
    # (deciding on the partly processed "x -y-z" would delete them: "x yz").
    assert process_punctuation("x(-y-z") == "x  y z"
    assert normalize_vqa_answer("x(-y-z") == "x y z"


def test_at_most_32_periods_are_deleted():
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


def test_identical_human_answers_are_compared_raw():
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # tabs/newlines and outer spaces go first, always
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    # as soon as one answer differs, every side is normalised
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes."]) == 1.0


def test_leave_one_out_accuracy():
    # 3 of 10 match: 3 x min(2/3, 1) + 7 x min(3/3, 1), over 10.
    assert vqa_accuracy("don't", ["dont"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("i'm", ["im"] * 4 + ["no"] * 6) == 0.0  # "im" stays "im"
    assert vqa_accuracy("im", ["im"] * 4 + ["no"] * 6) == 1.0
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("yes", ["yes"]) == 0.0  # a single answer leaves no other to agree with
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


def test_round_percent_takes_halves_away_from_zero():
    # The official script is Python 2, whose round() takes an exact half away from zero (Python 3's gives 3.12).
    assert round_percent(3.125) == 3.13
    assert round_percent(9.375) == 9.38
    assert round_percent(2.675) == 2.67  # the double just below 2.675
    assert round_percent(100 / 3) == 33.33


def _record(question_id, answers, answer_type):
    return {"file_name": "x.jpg", "image_id": 1, "question_id": question_id, "question": "?", "answers": answers,
            "multiple_choice_answer": answers[0], "answer_type": answer_type}


def test_vqa_evaluator_rounds_to_two_decimals(register):
    # 32 questions, one right: 100 / 32 = 3.125 -> 3.13; the three "other" questions: 1 of 3 -> 33.33.
    records = [_record(q, ["yes"] * 10, "yes/no" if q >= 3 else "other") for q in range(32)]
    evaluator = VQAEvaluator(register(records, evaluator_type="vqa"))
    evaluator.reset()
    for q in range(32):
        evaluator.process([{"question_id": q}], [{"question_id": q, "answer": "yes" if q == 0 else "no"}])
    assert evaluator.evaluate() == {"vqa": {"accuracy": 3.13, "accuracy_other": 33.33, "accuracy_yes/no": 0.0}}
