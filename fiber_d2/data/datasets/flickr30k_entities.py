"""Flickr30k Entities in its raw format (`{split}.txt`, `Sentences/{id}.txt`, `Annotations/{id}.xml`), for evaluation.

`load_flickr30k_entities` parses the files: one output dict per image, `file_name, height, width, image_id,
sentences, boxes, nobox_phrase_ids, scene_phrase_ids`. `sentences[i] = {sentence, phrases: [{phrase_id, phrase,
phrase_type, span}]}`: the sentence without its `[/EN#id/type ...]` markup (words joined by single spaces), each
phrase's id (a string, as in the files), text, type path as written ("people", "clothing/bodyparts"), and
`[start, end)` character span in the sentence.
`boxes[phrase_id]` = list of [x0, y0, x1, y1] in pixels (`BoxMode.XYXY_ABS`) as the XML gives them.

`entities_grounding_records` turns those into the (image, sentence) grounding records that the grounding mapper and
`FlickrGroundingEvaluator` read (MDETR format); `register_flickr30k_entities` registers them.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from detectron2.structures import BoxMode

from .catalog import register_dataset
from .errors import (
    DatasetFormatError,
    RecordReporter,
    check_on_bad_record,
    describe_source,
    require_dir,
    require_file,
    text_lines,
    xyxy_box_problem,
)

_PHRASE_START = "[/EN#"


def load_flickr30k_entities(
    entities_root: str,
    image_root: str,
    split: str,
    dataset_name: str | None = None,
    on_bad_record: str = "raise",
) -> list[dict]:
    """Load the images listed in `{entities_root}/{split}.txt` (image `{image_root}/{id}.jpg`).

    `image_id` is the id as an int when it is all digits ("000123" -> 123), else the string. A bad box is reported
    per `on_bad_record`; "skip" drops that box.
    """
    check_on_bad_record(on_bad_record)
    split_file = os.path.join(entities_root, f"{split}.txt")
    require_file(split_file, dataset_name, "split file")
    require_dir(image_root, dataset_name, "image folder")
    stems = [line.strip() for _, line in text_lines(split_file, dataset_name) if line.strip()]
    dicts = []
    for stem in stems:
        image_id: int | str = int(stem) if stem.isdigit() else stem
        sentences = _read_sentences(os.path.join(entities_root, "Sentences", f"{stem}.txt"), dataset_name)
        annotation_file = os.path.join(entities_root, "Annotations", f"{stem}.xml")
        reporter = RecordReporter(annotation_file, dataset_name, on_bad_record)
        record = _read_annotation(annotation_file, image_id, dataset_name, reporter)
        dicts.append(
            {"file_name": os.path.join(image_root, f"{stem}.jpg"), "image_id": image_id, "sentences": sentences,
             **record}
        )
    return dicts


def entities_grounding_records(images: list[dict]) -> list[dict]:
    """The (image, sentence) grounding records of `load_flickr30k_entities`'s images, as MDETR's Flickr30k evaluator
    reads the raw files (its `datasets/flickr_eval.py`): a sentence keeps the phrases whose phrase id has a box, and a
    sentence without any is left out.

    Each record: `file_name, height, width, image_id` (0, 1, ... in order), `original_img_id` (the image's id),
    `sentence_id` (the sentence's index in its file), `caption` (the sentence), `tokens_positive_eval` (the kept
    phrases' spans, one [[start, end)] each, in sentence order) and `annotations`: one per box of each kept phrase,
    `{bbox: [x0, y0, x1, y1], bbox_mode: XYXY_ABS, category_id: 1, tokens_positive: [[start, end)], phrase_ids}`.
    """
    records = []
    for image in images:
        for sentence_id, sentence in enumerate(image["sentences"]):
            phrases = [phrase for phrase in sentence["phrases"] if phrase["phrase_id"] in image["boxes"]]
            if not phrases:
                continue
            annotations = [
                {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                 "tokens_positive": [list(phrase["span"])], "phrase_ids": phrase["phrase_id"]}
                for phrase in phrases
                for box in image["boxes"][phrase["phrase_id"]]
            ]
            records.append({
                "file_name": image["file_name"], "height": image["height"], "width": image["width"],
                "image_id": len(records), "original_img_id": image["image_id"], "sentence_id": sentence_id,
                "caption": sentence["sentence"], "tokens_positive_eval": [[list(p["span"])] for p in phrases],
                "annotations": annotations,
            })
    return records


def register_flickr30k_entities(
    name: str, entities_root: str, image_root: str, split: str, on_bad_record: str = "raise", **metadata: Any
) -> None:
    """Register one split of a raw Flickr30k Entities tree as its (image, sentence) grounding records
    (`entities_grounding_records`; evaluator_type "flickr30k", ANY-box unless `metadata` has merged_gt=True)."""
    check_on_bad_record(on_bad_record)
    register_dataset(
        name,
        lambda: entities_grounding_records(
            load_flickr30k_entities(entities_root, image_root, split, name, on_bad_record)
        ),
        flickr30k_entities_root=entities_root,
        image_root=image_root,
        split=split,
        evaluator_type="flickr30k",
        **metadata,
    )


def parse_entities_sentence(line: str) -> dict:
    """`{sentence, phrases}` of one marked-up line, e.g. "[/EN#18/people A child] in [/EN#19/clothing a dress] ."

    Raises ValueError on unbalanced markup.
    """
    words: list[str] = []
    phrases: list[dict] = []
    length = 0  # characters in " ".join(words)
    phrase: dict | None = None
    phrase_words: list[str] = []
    for token in line.split():
        if phrase is None and token.startswith(_PHRASE_START):
            phrase_id, _, phrase_type = token[len(_PHRASE_START):].partition("/")
            if not phrase_id:
                raise ValueError(f"phrase marker {token!r} has no phrase id")
            phrase = {"phrase_id": phrase_id, "phrase_type": phrase_type}
            phrase_words = []
            continue
        if phrase is not None and token.startswith(_PHRASE_START):
            raise ValueError(f"phrase marker {token!r} inside the unclosed phrase {phrase['phrase_id']}")
        closes = phrase is not None and token.endswith("]")
        word = token[:-1] if closes else token
        if word:
            start = length + (1 if words else 0)
            if phrase is not None and not phrase_words:
                phrase["span"] = [start, start]
            words.append(word)
            length = start + len(word)
            if phrase is not None:
                phrase_words.append(word)
                phrase["span"][1] = length
        if closes:
            if not phrase_words:
                raise ValueError(f"phrase {phrase['phrase_id']} has no words")
            phrase["phrase"] = " ".join(phrase_words)
            phrases.append(phrase)
            phrase = None
    if phrase is not None:
        raise ValueError(f"phrase {phrase['phrase_id']} is not closed with ']'")
    return {"sentence": " ".join(words), "phrases": phrases}


def _read_sentences(path: str, dataset_name: str | None) -> list[dict]:
    require_file(path, dataset_name, "sentence file")
    sentences = []
    for line_no, line in text_lines(path, dataset_name):
        if not line.strip():
            continue
        try:
            sentences.append(parse_entities_sentence(line))
        except ValueError as e:
            raise DatasetFormatError(f"{describe_source(path, dataset_name)}, line {line_no}: {e}") from None
    return sentences


def _read_annotation(path: str, image_id: int | str, dataset_name: str | None, reporter: RecordReporter) -> dict:
    """`height, width, boxes, nobox_phrase_ids, scene_phrase_ids` of one Annotations/{id}.xml file."""
    require_file(path, dataset_name, "annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetFormatError(f"{reporter.source}: not valid XML ({e})") from None
    width = _number(root, "size/width", reporter)
    height = _number(root, "size/height", reporter)
    boxes: dict[str, list[list[float]]] = {}
    nobox: list[str] = []
    scene: list[str] = []
    for index, obj in enumerate(root.iter("object")):
        phrase_ids = [name.text.strip() for name in obj.findall("name") if name.text and name.text.strip()]
        if not phrase_ids:
            raise reporter.missing_key("name", f"<object> #{index}")
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            box = [_number(bndbox, key, reporter) for key in ("xmin", "ymin", "xmax", "ymax")]
            problem = xyxy_box_problem(box, width, height)
            if problem is not None:
                reporter.bad_record(f"image id {image_id}, phrase id(s) {', '.join(phrase_ids)}", problem)
                continue
            for phrase_id in phrase_ids:
                boxes.setdefault(phrase_id, []).append(box)
            continue
        if _flag(obj, "nobndbox", reporter):
            nobox.extend(phrase_ids)
        if _flag(obj, "scene", reporter):
            scene.extend(phrase_ids)
    reporter.log_summary()
    return {"height": int(height), "width": int(width), "boxes": boxes, "nobox_phrase_ids": nobox,
            "scene_phrase_ids": scene}


def _number(element: ET.Element, path: str, reporter: RecordReporter) -> float:
    text = element.findtext(path)
    if text is None:
        raise reporter.missing_key(path, f"<{element.tag}>")
    try:
        return float(text)
    except ValueError:
        raise DatasetFormatError(f"{reporter.source}: <{path}> is {text!r}, not a number") from None


def _flag(element: ET.Element, tag: str, reporter: RecordReporter) -> bool:
    return element.find(tag) is not None and _number(element, tag, reporter) > 0
