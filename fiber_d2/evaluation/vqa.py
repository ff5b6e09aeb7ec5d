"""VQAv2 accuracy: the official soft score (min(#humans who gave the answer / 3, 1), averaged leave-one-out).

Answers are compared after `normalize_vqa_answer`, applied to the prediction and to every human answer alike (the
official script leaves the human answers as they are when all ten are the same string; that only makes a difference
when such an answer is itself unnormalised, e.g. "Yes" ten times).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Sequence

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .distributed import gather_unique

logger = logging.getLogger(__name__)

# Punctuation the official evaluation removes or turns into a space; apostrophes are kept (for the contractions).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = dict(
    {word: str(value) for value, word in enumerate("zero one two three four five six seven eight nine ten".split())},
    none="0",
)
_ARTICLES = {"a", "an", "the"}
# The unambiguous part of the official table of contractions written without their apostrophe ("its", "lets", "wed",
# "well", "were", "id", "ill", "shell" are left alone: they are also words).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "im": "i'm",
    "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've", "mightnt": "mightn't", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "shant": "shan't", "shes": "she's",
    "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's", "thered": "there'd", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "werent": "weren't", "weve": "we've", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whered": "where'd", "wheres": "where's", "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldnt": "wouldn't",
    "wouldve": "would've", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it.

    Lowercased, whitespace collapsed. Each punctuation mark of `_PUNCTUATION` is deleted where the answer has it next
    to a space or contains a digit-comma-digit ("1,000" -> "1000"), else replaced by a space ("t-shirt" -> "t shirt");
    periods are deleted unless a digit follows ("3.5" stays). Then, word by word: number words zero..ten (and "none")
    become digits, articles (a, an, the) are dropped, and common contractions missing their apostrophe get it back
    ("dont" -> "don't", see `_CONTRACTIONS`).
    """
    text = " ".join(text.lower().split())
    has_digit_comma_digit = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        spaced = f"{mark} " in text or f" {mark}" in text
        text = text.replace(mark, "" if spaced or has_digit_comma_digit else " ")
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text)
    words = (_NUMBER_WORDS.get(word, word) for word in text.split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_soft_score(predicted: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy of `predicted` in [0, 1]: for each human answer left out in turn, min(#of the others
    equal to `predicted` / 3, 1), averaged. Both sides are normalised (`normalize_vqa_answer`). With fewer than the
    usual ten answers the same leave-one-out runs over those given (so a single answer always scores 0)."""
    if not answers:
        raise ValueError(f"vqa_soft_score needs at least one human answer (predicted {predicted!r})")
    predicted = normalize_vqa_answer(predicted)
    matches = sum(normalize_vqa_answer(answer) == predicted for answer in answers)
    # Leaving out a matching answer leaves matches - 1 equal ones, leaving out another leaves all of them.
    left_out_match = matches * min((matches - 1) / 3, 1.0)
    left_out_other = (len(answers) - matches) * min(matches / 3, 1.0)
    return (left_out_match + left_out_other) / len(answers)


class VQAEvaluator(DatasetEvaluator):
    """VQA accuracy (percent): the mean `vqa_soft_score` of the questions answered, overall and per `answer_type`.

    `process()` takes outputs `{"question_id": int, "answer": str}`; the ground truth is the `answers` and
    `answer_type` of the records of `DatasetCatalog.get(dataset_name)`, keyed by `question_id`. `evaluate()` returns
    `{"vqa": {"accuracy", "accuracy_<answer_type>" for each type present (e.g. "accuracy_yes/no")}}`; a question
    answered by several processes counts once. With `output_dir`, the answers go to `vqa_predictions.json` in the
    official submission format `[{"question_id", "answer"}]`.
    """

    predictions_file = "vqa_predictions.json"

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._records_by_question: dict[Any, dict] | None = None
        self._answers: dict[Any, str] = {}

    def reset(self) -> None:
        self._answers = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Keep each output's answer under its question_id."""
        for outputs_i in outputs:
            question_id, answer = outputs_i["question_id"], outputs_i["answer"]
            if question_id not in self._records():
                raise KeyError(f"question_id {question_id!r} is not a question of dataset {self._dataset_name!r}")
            if not isinstance(answer, str):
                raise TypeError(
                    f"dataset {self._dataset_name!r}, question_id {question_id!r}: the answer must be a str, got "
                    f"{type(answer).__name__}"
                )
            self._answers[question_id] = answer

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"vqa": {metric: percent}}` on the main process, over the questions any process answered; {} elsewhere."""
        answers = gather_unique(self._answers)
        if answers is None:
            return {}
        if not answers:
            logger.warning("VQAEvaluator on %r: no question was answered", self._dataset_name)
            return {}
        unseen = len(self._records()) - len(answers)
        if unseen:
            logger.warning(
                "VQAEvaluator: %d of %d questions of %r were never answered; the metrics cover the %d answered",
                unseen, len(self._records()), self._dataset_name, len(answers),
            )
        if self._output_dir:
            self._dump(answers)
        scores_by_type: dict[str, list[float]] = {}
        for question_id, answer in answers.items():
            record = self._records()[question_id]
            if not record["answers"]:
                raise ValueError(
                    f"dataset {self._dataset_name!r}, question_id {question_id!r}: the record has no human answer"
                )
            scores_by_type.setdefault(record["answer_type"], []).append(vqa_soft_score(answer, record["answers"]))
        all_scores = [score for scores in scores_by_type.values() for score in scores]
        metrics = {"accuracy": 100.0 * sum(all_scores) / len(all_scores)}
        for answer_type in sorted(scores_by_type):
            scores = scores_by_type[answer_type]
            metrics[f"accuracy_{answer_type}"] = 100.0 * sum(scores) / len(scores)
        logger.info(
            "VQAEvaluator on %r (%d questions), in %%:\n%s",
            self._dataset_name, len(answers), create_small_table(metrics),
        )
        return {"vqa": metrics}

    def _records(self) -> dict[Any, dict]:
        if self._records_by_question is None:
            records_by_question = {}
            for record in DatasetCatalog.get(self._dataset_name):
                if not {"question_id", "answers", "answer_type"} <= record.keys():
                    raise ValueError(
                        f"VQAEvaluator needs VQA records (question_id, answers, answer_type); dataset "
                        f"{self._dataset_name!r} has a record with keys {sorted(record)}"
                    )
                if record["question_id"] in records_by_question:
                    raise ValueError(
                        f"dataset {self._dataset_name!r}: question_id {record['question_id']!r} is not unique"
                    )
                records_by_question[record["question_id"]] = record
            self._records_by_question = records_by_question
        return self._records_by_question

    def _dump(self, answers: dict[Any, str]) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self.predictions_file)
        with PathManager.open(path, "w") as f:
            json.dump([{"question_id": qid, "answer": answers[qid]} for qid in sorted(answers)], f)
        logger.info("Wrote the answers in the VQA submission format to %s", path)
