"""VQAv2 accuracy exactly as the official evaluation computes it (GT-Vision-Lab/VQA,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py`).

Per question: tabs/newlines become spaces and every answer is stripped. When the human answers are not all the same
string, the prediction and each human answer are normalised (`normalize_vqa_answer`); when they are all the same, raw
strings are compared ("Yes" does not match ten "yes"). The accuracy is min(#other human answers equal to the
prediction / 3, 1) averaged over the human answers left out in turn. Overall and per answer type: 100 x the mean,
rounded to 2 decimals, halves away from zero (the script's Python 2 `round`).
"""
from __future__ import annotations

import json
import logging
import os
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..data.vqa_answers import normalize_vqa_answer, strip_vqa_answer
from .distributed import gather_unique

logger = logging.getLogger(__name__)


def vqa_accuracy(predicted: str, human_answers: Sequence[str]) -> float:
    """The official accuracy of `predicted` for one question, in [0, 1] (see the module docstring). With fewer than
    the usual ten human answers the same leave-one-out runs over those given (so a single answer always scores 0)."""
    if not human_answers:
        raise ValueError(f"vqa_accuracy needs at least one human answer (predicted {predicted!r})")
    predicted = strip_vqa_answer(predicted)
    human_answers = [strip_vqa_answer(answer) for answer in human_answers]
    if len(set(human_answers)) > 1:
        predicted = normalize_vqa_answer(predicted)
        human_answers = [normalize_vqa_answer(answer) for answer in human_answers]
    matches = [answer == predicted for answer in human_answers]
    total = sum(matches)
    return sum(min(1, (total - left_out) / 3) for left_out in matches) / len(matches)


def round_percent(value: float) -> float:
    """`value` rounded to 2 decimals, an exact half away from zero (3.125 -> 3.13), as Python 2's `round(value, 2)`."""
    return float(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


class VQAEvaluator(DatasetEvaluator):
    """VQA accuracy (percent, 2 decimals): the mean `vqa_accuracy` of the questions answered, overall and per
    `answer_type`, summed in the dataset's question order as the official script sums them.

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
        all_scores: list[float] = []
        scores_by_type: dict[str, list[float]] = {}
        for question_id, record in self._records().items():  # in the dataset's order, as the official sums
            if question_id not in answers:
                continue
            if not record["answers"]:
                raise ValueError(
                    f"dataset {self._dataset_name!r}, question_id {question_id!r}: the record has no human answer"
                )
            score = vqa_accuracy(answers[question_id], record["answers"])
            all_scores.append(score)
            scores_by_type.setdefault(record["answer_type"], []).append(score)
        metrics = {"accuracy": round_percent(100 * sum(all_scores) / len(all_scores))}
        for answer_type in sorted(scores_by_type):
            scores = scores_by_type[answer_type]
            metrics[f"accuracy_{answer_type}"] = round_percent(100 * sum(scores) / len(scores))
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
