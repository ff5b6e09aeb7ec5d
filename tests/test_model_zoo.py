"""The model zoo: export to fp16 safetensors, sha256-checked lookup, and the shipped files themselves."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fiber_d2 import model_zoo
from fiber_d2.model_zoo.export import export_weights

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(tmp_path: Path) -> Path:
    state = {"w": torch.linspace(-1.0, 1.0, 12).reshape(3, 4), "n": torch.tensor([5], dtype=torch.int64)}
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 7}, path)
    return path


def test_export_writes_fp16_model_weights_only(tmp_path):
    output = tmp_path / "zoo" / "m.safetensors"
    size = export_weights(str(_checkpoint(tmp_path)), output)
    loaded = load_file(str(output))
    assert size == output.stat().st_size
    assert set(loaded) == {"w", "n"}  # the model only: no iteration, no optimizer
    assert loaded["w"].dtype == torch.float16 and loaded["n"].dtype == torch.int64
    torch.testing.assert_close(loaded["w"].float(), torch.linspace(-1.0, 1.0, 12).reshape(3, 4), atol=1e-3, rtol=0)
    assert not (output.parent / "m.safetensors.tmp").exists()


def test_checkpoint_path_checks_the_sha256(tmp_path):
    weights = tmp_path / "fiber_shapes" / "m.safetensors"
    export_weights(str(_checkpoint(tmp_path)), weights)
    manifest = tmp_path / "manifest.json"
    entry = {"file": "fiber_shapes/m.safetensors", "sha256": model_zoo.sha256_of(weights)}
    manifest.write_text(json.dumps({"fiber_shapes/x.yaml": entry}))
    found = model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))
    assert found == str(weights)
    with pytest.raises(KeyError, match="no weights for 'other.yaml'.*fiber_shapes/x.yaml"):
        model_zoo.get_checkpoint_path("other.yaml", manifest=manifest, weight_roots=(tmp_path,))
    with weights.open("r+b") as f:  # one byte changed
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(model_zoo.ZooChecksumError, match="differs from the model zoo's"):
        model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="fiber_shapes/m.safetensors"):
        model_zoo.get_checkpoint_path("fiber_shapes/x.yaml", manifest=manifest, weight_roots=(tmp_path,))


def test_model_files_are_checked_and_set_in_the_config(tmp_path, monkeypatch):
    answers = tmp_path / "fiber_shapes" / "m_answers.json"
    answers.parent.mkdir()
    answers.write_text('["yes", "no"]\n')
    manifest = tmp_path / "manifest.json"
    key = "MODEL.FIBER.VQA.ANSWER_VOCABULARY"
    entry = {"file": "fiber_shapes/m.safetensors", "sha256": "0",
             "files": {key: {"file": "fiber_shapes/m_answers.json", "sha256": model_zoo.sha256_of(answers)}}}
    manifest.write_text(json.dumps({"fiber_shapes/zoo/vqa.yaml": entry, "other.yaml": {"file": "o", "sha256": "1"}}))
    found = model_zoo.get_model_files("fiber_shapes/zoo/vqa.yaml", manifest=manifest, weight_roots=(tmp_path,))
    assert found == {key: str(answers)}
    assert model_zoo.get_model_files("other.yaml", manifest=manifest, weight_roots=(tmp_path,)) == {}
    # get_config(trained=True) points the key at the checked file
    from fiber_d2.model_zoo import model_zoo as zoo_module
    monkeypatch.setattr(zoo_module, "_MANIFEST", manifest)
    monkeypatch.setattr(zoo_module, "_WEIGHT_ROOTS", (tmp_path,))
    monkeypatch.setattr(zoo_module, "get_checkpoint_path", lambda config: "weights.safetensors")
    cfg = model_zoo.get_config("fiber_shapes/zoo/vqa.yaml", trained=True)
    assert cfg.MODEL.FIBER.VQA.ANSWER_VOCABULARY == str(answers) and cfg.MODEL.WEIGHTS == "weights.safetensors"
    answers.write_text('["no", "yes"]\n')  # reordered: not the classes the model was trained with
    with pytest.raises(model_zoo.ZooChecksumError, match="m_answers.json"):
        model_zoo.get_model_files("fiber_shapes/zoo/vqa.yaml", manifest=manifest, weight_roots=(tmp_path,))


def test_model_directory_is_checked_file_by_file(tmp_path):
    tokenizer = tmp_path / "fiber_shapes" / "tokenizer"
    tokenizer.mkdir(parents=True)
    (tokenizer / "vocab.json").write_text('{"a": 0}')
    (tokenizer / "merges.txt").write_text("#version: 0.2\n")
    digests = {name: model_zoo.sha256_of(tokenizer / name) for name in ("merges.txt", "vocab.json")}
    key = "MODEL.FIBER.TOKENIZER"
    manifest = tmp_path / "manifest.json"
    directory = {"file": "fiber_shapes/tokenizer", "sha256": digests}
    entry = {"file": "m.safetensors", "sha256": "0", "files": {key: directory}}
    manifest.write_text(json.dumps({"a.yaml": entry}))

    def files():
        return model_zoo.get_model_files("a.yaml", manifest=manifest, weight_roots=(tmp_path,))

    assert files() == {key: str(tokenizer)}
    (tokenizer / "vocab.json").write_text('{"a": 1}')  # another vocabulary: other token ids
    with pytest.raises(model_zoo.ZooChecksumError, match="vocab.json: sha256"):
        files()
    (tokenizer / "vocab.json").write_text('{"a": 0}')
    (tokenizer / "added_tokens.json").write_text("{}")  # a file the zoo does not record
    with pytest.raises(model_zoo.ZooChecksumError, match="added_tokens.json"):
        files()
    (tokenizer / "added_tokens.json").unlink()
    (tokenizer / "merges.txt").unlink()
    with pytest.raises(model_zoo.ZooChecksumError, match="the model zoo records"):
        files()


def test_export_answer_vocabulary_writes_the_training_answers_and_checks_the_classifier(tmp_path, shapes_root):
    from safetensors.torch import save_file

    from fiber_d2.data.vqa_vocabulary import answer_vocabulary_from_config
    from fiber_d2.model_zoo.export import export_answer_vocabulary

    expected = answer_vocabulary_from_config(model_zoo.get_config("fiber_shapes/zoo/vqa.yaml"))
    assert len(expected) > 10 and "yes" in expected
    weights = tmp_path / "vqa.safetensors"
    save_file({"heads.vqa.3.weight": torch.zeros(len(expected), 4)}, str(weights))
    output = tmp_path / "vqa_answers.json"
    assert export_answer_vocabulary("fiber_shapes/zoo/vqa.yaml", weights, output) == len(expected)
    assert json.loads(output.read_text()) == expected
    save_file({"heads.vqa.3.weight": torch.zeros(5, 4)}, str(weights))
    with pytest.raises(ValueError, match=f"classifies into 5 answers but .* gives {len(expected)}"):
        export_answer_vocabulary("fiber_shapes/zoo/vqa.yaml", weights, output)
    save_file({"heads.itm.weight": torch.zeros(2, 4)}, str(weights))
    with pytest.raises(ValueError, match="no VQA classifier"):
        export_answer_vocabulary("fiber_shapes/zoo/vqa.yaml", weights, output)
    assert json.loads(output.read_text()) == expected  # a refused export leaves the written file as it was


def test_export_cli_refuses_output_outside_the_zoo(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_zoo_model.py"), str(_checkpoint(tmp_path)),
         "--config", "fiber_shapes/fiber_tiny_demo.yaml", "--output", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--output must lie under" in result.stderr


def test_export_cli_needs_the_training_tokenizer(tmp_path):
    """A checkpoint with no training config.yaml next to it gives no tokenizer: the export asks for --tokenizer and
    writes nothing."""
    output = REPO / "model_zoo" / "fiber_shapes" / "_no_tokenizer.safetensors"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_zoo_model.py"), str(_checkpoint(tmp_path)),
         "--config", "fiber_shapes/fiber_tiny_demo.yaml", "--output", str(output)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "give --tokenizer" in result.stderr and not output.exists()


def test_export_tokenizer_copies_once_and_refuses_another(tmp_path):
    from fiber_d2.model_zoo.export import export_tokenizer

    source = tmp_path / "trained_with"
    source.mkdir()
    (source / "vocab.json").write_text('{"a": 0}')
    (source / "merges.txt").write_text("#version: 0.2\n")
    target = tmp_path / "zoo" / "tokenizer"
    digests = export_tokenizer(source, target)
    assert digests == {name: model_zoo.sha256_of(source / name) for name in ("merges.txt", "vocab.json")}
    assert (target / "vocab.json").read_text() == '{"a": 0}'
    assert export_tokenizer(source, target) == digests  # a second model with the same tokenizer shares it
    (source / "vocab.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="vocab.json differs .* another model's tokenizer"):
        export_tokenizer(source, target)
    assert (target / "vocab.json").read_text() == '{"a": 0}'  # the shipped one is kept
    with pytest.raises(ValueError, match="does not exist"):
        export_tokenizer(tmp_path / "missing", tmp_path / "zoo" / "other")


def test_record_metrics_keeps_the_entry_and_refuses_unknown_configs(tmp_path):
    manifest = tmp_path / "manifest.json"
    model_zoo.write_manifest({"b.yaml": {"file": "b", "sha256": "0"}, "a.yaml": {"file": "a", "sha256": "1"}}, manifest)
    assert list(json.loads(manifest.read_text())) == ["a.yaml", "b.yaml"]  # sorted
    metrics = {"val": {"bbox": {"AP50": 81.25}}}
    model_zoo.record_metrics({"a.yaml": metrics}, manifest)
    assert model_zoo.list_models(manifest)["a.yaml"] == {"file": "a", "sha256": "1", "metrics": metrics}
    with pytest.raises(KeyError, match="no weights for 'c.yaml'"):
        model_zoo.record_metrics({"c.yaml": metrics}, manifest)
    assert not (tmp_path / "manifest.json.tmp").exists()


def _zoo_demo():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import zoo_demo
    finally:
        sys.path.pop(0)
    return zoo_demo


def test_zoo_demo_tables_and_comparison_with_recorded_metrics():
    demo = _zoo_demo()
    results = {
        "fiber_shapes_colorshape_val": {"bbox": {"AP": 61.234, "AP50": 83.456, "APs": 40.0}},
        "fiber_shapes_refexp_val": {"refexp": {"P@1": 82.04, "P@5": 99.0}},
        "fiber_shapes_vqa_val": {"vqa": {"accuracy": 85.5, "accuracy_yes/no": 90.0}},
    }
    headline = demo.headline_metrics(results)
    assert headline == {
        "fiber_shapes_colorshape_val": {"bbox": {"AP": 61.234, "AP50": 83.456}},
        "fiber_shapes_refexp_val": {"refexp": {"P@1": 82.04}},
        "fiber_shapes_vqa_val": {"vqa": {"accuracy": 85.5}},
    }
    assert demo.differences(results, headline) == []
    changed = json.loads(json.dumps(headline))
    changed["fiber_shapes_refexp_val"]["refexp"]["P@1"] = 82.2  # 82.0 shown against 82.2
    assert demo.differences(results, changed) == ["fiber_shapes_refexp_val refexp P@1: 82.04 here, 82.2 recorded"]
    assert demo.differences({"v": {"vqa": {"accuracy": 72.149}}}, {"v": {"vqa": {"accuracy": 72.149}}}) == []
    # CIDEr-D is shown and compared x100: 0.664 and 0.6644 are both 66.4, 0.667 is 66.7
    cider = {"c": {"caption": {"CIDEr": 0.664}}}
    assert demo.differences({"c": {"caption": {"CIDEr": 0.6644}}}, cider) == []
    assert demo.differences({"c": {"caption": {"CIDEr": 0.667}}}, cider) == ["c caption CIDEr: 0.667 here, 0.664 recorded"]
    assert demo.headline_rows("zoo/c.yaml", cider) == [("zoo/c.yaml", "c", "CIDEr-D x100", pytest.approx(66.4))]
    rows = demo.headline_rows("zoo/x.yaml", results)
    assert ("zoo/x.yaml", "fiber_shapes_colorshape_val", "AP50", 83.456) in rows and len(rows) == 4
    table = demo.markdown_table(rows)
    assert "| zoo/x.yaml | fiber_shapes_colorshape_val | AP50 | 83.5 |" in table.splitlines()
    compared = demo.comparison_table({"fiber_shapes_colorshape_val": {"bbox": {"AP50": 14.5}}}, headline, "scratch")
    assert "| fiber_shapes_colorshape_val | AP50 | 14.5 | 83.5 |" in compared.splitlines()
    assert "| fiber_shapes_refexp_val | P@1 | - | 82.0 |" in compared.splitlines()


def test_zoo_demo_shows_answers_and_captions_next_to_the_truth(tmp_path, shapes_root):
    from detectron2.data import DatasetCatalog

    demo = _zoo_demo()
    questions = sorted(DatasetCatalog.get("fiber_shapes_vqa_val"), key=lambda r: (r["image_id"], r["question_id"]))
    first = [q for q in questions if q["image_id"] == questions[0]["image_id"]]
    folder = tmp_path / "inference_TTA" / "fiber_shapes_vqa_val"  # vqa.yaml evaluates with test-time augmentation
    folder.mkdir(parents=True)
    (folder / "vqa_predictions.json").write_text(json.dumps(
        [{"question_id": q["question_id"], "answer": "purple"} for q in questions]))
    lines = demo.example_lines("fiber_shapes/zoo/vqa.yaml", str(tmp_path), 1)
    name = Path(first[0]["file_name"]).name
    truth = max(set(first[0]["answers"]), key=first[0]["answers"].count)
    assert len(lines) == len(first) >= 2  # every question of the first image
    assert lines[0] == f"{name}: {first[0]['question']} -> purple (answer: {truth})"
    pairs = sorted(DatasetCatalog.get("fiber_shapes_pairs_val"), key=lambda r: r["image_id"])[:2]
    folder = tmp_path / "inference" / "fiber_shapes_pairs_val"
    folder.mkdir(parents=True)
    (folder / "caption_predictions.json").write_text(json.dumps(
        [{"image_id": r["image_id"], "caption": "a red star ."} for r in pairs]))
    lines = demo.example_lines("fiber_shapes/zoo/caption.yaml", str(tmp_path), 2)
    assert lines == [f"{Path(r['file_name']).name}: 'a red star .' (a reference: {r['captions'][0]!r})" for r in pairs]


SHIPPED = sorted(model_zoo.list_models())


@pytest.fixture(scope="module")
def shapes_root() -> Path:
    """The default FIBER-Shapes (its tokenizer is the zoo models'): `make shapes` writes it, `make test` runs that."""
    root = Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "fiber_shapes"
    if not (root / "meta.json").is_file():
        pytest.fail(f"{root} is missing: the model-zoo tests need FIBER-Shapes (`make shapes`; `make test` makes it)")
    return root


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_file_has_the_recorded_sha256_size_and_metrics(config):
    entry = model_zoo.list_models()[config]
    path = Path(model_zoo.get_checkpoint_path(config))  # raises unless the sha256 matches
    assert path.stat().st_size == entry["bytes"] <= 10 * 1024 * 1024
    assert entry["metrics"], config  # published with its metrics (tools/zoo_demo.py --record)


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_model_uses_the_shipped_tokenizer_whatever_the_dataset_root(config, tmp_path, monkeypatch):
    """The zoo's tokenizer, not $DETECTRON2_DATASETS's: FIBER-Shapes generated with other options (e.g. 10,000
    training images) trains another vocabulary, whose token ids the shipped models would misread."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    tokenizer = model_zoo.get_config(config, trained=True).MODEL.FIBER.TOKENIZER
    assert Path(tokenizer) == Path(model_zoo.get_checkpoint_path(config)).parent / "tokenizer"


def test_default_fiber_shapes_regenerates_the_shipped_tokenizer(shapes_root):
    """`make shapes` must give the vocabulary the zoo models were trained with (the same token ids)."""
    from fiber_d2.data.tokenizer import load_tokenizer

    shipped = load_tokenizer(model_zoo.get_model_files(SHIPPED[0])["MODEL.FIBER.TOKENIZER"])
    generated = load_tokenizer(str(shapes_root / "tokenizer"))
    assert shipped.get_vocab() == generated.get_vocab() and len(shipped.get_vocab()) > 300
    text = "there is a small green square right of a hexagon on a blotchy background ."
    assert shipped(text)["input_ids"] == generated(text)["input_ids"]


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_model_loads_with_no_missing_or_unexpected_keys(config, shapes_root):
    from detectron2.modeling import build_model

    cfg = model_zoo.get_config(config, trained=True)
    model = build_model(cfg)
    weights = load_file(cfg.MODEL.WEIGHTS)
    incompatible = model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []


DETECTORS = [c for c in SHIPPED if model_zoo.get_config(c).INPUT.DATASET_MAPPER_NAME == "grounding"]


@pytest.mark.parametrize("config", DETECTORS)
def test_shipped_detector_finds_the_named_objects_of_five_validation_images(config, shapes_root):
    """The first five colour+shape validation images (31 objects), each prompted with the names of its objects: all
    objects but at most one are found by one of the image's 2 x (number of objects) best detections, of its own name,
    at IoU >= 0.5. (Measured with the shipped detector: 30 of 31, the small purple star of image 1003 that touches a
    red triangle missed; among the best N alone, 27 of 31.)"""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import Boxes, BoxMode, pairwise_iou

    from fiber_d2 import FiberPredictor
    from fiber_d2.data.image_io import read_image

    predictor = FiberPredictor(model_zoo.get_config(config, trained=True))
    names = MetadataCatalog.get("fiber_shapes_colorshape_val").thing_classes
    records = sorted(DatasetCatalog.get("fiber_shapes_colorshape_val"), key=lambda r: r["image_id"])[:5]
    found = []
    for record in records:
        objects = record["annotations"]
        prompt = sorted({names[a["category_id"]] for a in objects})
        output = predictor(read_image(record["file_name"], format="BGR"), prompt)
        best = output["instances"][: 2 * len(objects)]
        labels = output["text_labels"][: 2 * len(objects)]
        boxes = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in objects],
                                   dtype=torch.float32))
        hits = pairwise_iou(boxes, best.pred_boxes) >= 0.5  # [objects, detections]
        for index, annotation in enumerate(objects):
            same_name = torch.tensor([label == names[annotation["category_id"]] for label in labels], dtype=torch.bool)
            found.append((record["image_id"], names[annotation["category_id"]], bool((hits[index] & same_name).any())))
    assert len(found) == 31
    missed = [(image_id, name) for image_id, name, hit in found if not hit]
    assert len(missed) <= 1, f"objects not found: {missed}"
