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


def test_export_cli_refuses_output_outside_the_zoo(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_zoo_model.py"), str(_checkpoint(tmp_path)),
         "--config", "fiber_shapes/fiber_tiny_demo.yaml", "--output", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--output must lie under" in result.stderr


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
        "fiber_shapes_colorshape_val": {"bbox": {"AP": 61.23, "AP50": 83.46}},
        "fiber_shapes_refexp_val": {"refexp": {"P@1": 82.04}},
        "fiber_shapes_vqa_val": {"vqa": {"accuracy": 85.5}},
    }
    assert demo.differences(results, headline) == []
    changed = json.loads(json.dumps(headline))
    changed["fiber_shapes_refexp_val"]["refexp"]["P@1"] = 82.2  # 82.0 shown against 82.2
    assert demo.differences(results, changed) == ["fiber_shapes_refexp_val refexp P@1: 82.04 here, 82.2 recorded"]
    rows = demo.headline_rows("zoo/x.yaml", results)
    assert ("zoo/x.yaml", "fiber_shapes_colorshape_val", "AP50", 83.456) in rows and len(rows) == 4
    table = demo.markdown_table(rows)
    assert "| zoo/x.yaml | fiber_shapes_colorshape_val | AP50 | 83.5 |" in table.splitlines()
    compared = demo.comparison_table({"fiber_shapes_colorshape_val": {"bbox": {"AP50": 14.5}}}, headline, "scratch")
    assert "| fiber_shapes_colorshape_val | AP50 | 14.5 | 83.5 |" in compared.splitlines()
    assert "| fiber_shapes_refexp_val | P@1 | - | 82.0 |" in compared.splitlines()


SHIPPED = sorted(model_zoo.list_models())
FOUND_SCORE = 0.3  # the score zoo_demo.py draws detections from


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
    """Every object of the first five colour+shape validation images is found: a detection of its own name among
    those scoring at least FOUND_SCORE, at IoU >= 0.5 with it."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import Boxes, BoxMode, pairwise_iou

    from fiber_d2 import FiberPredictor
    from fiber_d2.data.image_io import read_image

    predictor = FiberPredictor(model_zoo.get_config(config, trained=True))
    names = MetadataCatalog.get("fiber_shapes_colorshape_val").thing_classes
    records = sorted(DatasetCatalog.get("fiber_shapes_colorshape_val"), key=lambda r: r["image_id"])[:5]
    found, total = [], 0
    for record in records:
        output = predictor(read_image(record["file_name"], format="BGR"), names, score_threshold=FOUND_SCORE)
        boxes = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                                    for a in record["annotations"]], dtype=torch.float32))
        iou = pairwise_iou(boxes, output["instances"].pred_boxes)  # [objects, detections]
        for index, annotation in enumerate(record["annotations"]):
            same_name = torch.tensor([label == names[annotation["category_id"]] for label in output["text_labels"]],
                                     dtype=torch.bool)
            hit = bool(((iou[index] >= 0.5) & same_name).any()) if len(same_name) else False
            found.append((record["image_id"], names[annotation["category_id"]], hit))
        total += len(record["annotations"])
    assert total >= 10  # the five images hold enough objects for the check to mean something
    missed = [(image_id, name) for image_id, name, hit in found if not hit]
    assert not missed, f"objects not found: {missed}"


def test_model_zoo_md_shows_the_recorded_metrics_of_every_shipped_model():
    """MODEL_ZOO.md holds, verbatim, the table `make demo` prints from the metrics recorded in the manifest."""
    demo = _zoo_demo()
    zoo = model_zoo.list_models()
    rows = [row for config in sorted(zoo) for row in demo.headline_rows(config, zoo[config]["metrics"])]
    text = (REPO / "MODEL_ZOO.md").read_text()
    assert demo.markdown_table(rows) in text
    for config, entry in zoo.items():
        assert entry["sha256"] in text and f"`configs/{config}`" in text, config
