"""FIBER-Shapes generator (fiber_d2/data/shapes, tools/make_shapes_dataset.py) and the BPE tokenizer trainer: identical
bytes per seed, layout, images and boxes, categories, the dataset's tokenizer and the command line. What the annotations
say (relations, spans, Flickr30k Entities, held-out combinations, referring expressions, VQA, captions):
test_shapes_annotations.py.

A tiny dataset is generated once per module; the checks compare file contents with each other and with the pictures.
"""
import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fiber_d2.data.shapes import generate_fiber_shapes, load_complete_meta
from fiber_d2.data.shapes.scenes import sample_scene
from fiber_d2.data.shapes.vocabulary import COLOUR_JITTER, COLOURS, SHAPES, SIZES, all_combinations
from fiber_d2.data.tokenizer import train_roberta_bpe_tokenizer

SPLITS = ("train", "val", "novel")
COUNTS = {"train": 12, "val": 4, "novel": 4}
SEED = 3
REPO = Path(__file__).resolve().parents[1]


def _generate(root: Path, seed: int = SEED):
    return generate_fiber_shapes(root, seed=seed, num_train=COUNTS["train"], num_val=COUNTS["val"],
                                 num_novel=COUNTS["novel"])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes") / "fiber_shapes"
    _generate(path)
    return path


def _load(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / name).read_text())


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _instances(root: Path, split: str):
    """image id -> (image record, [annotations])."""
    data = _load(root, f"instances_{split}.json")
    by_image = {im["id"]: (im, []) for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]][1].append(ann)
    return by_image


def _colorshape_names(root: Path, split: str):
    """image id -> [(colour, shape, bbox)] from the colour-shape file."""
    data = _load(root, f"instances_colorshape_{split}.json")
    names = {c["id"]: c["name"].split() for c in data["categories"]}
    out = defaultdict(list)
    for ann in data["annotations"]:
        colour, shape = names[ann["category_id"]]
        out[ann["image_id"]].append((colour, shape, tuple(ann["bbox"])))
    return out


def _box_inside(bbox, width, height) -> bool:
    x, y, w, h = bbox
    return w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height


def _size_class(box) -> str:
    """Size class of an object from its box: the two classes' box sides lie in separated ranges (pixels)."""
    side = max(box[2], box[3])
    assert side <= 2 * SIZES["small"][1] + 2 or side >= 1.2 * SIZES["large"][0], f"ambiguous size {box}"
    return "small" if side <= 2 * SIZES["small"][1] + 2 else "large"


def test_same_seed_gives_identical_bytes_and_other_seed_differs(root, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    _generate(again)
    _generate(other, seed=SEED + 1)
    reference = _files(root)
    assert reference == _files(again)
    different = _files(other)
    assert different.keys() == reference.keys()
    changed = [name for name in reference if reference[name] != different[name]]
    assert all(f"images/{split}/" in " ".join(changed) for split in SPLITS)
    assert "annotations/instances_train.json" in changed and "tokenizer/vocab.json" in reference


def test_layout_meta_and_unique_image_ids(root):
    meta = json.loads((root / "meta.json").read_text())
    assert load_complete_meta(root) == meta
    assert meta["params"]["num_images"] == COUNTS and meta["params"]["seed"] == SEED
    names = ["instances_{}.json", "instances_colorshape_{}.json", "final_mixed_{}.json",
             "final_flickr_separateGT_{}.json", "final_flickr_mergedGT_{}.json", "final_refexp_{}.json",
             "vqa_questions_{}.json", "vqa_annotations_{}.json"]
    ids = []
    for split in SPLITS:
        for name in names:
            assert (root / "annotations" / name.format(split)).is_file()
        assert len(list((root / "images" / split).glob("*.jpg"))) == COUNTS[split] == meta["splits"][split]["images"]
        images = _load(root, f"instances_{split}.json")["images"]
        ids += [im["id"] for im in images]
        assert all(im["file_name"] == f"{im['id']:06d}.jpg" for im in images)
        listed = (root / "flickr30k_entities" / f"{split}.txt").read_text().split()
        assert [int(stem) for stem in listed] == [im["id"] for im in images]
    assert len(ids) == len(set(ids)) == sum(COUNTS.values())
    assert (root / "annotations" / "dataset_fiber_shapes.json").is_file()
    assert not list(root.parent.glob(".fiber_shapes.*")), "temporary folders left behind"


def test_images_and_boxes(root):
    sizes_seen, objects_per_image, size_classes = set(), [], Counter()
    for split in SPLITS:
        colorshape = _colorshape_names(root, split)
        for image_id, (image, anns) in _instances(root, split).items():
            with Image.open(root / "images" / split / image["file_name"]) as picture:
                assert picture.size == (image["width"], image["height"]) and picture.mode == "RGB"
            assert 256 <= image["width"] <= 512 and 256 <= image["height"] <= 512
            assert image["width"] != image["height"]
            sizes_seen.add((image["width"], image["height"]))
            assert 1 <= len(anns) <= 8
            objects_per_image.append(len(anns))
            for ann in anns:
                assert _box_inside(ann["bbox"], image["width"], image["height"])
                assert 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3] and ann["iscrowd"] == 0
                size_classes[_size_class(ann["bbox"])] += 1
            assert sorted(tuple(a["bbox"]) for a in anns) == sorted(box for _, _, box in colorshape[image_id])
    assert len(sizes_seen) > 10 and max(objects_per_image) > 3
    assert size_classes["small"] > 5 and size_classes["large"] > 5


def test_boxes_are_tight_around_the_drawn_colour():
    """In freshly drawn (not JPEG-compressed) scenes, the pixels of an object's named colour around its box lie inside
    the box and nearly always reach its sides (blended sharp tips and occlusion edges may stop a few pixels short),
    and their count matches the area."""
    insets = []
    for index in range(16):
        scene, image = sample_scene(np.random.default_rng([SEED, index]), index, all_combinations())
        for obj in scene.objects:
            x, y, w, h = obj.box
            x0, y0 = max(x - 3, 0), max(y - 3, 0)
            region = image[y0 : y + h + 3, x0 : x + w + 3].astype(int)
            near = np.abs(region - np.array(COLOURS[obj.colour])).max(axis=2) <= COLOUR_JITTER + 8
            rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
            found = np.array((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
            inset = (found - (x, y, x + w, y + h)) * (1, 1, -1, -1)  # >= 0 when `found` lies inside the box
            assert inset.min() >= 0, (obj, found)
            assert abs(int(near.sum()) - obj.area) <= 0.25 * obj.area
            insets += inset.tolist()
    assert len(insets) > 100 and np.mean(np.array(insets) <= 2) >= 0.97 and np.mean(insets) <= 1.0


def test_categories_consistent_across_splits(root):
    shape_cats = [_load(root, f"instances_{s}.json")["categories"] for s in SPLITS]
    assert shape_cats[0] == shape_cats[1] == shape_cats[2]
    assert [(c["id"], c["name"]) for c in shape_cats[0]] == [(i + 1, s) for i, s in enumerate(SHAPES)]
    combo_cats = [_load(root, f"instances_colorshape_{s}.json")["categories"] for s in SPLITS]
    assert combo_cats[0] == combo_cats[1] == combo_cats[2]
    assert {c["name"] for c in combo_cats[0]} == {f"{c} {s}" for c in COLOURS for s in SHAPES}
    assert len({c["id"] for c in combo_cats[0]}) == len(COLOURS) * len(SHAPES)
    for split in SPLITS:
        shape_of = {}
        for image in _instances(root, split).values():
            for ann in image[1]:
                shape_of[ann["id"]] = SHAPES[ann["category_id"] - 1]
        by_id = {c["id"]: c["name"] for c in combo_cats[0]}
        for ann in _load(root, f"instances_colorshape_{split}.json")["annotations"]:
            assert by_id[ann["category_id"]].split()[1] == shape_of[ann["id"]]
        for name in ("final_mixed", "final_flickr_separateGT", "final_refexp"):
            data = _load(root, f"{name}_{split}.json")
            assert data["categories"] == shape_cats[0]


def test_dataset_tokenizer_loads_and_aligns_spans(root):
    from transformers import RobertaTokenizerFast

    tokenizer = RobertaTokenizerFast.from_pretrained(root / "tokenizer", local_files_only=True)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 1
    assert len(tokenizer) <= 1000
    data = _load(root, "final_mixed_train.json")
    record = data["images"][0]
    ann = next(a for a in data["annotations"] if a["image_id"] == record["id"])
    start, end = ann["tokens_positive"][0]
    encoding = tokenizer(record["caption"], return_offsets_mapping=True)
    ids = encoding["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id not in ids
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
    assert first is not None and last is not None and 0 < first <= last < len(ids) - 1
    assert encoding["offset_mapping"][first][0] == start and encoding["offset_mapping"][last][1] == end
    padded = tokenizer(["a red", record["caption"]], padding=True)["input_ids"]
    assert padded[0][-1] == tokenizer.pad_token_id


def test_train_tokenizer_is_deterministic_and_general(tmp_path):
    texts = ["a small red circle left of a blue star.", "how many circles are there?", "ünïcode ok"] * 20
    first = train_roberta_bpe_tokenizer(texts, tmp_path / "a", vocab_size=300)
    second = train_roberta_bpe_tokenizer(iter(texts), tmp_path / "b", vocab_size=300)
    assert _files(first) == _files(second)
    from transformers import RobertaTokenizerFast

    tokenizer = RobertaTokenizerFast.from_pretrained(first, local_files_only=True)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tokenizer.decode(tokenizer("never seen: 42!")["input_ids"], skip_special_tokens=True) == "never seen: 42!"


def _load_cli():
    spec = importlib.util.spec_from_file_location("make_shapes_dataset", REPO / "tools" / "make_shapes_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_skips_complete_dataset_unless_forced(tmp_path, capsys, monkeypatch):
    cli = _load_cli()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert cli.default_root() == tmp_path / "d2" / "fiber_shapes"
    args = ["--num-train", "3", "--num-val", "1", "--num-novel", "1", "--seed", "5"]
    assert cli.main(args) == 0
    root = tmp_path / "d2" / "fiber_shapes"
    assert "wrote 3/1/1" in capsys.readouterr().out
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert "skipped" in capsys.readouterr().out and (root / "meta.json").stat().st_mtime_ns == stamp
    before = _files(root)
    assert cli.main(args + ["--force"]) == 0
    assert "wrote 3/1/1" in capsys.readouterr().out and _files(root) == before
    assert cli.main(["--root", str(root), "--num-train", "2", "--num-val", "1", "--num-novel", "1"]) == 0
    assert "wrote 2/1/1" in capsys.readouterr().out
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 2
    assert sorted(p.name for p in tmp_path.joinpath("d2").iterdir()) == ["fiber_shapes"]


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import fiber_d2.data.shapes.generate as generate

    def crash(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(generate, "train_roberta_bpe_tokenizer", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_fiber_shapes(tmp_path / "ds", num_train=2, num_val=1, num_novel=1)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_fiber_shapes(tmp_path / "other", num_train=2, num_val=1, num_novel=1)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
