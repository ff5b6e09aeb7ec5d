"""projects/FIBER/demo.py: instant --help with its defaults, prompts and captions drawn, the best score when nothing
passes, an empty prompt refused; LabelFittingVisualizer keeps labels inside the image."""
from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from test_grounding_detector import micro_cfg, micro_model, open_gates

from fiber_d2.data.image_io import read_image
from fiber_d2.engine.predictor import FiberPredictor
from fiber_d2.engine.visualizer import LabelFittingVisualizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "projects" / "FIBER" / "demo.py"
PROMPT = "red circle. blue star. green square"
CAPTION = "a red circle left of the blue star"


def load_demo():
    spec = importlib.util.spec_from_file_location("fiber_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):  # noqa: F811
    """A saved micro model, its config file, one image and the predictor of that config."""
    root = tmp_path_factory.mktemp("demo")
    model = micro_model(tokenizer_dir, seed=3)
    open_gates(model, 0.25)
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    cfg = micro_cfg(tokenizer_dir, **{"MODEL.WEIGHTS": str(root / "model.pth"), "DATASETS.TEST": "()",
                                      "MODEL.FIBER.HEAD.SCORE_THRESH_TEST": 0.0})
    config = root / "config.yaml"
    config.write_text(cfg.dump())
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    return {"config": str(config), "image": str(image), "predictor": FiberPredictor(cfg), "root": root}


def run_demo(setup, output, *args: str) -> None:
    demo.main(["--config-file", setup["config"], "--input", setup["image"], "--output", str(output), *args])


def test_help_is_instant_and_shows_the_defaults():
    script = ("import runpy, sys; sys.argv = ['demo.py', '--help']\n"
              f"try: runpy.run_path({str(DEMO)!r}, run_name='__main__')\n"
              "except SystemExit: pass\n"
              "print('loaded:', sorted(m for m in ('torch', 'detectron2', 'cv2', 'fiber_d2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no FutureWarning
    help_text = " ".join(result.stdout.split())
    assert "draw detections scoring at least this (default: 0.5)" in help_text
    assert "whatever its label (default: True)" in help_text
    assert "draw at most the K highest-scoring detections (default: all above the threshold)" in help_text
    assert result.stdout.rstrip().endswith("loaded: []")


def test_nothing_above_the_threshold_names_the_best_score(setup, tmp_path, capsys):
    run_demo(setup, tmp_path, "--prompt", PROMPT, "--confidence-threshold", "1.0")
    output = setup["predictor"](read_image(setup["image"]), PROMPT, one_label_per_box=True)
    best = int(output["instances"].scores.argmax())
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{setup['image']}: 0 detections in ")
    assert line.endswith(f"-> {tmp_path / 'image.png'} (none scores at least 1.0; best "
                         f"{float(output['instances'].scores[best]):.3f}, {output['text_labels'][best]!r})")
    assert Image.open(tmp_path / "image.png").size == (120, 90)
    run_demo(setup, tmp_path, "--prompt", PROMPT, "--opts", "MODEL.FIBER.HEAD.SCORE_THRESH_TEST", "0.99")
    assert capsys.readouterr().out.strip().endswith(f"-> {tmp_path / 'image.png'} (the model returned no detection)")


def test_one_label_per_box_is_the_default_and_can_be_turned_off(setup, tmp_path, capsys):
    image = read_image(setup["image"])
    for args, one_label in (([], True), (["--no-one-label-per-box"], False)):
        run_demo(setup, tmp_path, "--prompt", PROMPT, "--confidence-threshold", "0", *args)
        count = len(setup["predictor"](image, PROMPT, one_label_per_box=one_label)["instances"])
        assert f": {count} detections in " in capsys.readouterr().out
    assert len(setup["predictor"](image, PROMPT, one_label_per_box=True)["instances"]) < count


def test_caption_draws_its_phrases(setup, tmp_path, capsys):
    run_demo(setup, tmp_path, "--caption", CAPTION, "--confidence-threshold", "0")
    out = capsys.readouterr().out
    grounded = setup["predictor"].ground(read_image(setup["image"]), CAPTION, one_label_per_box=True)
    assert f"demo.py: grounding the phrases ['red circle', 'blue star']\n{setup['image']}: " \
           f"{len(grounded['instances'])} detections in " in out
    drawn = np.asarray(Image.open(tmp_path / "image.png"))
    assert drawn.shape == (90, 120, 3) and not np.array_equal(drawn, read_image(setup["image"], "RGB"))


@pytest.mark.parametrize("args, message", [
    (["--prompt", " . "], "demo.py: error: the prompt ' . ' names nothing to detect"),
    (["--caption", "of the, and it"], "demo.py: error: found no phrase to ground in --caption 'of the, and it'"),
    ([], "demo.py: error: give --prompt or --caption (the config has no test dataset with category names)"),
])
def test_bad_prompts_end_in_one_line(setup, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(FiberPredictor, "__init__", lambda self, cfg: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["demo.py", "--config-file", setup["config"], "--input", setup["image"],
                                      "--output", str(tmp_path), *args])
    with pytest.raises(SystemExit) as error:
        runpy.run_path(str(DEMO), run_name="__main__")
    assert error.value.code == message


def _label_extents(visualizer: Visualizer) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) in image pixels of each drawn label, its background included."""
    output = visualizer.output
    renderer = output.canvas.get_renderer()
    extents = []
    for text in output.ax.texts:
        text.update_bbox_position_size(renderer)
        boxes = [text.get_window_extent(renderer), text.get_bbox_patch().get_window_extent(renderer)]
        points = output.ax.transData.inverted().transform([(b.x0, b.y0) for b in boxes] + [(b.x1, b.y1) for b in boxes])
        extents.append((points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()))
    return extents


def test_labels_stay_inside_the_image():
    instances = Instances((64, 96))
    instances.pred_boxes = Boxes(torch.tensor([[70.0, 50.0, 96.0, 64.0], [40.0, 0.0, 60.0, 30.0], [0, 0, 20, 10]]))
    instances.scores = torch.tensor([0.9, 0.8, 0.7])
    instances.pred_classes = torch.tensor([0, 1, 1])
    metadata = Metadata(name="labels", thing_classes=["a rather long label", "blue star"])
    image = np.zeros((64, 96, 3), np.uint8)
    plain = Visualizer(image, metadata)
    plain.draw_instance_predictions(instances)
    assert max(right for _, _, right, _ in _label_extents(plain)) > 150  # Detectron2's: far past the right edge
    fitted = LabelFittingVisualizer(image, metadata)
    fitted.draw_instance_predictions(instances)
    extents = _label_extents(fitted)
    assert len(extents) == 3
    for left, top, right, bottom in extents:
        assert -0.5 <= left < right <= 96.5 and -0.5 <= top < bottom <= 64.5
