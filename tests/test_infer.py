"""tools/infer.py: a folder of images -> COCO-format detections, with skipped files, resume and vocabularies."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data.datasets.lvis import get_lvis_instances_meta
from detectron2.data.detection_utils import read_image
from PIL import Image
from test_grounding_detector import micro_cfg, micro_model, open_gates

from fiber_d2.config import add_fiber_config
from fiber_d2.data.prompts import clean_category_name
from fiber_d2.engine.predictor import FiberPredictor

REPO = Path(__file__).resolve().parents[1]
PROMPT = "red circle. blue star. green square"
# Sorted by absolute path (upper case first): image ids 0..3. a.png and c.bmp share a padded size (one forward).
IMAGES = {"B.JPG": (90, 40), "a.png": (48, 64), "c.bmp": (60, 80)}
CORRUPT = "x.jpg"


def load_infer():
    spec = importlib.util.spec_from_file_location("fiber_infer", REPO / "tools" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


infer = load_infer()


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):  # noqa: F811
    """A saved micro model and its config file, and a folder of images (plus a corrupt one and non-images)."""
    root = tmp_path_factory.mktemp("infer")
    model = micro_model(tokenizer_dir, seed=3)
    open_gates(model, 0.25)
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    cfg = micro_cfg(tokenizer_dir, **{"MODEL.WEIGHTS": str(root / "model.pth"),
                                      "MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    config = root / "config.yaml"
    config.write_text(cfg.dump())
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / name)
    (images / CORRUPT).write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (images / "notes.txt").write_text("not an image")
    (images / "sub" / "gt.json").write_text(json.dumps({"images": [{"id": 7, "file_name": "a.png"}]}))
    return {"config": str(config), "images": images}


@pytest.fixture(scope="module")
def predictor(setup):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(setup["config"])
    return FiberPredictor(cfg)


def run_infer(setup, output, *args: str) -> int:
    return infer.main(["--config-file", setup["config"], "--output", str(output), *args])


def expected(predictor, path, prompt, threshold: float) -> list[tuple[int, float, list[float]]]:
    """(category index, score, xyxy) of FiberPredictor's detections scoring at least `threshold`."""
    instances = predictor(read_image(str(path), format="BGR"), prompt)["instances"]
    keep = instances.scores >= threshold
    return list(zip(instances.pred_classes[keep].tolist(), instances.scores[keep].tolist(),
                    instances.pred_boxes.tensor[keep].tolist()))


def assert_same_detections(got: list[dict], want: list[dict]) -> None:
    assert [(d["image_id"], d["file_name"], d["category_id"], d["category_name"]) for d in got] == [
        (d["image_id"], d["file_name"], d["category_id"], d["category_name"]) for d in want
    ]
    torch.testing.assert_close(torch.tensor([d["score"] for d in got]), torch.tensor([d["score"] for d in want]))
    torch.testing.assert_close(torch.tensor([d["bbox"] for d in got]), torch.tensor([d["bbox"] for d in want]),
                               atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def threshold(setup, predictor) -> float:
    """A threshold between two of the model's scores near their median, so that it drops about half."""
    scores = sorted(s for name in IMAGES for _, s, _ in expected(predictor, setup["images"] / name, PROMPT, 0.0))
    middle = len(scores) // 2
    gap = next(i for i in range(middle, len(scores) - 1) if scores[i + 1] - scores[i] > 1e-4)
    return (scores[gap] + scores[gap + 1]) / 2


@pytest.fixture(scope="module")
def full_run(setup, threshold, tmp_path_factory):
    """One uninterrupted run over the folder, 3 images per step: (output path, detections, warnings, summary)."""
    output = tmp_path_factory.mktemp("full") / "results.json"
    warnings: list[str] = []
    summary = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(summary):
        patch.setattr(infer.tqdm, "write", lambda message, file=None: warnings.append(message))
        code = run_infer(setup, output, "--input", str(setup["images"]), "--prompt", PROMPT,
                         "--batch-size", "3", "--confidence-threshold", str(threshold))
    assert code == 0
    return output, json.loads(output.read_text()), warnings, summary.getvalue()


def test_folder_gives_coco_detections_and_skips_the_corrupt_image(setup, full_run, threshold):
    output, detections, warnings, summary = full_run
    names = sorted(IMAGES, key=lambda name: str(setup["images"] / name)) + [CORRUPT]
    file_names = [os.path.normpath(str(setup["images"] / name)) for name in names]
    assert [Path(name).name for name in file_names] == ["B.JPG", "a.png", "c.bmp", "x.jpg"]
    assert isinstance(detections, list) and detections
    for detection in detections:
        assert set(detection) == {"image_id", "file_name", "category_id", "bbox", "score", "category_name"}
        assert detection["file_name"] == file_names[detection["image_id"]]
        assert (detection["category_id"], detection["category_name"]) in {
            (1, "red circle"), (2, "blue star"), (3, "green square")
        }
        assert detection["score"] >= threshold
        height, width = IMAGES[Path(detection["file_name"]).name]
        x, y, w, h = detection["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
    assert [d["image_id"] for d in detections] == sorted(d["image_id"] for d in detections)
    assert {d["image_id"] for d in detections} == {0, 1, 2}
    assert len(warnings) == 1 and file_names[3] in warnings[0] and "corrupt" in warnings[0]
    assert f"3 images, {len(detections)} detections" in summary and "unreadable files skipped: 1" in summary
    report = json.loads(Path(str(output) + ".skipped.json").read_text())
    assert report["skipped"] == [{"image_id": 3, "file_name": file_names[3],
                                  "reason": "not an image format PIL can read (corrupt or unknown)"}]
    assert report["run"]["confidence_threshold"] == threshold and report["run"]["num_images"] == 4
    assert not os.path.exists(str(output) + ".partial.jsonl")


def test_detections_equal_the_predictors_and_the_threshold_drops_the_rest(setup, predictor, full_run, threshold):
    _, detections, _, _ = full_run
    for image_id, name in enumerate(sorted(IMAGES, key=lambda name: str(setup["images"] / name))):
        want = expected(predictor, setup["images"] / name, PROMPT, threshold)
        got = [d for d in detections if d["image_id"] == image_id]
        assert 0 < len(got) == len(want) < len(expected(predictor, setup["images"] / name, PROMPT, 0.0))
        assert [d["category_id"] for d in got] == [label + 1 for label, _, _ in want]
        torch.testing.assert_close(torch.tensor([d["score"] for d in got]), torch.tensor([s for _, s, _ in want]))
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in got)])
        torch.testing.assert_close(xyxy, torch.tensor([box for _, _, box in want]), atol=1e-4, rtol=1e-5)


def test_a_stopped_run_resumes_without_recomputing_finished_images(setup, full_run, threshold, tmp_path, monkeypatch,
                                                                   capsys):
    output = tmp_path / "results.json"
    side = Path(str(output) + ".partial.jsonl")
    images = [str(setup["images"] / pattern) for pattern in ("*.jpg", "*.JPG", "a.png", "c.bmp", "a.png")]
    args = ["--input", *images, "--prompt", PROMPT, "--confidence-threshold", str(threshold)]
    predict_batch = infer.FiberPredictor.predict_batch
    seen: list[tuple[int, ...]] = []

    def stop_at_the_second_image(self, images, prompt):
        if seen:
            raise KeyboardInterrupt
        seen.extend(image.shape for image in images)
        return predict_batch(self, images, prompt)

    monkeypatch.setattr(infer.FiberPredictor, "predict_batch", stop_at_the_second_image)
    assert run_infer(setup, output, *args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not output.exists()
    lines = side.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["file_name"].endswith("B.JPG")

    with pytest.raises(SystemExit) as error:  # another threshold: another run
        run_infer(setup, output, *args[:-1], "0.5")
    assert error.value.code == 2
    assert "from a different run (different confidence threshold); pass --overwrite" in capsys.readouterr().err
    assert side.read_text().splitlines() == lines

    def record(self, images, prompt):
        seen.extend(image.shape for image in images)
        return predict_batch(self, images, prompt)

    seen.clear()
    monkeypatch.setattr(infer.FiberPredictor, "predict_batch", record)
    assert run_infer(setup, output, *args) == 0
    assert seen == [(48, 64, 3), (60, 80, 3)]  # a.png and c.bmp; B.JPG came from the side file
    assert "resuming: 1 of 4 images done" in capsys.readouterr().err
    assert not side.exists()
    assert_same_detections(json.loads(output.read_text()), full_run[1])
    skipped = json.loads(Path(str(output) + ".skipped.json").read_text())["skipped"]
    assert [entry["file_name"] for entry in skipped] == [os.path.normpath(str(setup["images"] / CORRUPT))]

    seen.clear()
    finished = output.read_bytes()
    assert run_infer(setup, output, *args) == 0  # the same finished command again: nothing to do
    assert seen == [] and output.read_bytes() == finished
    assert f"{output} is already done by this command; nothing to do" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_infer(setup, output, *args[:-1], "0.5")
    assert "exists from a different run (different confidence threshold); pass --overwrite" in \
        capsys.readouterr().err
    assert run_infer(setup, output, *args, "--overwrite") == 0
    assert len(seen) == 3
    assert_same_detections(json.loads(output.read_text()), full_run[1])


def test_vocabulary_file_and_coco_ids(setup, predictor, tmp_path):
    image = setup["images"] / "a.png"
    vocabulary = tmp_path / "names.txt"
    vocabulary.write_text("red circle\n\nblue star\n")
    output = tmp_path / "file.json"
    assert run_infer(setup, output, "--input", str(image), "--vocabulary", str(vocabulary),
                     "--confidence-threshold", "0") == 0
    detections = json.loads(output.read_text())
    want = expected(predictor, image, "red circle. blue star", 0.0)
    assert [(d["category_id"], d["category_name"]) for d in detections] == [
        (label + 1, ["red circle", "blue star"][label]) for label, _, _ in want
    ]
    torch.testing.assert_close(torch.tensor([d["score"] for d in detections]), torch.tensor([s for _, s, _ in want]))
    assert {d["image_id"] for d in detections} == {0}

    coco = infer.build_vocabulary(None, "coco", ". ")
    assert len(coco.names) == 80
    assert coco.category_ids[coco.names.index("person")] == 1
    assert coco.category_ids[coco.names.index("toothbrush")] == 90
    output = tmp_path / "coco.json"
    assert run_infer(setup, output, "--input", str(image), "--vocabulary", "coco", "--confidence-threshold", "0") == 0
    detections = json.loads(output.read_text())
    want = expected(predictor, image, coco.prompt, 0.0)
    assert len(detections) == len(want) > 0
    assert [d["category_id"] for d in detections] == [coco.category_ids[label] for label, _, _ in want]
    coco_names = dict(zip(coco.category_ids, coco.names))
    assert all(coco_names[d["category_id"]] == d["category_name"] for d in detections)
    assert len({d["category_id"] for d in detections}) > 1


def test_lvis_vocabulary_is_the_lvis_datasets_prompt_names():
    lvis = infer.build_vocabulary(None, "lvis", ". ")
    thing_classes = get_lvis_instances_meta("lvis_v1")["thing_classes"]
    assert lvis.names == [clean_category_name(name) for name in thing_classes]  # as the LVIS datasets' prompts
    assert lvis.category_ids == list(range(1, 1204))
    assert lvis.names[lvis.category_ids.index(1)] == "aerosol can"


def test_vocabulary_json_file(tmp_path):
    path = tmp_path / "names.json"
    path.write_text(json.dumps(["red circle", "bow_(weapon)"]))
    vocabulary = infer.build_vocabulary(None, str(path), ". ")
    assert vocabulary.names == ["red circle", "bow "] and vocabulary.category_ids == [1, 2]
    path.write_text(json.dumps({"names": ["red circle"]}))
    with pytest.raises(ValueError, match="names.json.*JSON list"):
        infer.build_vocabulary(None, str(path), ". ")
    prompt = infer.build_vocabulary("red circle. blue star.", None, ". ")
    assert prompt.names == ["red circle", "blue star"] and prompt.category_ids == [1, 2]


def test_side_file_keeps_its_good_lines_and_reports_damaged_ones(tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(infer.tqdm, "write", lambda message, file=None: warnings.append(message))
    header = {infer.HEADER_KEY: 1, "config_sha256": "c", "inputs_sha256": "i", "vocabulary_sha256": "v",
              "confidence_threshold": 0.05, "num_images": 2}
    images = {0: "a.png", 1: "b.png"}
    first = {"image_id": 0, "file_name": "a.png", "detections": []}
    second = {"image_id": 1, "file_name": "b.png", "detections": [
        {"image_id": 1, "file_name": "b.png", "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5,
         "category_name": "blue star"}]}
    side = tmp_path / "out.json.partial.jsonl"
    side.write_text(f"{json.dumps(header)}\n{json.dumps(first)}\n{json.dumps(second)}\n{json.dumps(first)[:20]}")
    assert infer.load_side_file(str(side), header, images) == {0: first, 1: second}  # the cut last line: dropped
    assert warnings == []

    lines = [json.dumps(header), json.dumps(first)[:20], json.dumps([first]), json.dumps({"image_id": 1,
             "file_name": "b.png"}), json.dumps({**first, "file_name": "c.png"})]
    side.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe{\n" + json.dumps(second).encode() + b"\n")
    assert infer.load_side_file(str(side), header, images) == {1: second}
    assert warnings == [f"{infer.PROG}: warning: {side} line {number}: {problem}; that image is computed again"
                        for number, problem in [(2, "not valid JSON"), (3, "a JSON list, not an image's record"),
                                                (4, "has no valid 'detections' list"),
                                                (5, "names an image that is not among the inputs"),
                                                (6, "not UTF-8 text")]]
    with pytest.raises(infer.RunConflict, match="from a different run \\(different confidence threshold\\)"):
        infer.load_side_file(str(side), {**header, "confidence_threshold": 0.5}, images)
    side.write_bytes(b"\xff[]\n")
    with pytest.raises(infer.RunConflict, match="not a side file of infer.py"):
        infer.load_side_file(str(side), header, images)


def test_a_damaged_side_file_line_is_recomputed_by_the_rerun(setup, predictor, full_run, threshold, tmp_path,
                                                             capsys):
    output = tmp_path / "results.json"
    paths = infer.expand_inputs([str(setup["images"])])
    vocabulary = infer.build_vocabulary(PROMPT, None, ". ")
    header = infer.run_header(predictor.cfg, dict(enumerate(paths)), vocabulary, threshold)
    side = Path(str(output) + ".partial.jsonl")
    side.write_text(f"{json.dumps(header)}\n{json.dumps({'image_id': 0, 'file_name': paths[0]})}\n")
    assert run_infer(setup, output, "--input", str(setup["images"]), "--prompt", PROMPT, "--confidence-threshold",
                     str(threshold)) == 0
    assert f"{side} line 2: has no valid 'detections' list; that image is computed again" in capsys.readouterr().err
    assert_same_detections(json.loads(output.read_text()), full_run[1])


def test_coco_json_gives_the_image_ids(setup, full_run, threshold, tmp_path):
    images = [{"id": 100 + i, "file_name": f"val/{name}", "height": h, "width": w}
              for i, (name, (h, w)) in enumerate(IMAGES.items())]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    output = tmp_path / "results.json"
    inputs = [str(setup["images"] / name) for name in IMAGES]
    assert run_infer(setup, output, "--input", *inputs, "--prompt", PROMPT, "--coco-json", str(gt),
                     "--confidence-threshold", str(threshold)) == 0
    detections = json.loads(output.read_text())
    id_of = {os.path.normpath(str(setup["images"] / image["file_name"][4:])): image["id"] for image in images}
    assert {d["image_id"] for d in detections} == {101, 100, 102} == set(id_of.values())
    assert all(d["image_id"] == id_of[d["file_name"]] for d in detections)
    by_index = {d["file_name"]: d["image_id"] for d in full_run[1]}
    assert_same_detections([{**d, "image_id": by_index[d["file_name"]]} for d in detections], full_run[1])


def test_written_files_are_0644_under_umask_022(setup, tmp_path):
    umask = os.umask(0o022)
    try:
        output = tmp_path / "results.json"
        assert run_infer(setup, output, "--input", str(setup["images"] / "a.png"), "--prompt", PROMPT) == 0
    finally:
        os.umask(umask)
    for path in (output, Path(str(output) + ".skipped.json")):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_when_every_input_is_unreadable_the_run_fails(setup, tmp_path, capsys):
    output = tmp_path / "results.json"
    corrupt = os.path.normpath(str(setup["images"] / CORRUPT))
    assert run_infer(setup, output, "--input", corrupt, "--prompt", PROMPT) == 1
    err = capsys.readouterr().err
    assert f"{infer.PROG}: error: none of the 1 inputs could be read (listed in {output}.skipped.json); " \
           f"{output} not written" in err
    assert not output.exists() and not Path(str(output) + ".partial.jsonl").exists()
    assert json.loads(Path(str(output) + ".skipped.json").read_text())["skipped"][0]["file_name"] == corrupt
    assert run_infer(setup, output, "--input", corrupt, "--prompt", PROMPT) == 1  # tried again, not "done"


def test_a_16_bit_grayscale_png_is_detected_as_its_8_bit_image(setup, tmp_path):
    values = np.random.default_rng(5).integers(0, 65536, (48, 64), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    Image.fromarray((values >> 8).astype(np.uint8)).save(tmp_path / "gray8.png")
    output = tmp_path / "results.json"
    assert run_infer(setup, output, "--input", str(tmp_path / "gray16.png"), str(tmp_path / "gray8.png"),
                     "--prompt", PROMPT, "--confidence-threshold", "0") == 0
    detections = json.loads(output.read_text())
    gray16, gray8 = ([{**d, "file_name": "", "image_id": 0} for d in detections if d["file_name"].endswith(name)]
                     for name in ("gray16.png", "gray8.png"))
    assert len(gray8) > 0
    assert_same_detections(gray16, gray8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{images}/none-*.jpg", "--prompt", "a"], r"--input '[^']*none-\*\.jpg' matches no file"),
        (["--input", "{images}/sub", "--prompt", "a"], r"--input '[^']*sub' is a directory without"),
        (["--input", "{images}", "--vocabulary", "{images}/no.txt"], r"--vocabulary '[^']*no\.txt' is neither coco"),
        (["--input", "{images}", "--prompt", " . "], "names nothing to detect"),
        (["--input", "{images}", "--prompt", "a", "--vocabulary", "coco"], "not allowed with argument --prompt"),
        (["--input", "{images}", "--prompt", "a", "--batch-size", "0"], "--batch-size: expected a whole number"),
        (["--input", "{images}", "--prompt", "a", "--confidence-threshold", "2"], r"expected a number in \[0, 1\]"),
        (["--input", "{images}", "--prompt", "a", "--opts", "MODEL.NO_SUCH_KEY", "1"], "command-line override: Non-existent key: MODEL.NO_SUCH_KEY$"),
        (["--input", "{images}", "--prompt", "a", "--config-file", "{images}/none.yaml"],
         r"config file '[^']*none\.yaml' does not exist$"),
        (["--input", "{images}", "--prompt", "a", "--coco-json", "{images}/no.json"],
         r"annotation file not found: [^ ]*no\.json"),
        (["--input", "{images}", "--prompt", "a", "--coco-json", "{images}/sub/gt.json"],
         r"--coco-json '[^']*gt\.json' lists no image named 'B.JPG': input [^ ]*B.JPG \(and 2 more inputs\)$"),
    ],
)
def test_bad_arguments_are_reported_by_name(setup, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as error:
        run_infer(setup, tmp_path / "out.json", *[arg.format(images=setup["images"]) for arg in args])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert re.search(f"{infer.PROG}: error: .*{message}", err, re.MULTILINE), err
    assert not (tmp_path / "out.json").exists()
