"""VQAv2 question and annotation files (`v2_OpenEnded_mscoco_*_questions.json`, `v2_mscoco_*_annotations.json`).

Output: one dict per question: `file_name, image_id, question_id, question, answers: [str] (the 10 human answers),
multiple_choice_answer, answer_type`.
"""
from __future__ import annotations

import os
from typing import Any

from .catalog import register_dataset
from .errors import (
    DatasetFormatError,
    RecordReporter,
    describe_source,
    load_json,
    require_dir,
    require_file,
    top_level_list,
)


def load_vqa_json(
    questions_file: str,
    annotations_file: str,
    image_root: str,
    file_name_format: str,
    dataset_name: str | None = None,
) -> list[dict]:
    """Join questions and annotations on `question_id`.

    `file_name` is `{image_root}/{file_name_format.format(image_id=...)}`, e.g. "COCO_val2014_{image_id:012d}.jpg".
    A question without an annotation is an error naming its question id and both files.
    """
    require_file(questions_file, dataset_name, "question file")
    require_file(annotations_file, dataset_name, "annotation file")
    require_dir(image_root, dataset_name, "image folder")
    questions = top_level_list(load_json(questions_file, dataset_name), "questions", questions_file, dataset_name)
    annotations = top_level_list(
        load_json(annotations_file, dataset_name), "annotations", annotations_file, dataset_name
    )
    answers_reporter = RecordReporter(annotations_file, dataset_name)
    by_question: dict[Any, dict] = {}
    for index, annotation in enumerate(annotations):
        label = _label("annotation", annotation, index)
        if not isinstance(annotation, dict):
            raise answers_reporter.not_an_object(label)
        try:
            by_question[annotation["question_id"]] = {
                "answers": [answer["answer"] for answer in annotation["answers"]],
                "multiple_choice_answer": annotation["multiple_choice_answer"],
                "answer_type": annotation["answer_type"],
            }
        except KeyError as e:
            raise answers_reporter.missing_key(e.args[0], label) from None
        except TypeError:
            raise DatasetFormatError(
                f"{answers_reporter.source}: {label}: 'answers' is not a list of {{answer: str}}"
            ) from None

    questions_reporter = RecordReporter(questions_file, dataset_name)
    dicts = []
    for index, question in enumerate(questions):
        label = _label("question", question, index)
        if not isinstance(question, dict):
            raise questions_reporter.not_an_object(label)
        try:
            question_id, image_id, text = question["question_id"], question["image_id"], question["question"]
        except KeyError as e:
            raise questions_reporter.missing_key(e.args[0], label) from None
        if question_id not in by_question:
            raise DatasetFormatError(
                f"{questions_reporter.source}: {label} has no annotation in {describe_source(annotations_file, None)}"
            )
        dicts.append(
            {
                "file_name": os.path.join(image_root, file_name_format.format(image_id=image_id)),
                "image_id": image_id,
                "question_id": question_id,
                "question": text,
                **by_question[question_id],
            }
        )
    return dicts


def _label(kind: str, record: Any, index: int) -> str:
    if isinstance(record, dict) and "question_id" in record:
        return f"{kind} #{index} (question id {record['question_id']})"
    return f"{kind} #{index} (no question_id)"


def register_vqa(
    name: str,
    questions_file: str,
    annotations_file: str,
    image_root: str,
    file_name_format: str,
    **metadata: Any,
) -> None:
    """Register a VQAv2-format question/annotation pair (evaluator_type "vqa")."""
    register_dataset(
        name,
        lambda: load_vqa_json(questions_file, annotations_file, image_root, file_name_format, name),
        question_file=questions_file,
        json_file=annotations_file,
        image_root=image_root,
        evaluator_type="vqa",
        **metadata,
    )
