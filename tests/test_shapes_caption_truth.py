"""FIBER-Shapes caption truth (fiber_d2/data/shapes/caption_truth.py): parsing the retrieval captions, whether one fits
a scene, the text-to-image Recall@1 ceiling, `load_split_scenes` and tools/shapes_retrieval_ceiling.py."""
import importlib.util
import json
from pathlib import Path

import pytest

from fiber_d2.data.shapes import generate_fiber_shapes, load_split_scenes
from fiber_d2.data.shapes.caption_truth import Claim, NounPhrase, is_true_of, parse_caption, text_to_image_ceiling
from fiber_d2.data.shapes.scenes import Scene, ShapeObject

REPO = Path(__file__).resolve().parents[1]


def _object(shape, colour, x, y, size="small"):
    return ShapeObject(shape=shape, colour=colour, size=size, box=(x, y, 20, 20), area=300)


def _scene(image_id, objects, background="noise"):
    return Scene(image_id=image_id, width=320, height=320, background=background, objects=tuple(objects))


def test_parse_caption_reads_phrases_relations_and_backgrounds():
    assert parse_caption("there is a star to the right of a blue cross .") == Claim(
        (NounPhrase(None, None, None, "star"), NounPhrase(None, None, "blue", "cross")), "right")
    assert parse_caption("a star left of a small black cross .").relation == "left"
    listing = parse_caption("an image of a large black square , a hexagon and two green circles on a blotchy background")
    assert listing == Claim(
        (NounPhrase(None, "large", "black", "square"), NounPhrase(None, None, None, "hexagon"),
         NounPhrase(2, None, "green", "circle")), None, "blotches")
    assert parse_caption("there are three crosses on a checkered background .") == Claim(
        (NounPhrase(3, None, None, "cross"),), None, "checker")
    assert parse_caption("a red circle under a hexagon .").relation == "below"
    with pytest.raises(ValueError, match="purple elephant"):
        parse_caption("a purple elephant .")


def test_is_true_of_counts_attributes_relations_and_background():
    star, cross = _object("star", "red", 10, 100), _object("cross", "blue", 200, 100)
    scene = _scene(1, [star, cross, _object("star", "green", 100, 250, size="large")], background="stripes")
    assert is_true_of(parse_caption("a red star left of a blue cross ."), scene)
    assert not is_true_of(parse_caption("a red star right of a blue cross ."), scene)
    assert is_true_of(parse_caption("there are two stars on a striped background ."), scene)
    assert not is_true_of(parse_caption("there are two stars on a noisy background ."), scene)
    assert not is_true_of(parse_caption("there are three stars ."), scene)
    # "a star" names one object in the generator's captions: two stars fit it only under the loose reading.
    assert not is_true_of(parse_caption("a star ."), scene)
    assert is_true_of(parse_caption("a star ."), scene, strict=False)
    assert is_true_of(parse_caption("a large star and a cross ."), scene)
    assert not is_true_of(parse_caption("a small green star ."), scene, strict=False)


def test_text_to_image_ceiling_averages_one_over_fitting_images():
    circles = [_object("circle", "red", 10, 10), _object("circle", "red", 60, 10)]
    star = _object("star", "blue", 200, 200)
    scenes = [_scene(1, circles), _scene(2, circles + [star]), _scene(3, [star], background="stripes")]
    captions = [
        ["there are two red circles ."],  # fits images 1 and 2
        ["a blue star .", "two red circles and a blue star ."],  # images 2 and 3; image 2 only
        ["a blue star on a striped background ."],  # image 3 only
    ]
    ceiling = text_to_image_ceiling(captions, scenes)
    assert ceiling["R@1"] == pytest.approx(100 * (0.5 + 0.5 + 1 + 1) / 4)
    assert ceiling["R@1_sentence_0"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert ceiling["R@1_sentence_1"] == pytest.approx(100.0)
    assert ceiling["mean_fitting_images"] == pytest.approx((2 + 2 + 1 + 1) / 4)
    # relation captions: each fits its own image only; relation-blind, both images with a red circle and a blue star
    left, right = _object("circle", "red", 10, 100), _object("circle", "red", 300, 100)
    star_at = _object("star", "blue", 200, 100)
    pair_scenes = [_scene(1, [left, star_at]), _scene(2, [right, star_at]), _scene(3, [star_at])]
    pair_captions = [["a red circle left of a blue star ."], ["a red circle right of a blue star ."], ["a blue star ."]]
    full = text_to_image_ceiling(pair_captions, pair_scenes)
    blind = text_to_image_ceiling(pair_captions, pair_scenes, ignore_relation=True)
    assert full["R@1"] == pytest.approx(100 * (1 + 1 + 1 / 3) / 3)
    assert blind["R@1"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="image_id 3"):
        text_to_image_ceiling([["there are two red circles ."]] * 3, scenes)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes_truth") / "fiber_shapes"
    generate_fiber_shapes(path, seed=5, num_train=2, num_val=40, num_novel=10)
    return path


def test_every_generated_caption_fits_its_own_scene(root):
    dataset = json.loads((root / "annotations" / "dataset_fiber_shapes.json").read_text())
    for split in ("val", "novel"):
        scenes, texts = load_split_scenes(root, split)
        records = [image for image in dataset["images"] if image["split"] == split]
        assert [scene.image_id for scene in scenes] == [record["cocoid"] for record in records]
        captions = [[sentence.text for sentence in text.sentences] for text in texts]
        assert captions == [[sentence["raw"] for sentence in record["sentences"]] for record in records]
        strict, loose = text_to_image_ceiling(captions, scenes), text_to_image_ceiling(captions, scenes, strict=False)
        assert 100.0 / len(scenes) < loose["R@1"] <= strict["R@1"] <= 100.0
        assert strict["mean_fitting_images"] >= 1.0
    with pytest.raises(ValueError, match="unknown FIBER-Shapes split"):
        load_split_scenes(root, "test")


def test_cli_prints_both_readings_and_one_line_on_bad_root(root, tmp_path, capsys):
    path = REPO / "tools" / "shapes_retrieval_ceiling.py"
    spec = importlib.util.spec_from_file_location("shapes_retrieval_ceiling", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--root", str(root), "--split", "novel"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["reading"] for row in rows] == ["strict", "loose", "strict, relation-blind", "loose, relation-blind"]
    assert all(row["images"] == 10 and row["captions"] == 30 for row in rows)
    assert rows[2]["R@1"] <= rows[0]["R@1"] and rows[3]["R@1"] <= rows[1]["R@1"]
    assert tool.main(["--root", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
