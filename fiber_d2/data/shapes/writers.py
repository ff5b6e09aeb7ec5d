"""The FIBER-Shapes file formats (docs/DATA_FORMATS.md): COCO detection, MDETR grounding / Flickr30k / RefCOCO JSON,
Flickr30k Entities raw files, Karpathy captions and VQAv2. Builders take one split's scenes and texts (same order) and
return plain dicts; boxes are integer COCO [x, y, w, h] pixels, spans [start, end) character offsets.
"""
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .scenes import Scene
from .text import ANSWERS_PER_QUESTION, Caption, Entity, EntitySentence, ImageText
from .vocabulary import colorshape_categories, colorshape_id, shape_categories, shape_id

Box = Tuple[int, int, int, int]


def image_file_name(image_id: int) -> str:
    """File name of an image inside images/{split}/ (also the stem of its Flickr30k Entities files)."""
    return f"{image_id:06d}.jpg"


def object_annotation_id(image_id: int, index: int) -> int:
    """Id of object `index` of an image in instances_{split}.json (unique across splits)."""
    return image_id * 100 + index + 1


def entity_phrase_id(image_id: int, entity_index: int) -> int:
    """Flickr30k phrase (entity) id of entity `entity_index` of an image (unique across images, > 0)."""
    return image_id * 100 + entity_index + 1


def write_json(path: Path, data: dict, indent: Optional[int] = None) -> None:
    """Write JSON (compact unless `indent`), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    separators = None if indent else (",", ":")
    path.write_text(json.dumps(data, indent=indent, separators=separators) + "\n", encoding="utf-8")


def _image_record(scene: Scene) -> dict:
    return {"id": scene.image_id, "file_name": image_file_name(scene.image_id), "height": scene.height,
            "width": scene.width}


def coco_detection(scenes: Sequence[Scene], colorshape: bool) -> dict:
    """COCO detection with shape categories, or with every colour-shape combination as a category."""
    annotations = []
    for scene in scenes:
        for index, obj in enumerate(scene.objects):
            category = colorshape_id(obj.colour, obj.shape) if colorshape else shape_id(obj.shape)
            annotations.append({
                "id": object_annotation_id(scene.image_id, index), "image_id": scene.image_id,
                "category_id": category, "bbox": list(obj.box), "area": obj.area, "iscrowd": 0,
            })
    categories = colorshape_categories() if colorshape else shape_categories()
    return {"images": [_image_record(scene) for scene in scenes], "annotations": annotations, "categories": categories}


class _MdetrFile:
    """Accumulates an MDETR-style file: one image record per (image, caption), annotation ids counted from 1."""

    def __init__(self, dataset_name: str) -> None:
        self.dataset_name = dataset_name
        self.images: List[dict] = []
        self.annotations: List[dict] = []

    def add_record(self, scene: Scene, caption: str, **extra) -> int:
        record_id = len(self.images) + 1
        self.images.append({
            **_image_record(scene), "id": record_id, "caption": caption, "dataset_name": self.dataset_name,
            "tokens_negative": [[0, len(caption)]], "original_img_id": scene.image_id, **extra,
        })
        return record_id

    def add_annotation(self, record_id: int, box: Box, area: int, shape: str, spans: List[List[int]], **extra) -> None:
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": record_id, "category_id": shape_id(shape), "bbox": list(box),
            "area": area, "iscrowd": 0, "tokens_positive": spans, **extra,
        })

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": shape_categories()}


def mdetr_grounding(scenes: Sequence[Scene], texts: Sequence[ImageText]) -> dict:
    """final_mixed: one record per grounded caption, one annotation per named object with all spans naming it."""
    out = _MdetrFile("mixed")
    for scene, text in zip(scenes, texts):
        for sentence_id, caption in enumerate(text.captions):
            record_id = out.add_record(scene, caption.text, sentence_id=sentence_id)
            for index in _named_objects(caption):
                obj = scene.objects[index]
                spans = [[p.start, p.end] for p in caption.phrases if index in p.objects]
                out.add_annotation(record_id, obj.box, obj.area, obj.shape, spans)
    return out.to_dict()


def _named_objects(caption: Caption) -> List[int]:
    return sorted({index for phrase in caption.phrases for index in phrase.objects})


def _union_box(boxes: Sequence[Box]) -> Box:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def mdetr_flickr(scenes: Sequence[Scene], texts: Sequence[ImageText], merged: bool) -> dict:
    """final_flickr_{separate,merged}GT: one record per entity sentence. `tokens_positive_eval` has one entry per
    boxed mention (sentence order = phrase-id order); annotations carry `phrase_ids`. Merged: one enclosing box per
    phrase; separate: one annotation per box."""
    out = _MdetrFile("flickr")
    for scene, text in zip(scenes, texts):
        for sentence_id, sentence in enumerate(text.sentences):
            boxed = [m for m in sentence.mentions if text.entities[m.entity].objects]
            record_id = out.add_record(
                scene, sentence.text, sentence_id=sentence_id,
                tokens_positive_eval=[[[m.start, m.end]] for m in boxed],
            )
            for mention in boxed:
                objects = [scene.objects[i] for i in text.entities[mention.entity].objects]
                phrase_id = entity_phrase_id(scene.image_id, mention.entity)
                span = [[mention.start, mention.end]]
                if merged:
                    box = _union_box([obj.box for obj in objects])
                    out.add_annotation(record_id, box, box[2] * box[3], objects[0].shape, span, phrase_ids=phrase_id)
                else:
                    for obj in objects:
                        out.add_annotation(record_id, obj.box, obj.area, obj.shape, span, phrase_ids=phrase_id)
    return out.to_dict()


def mdetr_refexp(scenes: Sequence[Scene], texts: Sequence[ImageText]) -> dict:
    """final_refexp: one record per referring expression with exactly one annotation (`original_id`: its instance)."""
    out = _MdetrFile("refcoco")
    for scene, text in zip(scenes, texts):
        for refexp in text.refexps:
            record_id = out.add_record(scene, refexp.text, original_id=scene.image_id)
            obj = scene.objects[refexp.target]
            out.add_annotation(
                record_id, obj.box, obj.area, obj.shape, [list(refexp.span)],
                original_id=object_annotation_id(scene.image_id, refexp.target),
            )
    return out.to_dict()


def karpathy_captions(splits: Dict[str, Tuple[Sequence[Scene], Sequence[ImageText]]]) -> dict:
    """dataset_fiber_shapes.json: the entity sentences as captions; `filepath` is relative to the dataset root."""
    images = []
    for split, (scenes, texts) in splits.items():
        for scene, text in zip(scenes, texts):
            sentences = [
                {"raw": s.text, "tokens": [w for w in s.text.split() if w.isalnum()], "imgid": scene.image_id,
                 "sentid": scene.image_id * 10 + k}
                for k, s in enumerate(text.sentences)
            ]
            images.append({
                "filepath": f"images/{split}", "filename": image_file_name(scene.image_id), "imgid": scene.image_id,
                "cocoid": scene.image_id, "split": split, "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            })
    return {"images": images, "dataset": "fiber_shapes"}


def vqa(scenes: Sequence[Scene], texts: Sequence[ImageText], split: str) -> Tuple[dict, dict]:
    """VQAv2 (questions, annotations); every question has ANSWERS_PER_QUESTION identical answers."""
    questions, annotations = [], []
    for scene, text in zip(scenes, texts):
        for k, q in enumerate(text.questions):
            question_id = scene.image_id * 10 + k
            questions.append({"image_id": scene.image_id, "question": q.question, "question_id": question_id})
            annotations.append({
                "question_id": question_id, "image_id": scene.image_id, "question_type": q.question_type,
                "answer_type": q.answer_type, "multiple_choice_answer": q.answer,
                "answers": [{"answer": q.answer, "answer_confidence": "yes", "answer_id": i + 1}
                            for i in range(ANSWERS_PER_QUESTION)],
            })
    header = {"info": {"description": "FIBER-Shapes VQA"}, "license": {}, "data_subtype": split}
    return (
        {**header, "task_type": "Open-Ended", "data_type": "fiber_shapes", "questions": questions},
        {**header, "data_type": "fiber_shapes", "annotations": annotations},
    )


def flickr_markup(sentence: EntitySentence, entities: Sequence[Entity], image_id: int) -> str:
    """A sentence in Flickr30k Entities markup: "[/EN#{phrase_id}/{type} words] ..."."""
    text = sentence.text
    for mention in reversed(sentence.mentions):
        tag = f"[/EN#{entity_phrase_id(image_id, mention.entity)}/{entities[mention.entity].phrase_type} "
        text = text[: mention.start] + tag + text[mention.start : mention.end] + "]" + text[mention.end :]
    return text


def flickr_annotation_xml(scene: Scene, text: ImageText) -> str:
    """The VOC-like Annotations/{id}.xml: one <object> per box with a <name> per entity holding it
    (xmax = x + w, ymax = y + h), and a <nobndbox>/<scene> object per mentioned background entity."""
    mentioned = sorted({m.entity for s in text.sentences for m in s.mentions})
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_file_name(scene.image_id)
    size = ET.SubElement(root, "size")
    for tag, value in (("width", scene.width), ("height", scene.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for index, obj in enumerate(scene.objects):
        names = [k for k in mentioned if index in text.entities[k].objects]
        if not names:
            continue
        element = ET.SubElement(root, "object")
        for k in names:
            ET.SubElement(element, "name").text = str(entity_phrase_id(scene.image_id, k))
        box = ET.SubElement(element, "bndbox")
        x, y, w, h = obj.box
        for tag, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = str(value)
    for k in mentioned:
        if not text.entities[k].objects:
            element = ET.SubElement(root, "object")
            ET.SubElement(element, "name").text = str(entity_phrase_id(scene.image_id, k))
            ET.SubElement(element, "nobndbox").text = "1"
            ET.SubElement(element, "scene").text = "1"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_flickr_entities(folder: Path, split: str, scenes: Sequence[Scene], texts: Sequence[ImageText]) -> None:
    """Write Sentences/, Annotations/ and {split}.txt of the Flickr30k Entities layout under `folder`."""
    (folder / "Sentences").mkdir(parents=True, exist_ok=True)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    for scene, text in zip(scenes, texts):
        stem = image_file_name(scene.image_id)[: -len(".jpg")]
        lines = [flickr_markup(sentence, text.entities, scene.image_id) for sentence in text.sentences]
        (folder / "Sentences" / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "Annotations" / f"{stem}.xml").write_text(flickr_annotation_xml(scene, text), encoding="utf-8")
    stems = [image_file_name(scene.image_id)[: -len(".jpg")] for scene in scenes]
    (folder / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems), encoding="utf-8")
