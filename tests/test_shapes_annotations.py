"""What the FIBER-Shapes annotations say, checked against each other and the boxes: relations match the geometry,
grounding spans name their boxes, the Flickr30k Entities files match the MDETR ones, novel combinations are held out,
referring expressions are unique, VQA answers agree with the detection files, the Karpathy captions are the sentences.
The generator's files and pictures themselves: test_shapes_dataset.py.

A tiny dataset is generated once per module.
"""
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from test_shapes_dataset import COUNTS, SPLITS, _colorshape_names, _generate, _instances, _load, _size_class

from fiber_d2.data.shapes.vocabulary import COLOURS, SHAPE_PLURALS, SHAPES, SIZES

# Location phrase of a referring expression -> (box axis: 0 = x / 1 = y, sign of (others - target) along it).
LOCATIONS = {"on the left": (0, 1), "on the right": (0, -1), "at the top": (1, 1), "at the bottom": (1, -1)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes") / "fiber_shapes"
    _generate(path)
    return path


# Relation words between two phrases -> (box axis: 0 = x / 1 = y, sign of (second - first) along it); None: no check.
RELATIONS = {"left of": (0, 1), "to the left of": (0, 1), "right of": (0, -1), "to the right of": (0, -1),
             "above": (1, 1), "below": (1, -1), "under": (1, -1), "next to": None, "near": None}


def _check_relations(caption: str, phrases) -> int:
    """Check every "<phrase> [is] <relation> <phrase>" in a caption; phrases: [(start, end, [boxes])]."""
    checked = 0
    phrases = sorted(phrases)
    for (_, end, first), (start, _, second) in zip(phrases, phrases[1:]):
        between = caption[end:start].strip()
        between = between[3:] if between.startswith("is ") else between
        if between not in RELATIONS:
            continue
        assert len(first) == len(second) == 1, caption
        if RELATIONS[between] is not None:
            axis, sign = RELATIONS[between]
            centre = lambda box: box[axis] + box[axis + 2] / 2  # noqa: E731
            assert sign * (centre(second[0]) - centre(first[0])) > 0, caption
        checked += 1
    return checked


def test_relations_match_geometry(root):
    checked = 0
    for split in SPLITS:
        for name in ("final_mixed", "final_flickr_separateGT"):
            data = _load(root, f"{name}_{split}.json")
            spans = defaultdict(lambda: defaultdict(list))
            for ann in data["annotations"]:
                for start, end in ann["tokens_positive"]:
                    spans[ann["image_id"]][start, end].append(ann["bbox"])
            for record in data["images"]:
                phrases = [(s, e, boxes) for (s, e), boxes in spans[record["id"]].items()]
                checked += _check_relations(record["caption"], phrases)
    assert checked > 10


def _describes(phrase: str, colour: str, shape: str, box) -> bool:
    """The phrase's noun is the object's shape and its colour and size words (if any) are the object's."""
    words = phrase.split()
    return (words[-1] in (shape, SHAPE_PLURALS[shape])
            and all(w == colour for w in words if w in COLOURS)
            and all(w == _size_class(box) for w in words if w in SIZES))


def _objects_by_box(root: Path, split: str):
    """(image id, bbox) -> (colour, shape)."""
    return {(image_id, box): (colour, shape)
            for image_id, objects in _colorshape_names(root, split).items() for colour, shape, box in objects}


def test_grounding_spans_are_exact_and_name_their_boxes(root):
    multi_phrase_boxes = multi_box_phrases = records = 0
    for split in SPLITS:
        objects = _objects_by_box(root, split)
        data = _load(root, f"final_mixed_{split}.json")
        records_by_id = {r["id"]: r for r in data["images"]}
        images = {im["id"]: im for im in _load(root, f"instances_{split}.json")["images"]}
        captions_per_image = Counter(r["original_img_id"] for r in data["images"])
        assert set(captions_per_image) == set(images) and min(captions_per_image.values()) >= 1
        assert max(captions_per_image.values()) >= 3
        span_use = Counter()
        for ann in data["annotations"]:
            record = records_by_id[ann["image_id"]]
            image = images[record["original_img_id"]]
            assert (record["width"], record["height"], record["file_name"]) == (
                image["width"], image["height"], image["file_name"])
            assert record["tokens_negative"] == [[0, len(record["caption"])]]
            colour, shape = objects[record["original_img_id"], tuple(ann["bbox"])]
            caption = record["caption"]
            for start, end in ann["tokens_positive"]:
                phrase = caption[start:end]
                assert phrase == phrase.strip() and (start == 0 or caption[start - 1] == " ")
                assert end == len(caption) or not caption[end].isalnum()
                assert _describes(phrase, colour, shape, ann["bbox"]), (caption, phrase)
                span_use[record["id"], start, end] += 1
            multi_phrase_boxes += len(ann["tokens_positive"]) > 1
        multi_box_phrases += sum(count > 1 for count in span_use.values())
        records += len(data["images"])
    assert multi_phrase_boxes > 0 and multi_box_phrases > 0 and records > 0


def _parse_flickr_sentence(line: str):
    """Plain sentence and [(phrase_id, type, start, end, words)] of a Flickr30k Entities sentence line."""
    words, phrases, current = [], [], None
    for token in line.split():
        if current is None and token.startswith("[/EN#"):
            _, phrase_id, phrase_type = token[1:].split("/")
            current = [int(phrase_id[3:]), phrase_type, len(" ".join(words)) + (1 if words else 0), []]
            continue
        closing = current is not None and token.endswith("]")
        word = token[:-1] if closing else token
        words.append(word)
        if current is not None:
            current[3].append(word)
        if closing:
            text = " ".join(current[3])
            phrases.append((current[0], current[1], current[2], current[2] + len(text), text))
            current = None
    return " ".join(words), phrases


def _parse_flickr_xml(path: Path):
    root = ET.parse(path).getroot()
    size = tuple(int(root.findtext(f"size/{tag}")) for tag in ("width", "height"))
    boxes, scenes = defaultdict(list), set()
    for obj in root.findall("object"):
        names = [int(name.text) for name in obj.findall("name")]
        if obj.find("bndbox") is not None:
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            for name in names:
                boxes[name].append([xmin, ymin, xmax - xmin, ymax - ymin])
        else:
            assert obj.findtext("nobndbox") == "1" and obj.findtext("scene") == "1"
            scenes.update(names)
    return size, boxes, scenes


def test_flickr_json_matches_raw_files(root):
    multi_box = 0
    for split in SPLITS:
        objects = _objects_by_box(root, split)
        separate = _load(root, f"final_flickr_separateGT_{split}.json")
        merged = _load(root, f"final_flickr_mergedGT_{split}.json")
        assert [r["caption"] for r in separate["images"]] == [r["caption"] for r in merged["images"]]
        anns = {"separate": defaultdict(list), "merged": defaultdict(list)}
        for kind, data in (("separate", separate), ("merged", merged)):
            for ann in data["annotations"]:
                anns[kind][ann["image_id"]].append(ann)
        for record in separate["images"]:
            image_id = record["original_img_id"]
            stem = f"{image_id:06d}"
            lines = (root / "flickr30k_entities" / "Sentences" / f"{stem}.txt").read_text().splitlines()
            sentence, phrases = _parse_flickr_sentence(lines[record["sentence_id"]])
            (width, height), boxes, scene_ids = _parse_flickr_xml(
                root / "flickr30k_entities" / "Annotations" / f"{stem}.xml")
            assert record["caption"] == sentence and (width, height) == (record["width"], record["height"])
            boxed = [p for p in phrases if p[0] in boxes]
            assert all(p[0] in scene_ids and p[1] == "scene" for p in phrases if p not in boxed)
            assert [p[0] for p in boxed] == sorted(p[0] for p in boxed)  # sentence order = phrase-id order
            assert record["tokens_positive_eval"] == [[[p[2], p[3]]] for p in boxed]
            for phrase_id, _, start, end, text in boxed:
                assert sentence[start:end] == text
                mine = [a for a in anns["separate"][record["id"]] if a["phrase_ids"] == phrase_id]
                assert sorted(a["bbox"] for a in mine) == sorted(boxes[phrase_id])
                assert all(a["tokens_positive"] == [[start, end]] for a in mine)
                assert mine and all(_describes(text, *objects[image_id, tuple(a["bbox"])], a["bbox"]) for a in mine)
                (one,) = [a for a in anns["merged"][record["id"]] if a["phrase_ids"] == phrase_id]
                xs = [b[0] for b in boxes[phrase_id]] + [b[0] + b[2] for b in boxes[phrase_id]]
                ys = [b[1] for b in boxes[phrase_id]] + [b[1] + b[3] for b in boxes[phrase_id]]
                assert one["bbox"] == [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                multi_box += len(boxes[phrase_id]) > 1
    assert multi_box > 0


def test_novel_combinations_held_out(root):
    meta = json.loads((root / "meta.json").read_text())
    heldout = {(c["colour"], c["shape"]) for c in meta["heldout_combinations"]}
    assert heldout and {s for _, s in heldout} <= set(SHAPES)
    seen = {split: Counter() for split in SPLITS}
    for split in SPLITS:
        for image_id, objects in _colorshape_names(root, split).items():
            combos = {(colour, shape) for colour, shape, _ in objects}
            seen[split].update(combos)
            if split == "novel":
                assert combos & heldout, f"novel image {image_id} has no held-out combination"
    assert not (set(seen["train"]) | set(seen["val"])) & heldout
    # Every shape and every colour keeps most of its combinations in train/val.
    assert max(Counter(s for _, s in heldout).values()) == 1 and max(Counter(c for c, _ in heldout).values()) == 1


def test_referring_expressions_are_unique_with_distractors(root):
    total = 0
    for split in SPLITS:
        data = _load(root, f"final_refexp_{split}.json")
        instances = _instances(root, split)
        colorshape = _colorshape_names(root, split)
        by_record = defaultdict(list)
        for ann in data["annotations"]:
            by_record[ann["image_id"]].append(ann)
        for record in data["images"]:
            (ann,) = by_record[record["id"]]
            image_id = record["original_img_id"]
            assert record["original_id"] == image_id
            (target,) = [a for a in instances[image_id][1] if a["id"] == ann["original_id"]]
            assert target["bbox"] == ann["bbox"]
            objects = colorshape[image_id]
            (me,) = [o for o in objects if list(o[2]) == ann["bbox"]]
            others = [o for o in objects if o is not me]
            assert any(o[0] == me[0] or o[1] == me[1] for o in others), "no distractor"
            caption = record["caption"]
            [[start, end]] = ann["tokens_positive"]
            head, location = caption[start:end], caption[end:].strip()
            assert start == 0 and location in ("", *LOCATIONS)
            assert _describes(head, me[0], me[1], me[2]) and head.split()[-1] == me[1]
            words = head.split()
            sizes = [w for w in words if w in SIZES]
            matching = [o for o in others if o[1] == me[1] and all(w == o[0] for w in words if w in COLOURS)
                        and all(w == _size_class(o[2]) for w in sizes)]
            if not location:  # the attributes alone single the target out
                assert not matching, caption
            else:  # the target is the extreme one of the objects matching the attributes
                axis, sign = LOCATIONS[location]
                centre = lambda box: box[axis] + box[axis + 2] / 2  # noqa: E731
                assert all(sign * (centre(o[2]) - centre(me[2])) > 0 for o in matching), caption
            total += 1
    assert total > 0


def test_vqa_answers_agree_with_detection(root):
    checked = Counter()
    for split in SPLITS:
        questions = _load(root, f"vqa_questions_{split}.json")["questions"]
        answers = {a["question_id"]: a for a in _load(root, f"vqa_annotations_{split}.json")["annotations"]}
        assert len(answers) == len(questions)
        colorshape = _colorshape_names(root, split)
        instances = _instances(root, split)
        for q in questions:
            a = answers[q["question_id"]]
            assert a["image_id"] == q["image_id"] and len(a["answers"]) == 10
            assert {x["answer"] for x in a["answers"]} == {a["multiple_choice_answer"]}
            objects = colorshape[q["image_id"]]
            shapes = [SHAPES[ann["category_id"] - 1] for ann in instances[q["image_id"]][1]]
            answer, text = a["multiple_choice_answer"], q["question"]
            if match := re.fullmatch(r"how many (\w+) are there\?", text):
                (shape,) = [s for s in SHAPES if SHAPE_PLURALS[s] == match[1]]
                assert answer == str(shapes.count(shape)) and a["answer_type"] == "number"
            elif match := re.fullmatch(r"what colour is the (\w+)\?", text):
                (only,) = [o for o in objects if o[1] == match[1]]
                assert answer == only[0]
            elif match := re.fullmatch(r"what shape is the (\w+) object\?", text):
                (only,) = [o for o in objects if o[0] == match[1]]
                assert answer == only[1]
            elif match := re.fullmatch(r"is there an? (\w+) (\w+)\?", text):
                present = any(o[0] == match[1] and o[1] == match[2] for o in objects)
                assert answer == ("yes" if present else "no") and a["answer_type"] == "yes/no"
            else:
                raise AssertionError(f"unexpected question {text!r}")
            checked[a["question_type"]] += 1
            checked[answer] += answer in ("0", "yes", "no")
    assert all(checked[key] for key in ("how many", "what colour is the", "what shape is the", "is there a")), checked
    assert all(checked[answer] for answer in ("0", "yes", "no")), checked


def test_karpathy_captions(root):
    data = _load(root, "dataset_fiber_shapes.json")
    splits = Counter(image["split"] for image in data["images"])
    assert dict(splits) == COUNTS
    for image in data["images"]:
        assert (root / image["filepath"] / image["filename"]).is_file()
        assert image["filepath"] == f"images/{image['split']}" and image["cocoid"] == image["imgid"]
        lines = (root / "flickr30k_entities" / "Sentences" / f"{image['imgid']:06d}.txt").read_text().splitlines()
        assert [s["raw"] for s in image["sentences"]] == [_parse_flickr_sentence(line)[0] for line in lines]
        assert all(s["tokens"] and all(t.isalnum() for t in s["tokens"]) for s in image["sentences"])
