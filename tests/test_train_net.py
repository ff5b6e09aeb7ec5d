"""End to end through the command-line entry points, on a tiny FIBER-Shapes set: the FIBER grounding detector (what
`make demo` runs) trains, resumes, evaluates every task, runs on two CPU processes and draws prompts; the
closed-vocabulary baseline still trains through Detectron2's own loaders; a COCO-format dataset named in a config
trains with no code; config errors end in one line."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fiber_shapes" / "fiber_tiny_grounding.yaml"
DEMO_CONFIG = REPO / "configs" / "fiber_shapes" / "fiber_tiny_demo.yaml"
BASELINE = REPO / "configs" / "fiber_shapes" / "retinanet_R18_baseline.yaml"
TINY = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "192"]

pytestmark = pytest.mark.slow


def _run(args, datasets_root, timeout=300, expect_success=True):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if expect_success:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    else:
        assert proc.returncode != 0, f"{args} should have failed"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    _run([REPO / "tools" / "make_shapes_dataset.py", "--root", root / "fiber_shapes", "--seed", "3",
          "--num-train", "8", "--num-val", "4", "--num-novel", "4"], root)
    return root


@pytest.fixture(scope="module")
def trained(datasets_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY,
          "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out], datasets_root, timeout=600)
    return out


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def test_training_writes_checkpoints_metrics_and_results(trained):
    assert (trained / "model_final.pth").is_file() and (trained / "model_0000001.pth").is_file()
    iterations = [m["iteration"] for m in _metrics(trained) if "total_loss" in m]
    assert iterations[-1] == 3
    results = json.loads((trained / "results.json").read_text())
    assert set(results) == {
        "fiber_shapes_colorshape_val", "fiber_shapes_flickr_val", "fiber_shapes_refexp_val",
        "fiber_shapes_colorshape_novel",
    }
    bbox = results["fiber_shapes_colorshape_val"]["bbox"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(bbox)
    assert set(results["fiber_shapes_flickr_val"]["grounding"]) == {"R@1", "R@5", "R@10"}
    assert set(results["fiber_shapes_refexp_val"]["refexp"]) == {"P@1", "P@5", "P@10"}
    values = [v for task in results.values() for metrics in task.values() for v in metrics.values()]
    assert all(value is None or 0.0 <= value <= 100.0 for value in values)
    for name in ("fiber_shapes_flickr_val", "fiber_shapes_refexp_val"):  # recall can only grow with k
        metrics = next(iter(results[name].values()))
        ranked = [metrics[k] for k in sorted(metrics, key=lambda key: int(key.split("@")[1]))]
        assert ranked == sorted(ranked), (name, metrics)


def test_resume_continues_from_last_checkpoint(trained, datasets_root):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, "--resume", *TINY,
          "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", trained], datasets_root)
    log = (trained / "log.txt").read_text()
    assert f"Loading trainer from {trained / 'model_final.pth'}" in log
    assert "Starting training from iteration 4" in log
    iterations = [m["iteration"] for m in _metrics(trained) if "total_loss" in m]
    assert iterations == [3, 5]


def test_stop_iter_stops_early_along_the_longer_schedule_and_resume_goes_on(datasets_root, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.solver import build_lr_scheduler

    from fiber_d2.config import add_fiber_config

    args = [REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", "6",
            "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
            "OUTPUT_DIR", tmp_path]
    _run([*args, "SOLVER.STOP_ITER", "3"], datasets_root)
    assert (tmp_path / "model_final.pth").is_file()
    metrics = [m for m in _metrics(tmp_path) if "total_loss" in m]
    assert [m["iteration"] for m in metrics] == [2]
    # the lr of iteration 2 is that of a 6-iteration cosine, not of a 3-iteration one
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(list(map(str, TINY)) + ["SOLVER.MAX_ITER", "6", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert metrics[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6)
    log = _run([args[0], "--resume", *args[1:]], datasets_root)
    assert "Starting training from iteration 3" in log
    assert [m["iteration"] for m in _metrics(tmp_path) if "total_loss" in m] == [2, 5]
    error = _run([*args, "SOLVER.STOP_ITER", "7"], datasets_root, expect_success=False)
    assert "train_net.py: error: SOLVER.STOP_ITER must lie in [0, SOLVER.MAX_ITER = 6], got 7" in error
    assert "Traceback" not in error


def test_eval_only_adds_a_dataset_to_results(trained, datasets_root):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, "--eval-only",
          "MODEL.WEIGHTS", trained / "model_final.pth", "DATASETS.TEST", "('fiber_shapes_val',)",
          "OUTPUT_DIR", trained], datasets_root)
    results = json.loads((trained / "results.json").read_text())
    assert {"fiber_shapes_colorshape_val", "fiber_shapes_val"} <= set(results)  # shape names as prompts
    assert "AP50" in results["fiber_shapes_val"]["bbox"]


def test_two_cpu_processes_train_together(datasets_root, tmp_path):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, "--num-gpus", "2", *TINY,
          "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path], datasets_root)
    assert "Rank of current process: 1. World size: 2" in (tmp_path / "log.txt.rank1").read_text()
    assert (tmp_path / "model_final.pth").is_file()


def test_baseline_trains_through_detectron2_loaders(datasets_root, tmp_path):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", BASELINE, *TINY,
          "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path], datasets_root)
    assert "AP50" in json.loads((tmp_path / "results.json").read_text())["fiber_shapes_val"]["bbox"]


def test_demo_draws_prompt_predictions_at_input_size(trained, datasets_root, tmp_path):
    images = sorted((datasets_root / "fiber_shapes" / "images" / "val").glob("*.jpg"))[:2]
    log = _run([REPO / "projects" / "FIBER" / "demo.py", "--config-file", CONFIG, "--input", *images,
                "--prompt", "red circle. blue star", "--output", tmp_path, "--confidence-threshold", "0.0",
                "--opts", "MODEL.WEIGHTS", trained / "model_final.pth", *TINY], datasets_root)
    for image in images:
        drawn = tmp_path / image.name
        assert drawn.is_file(), log
        assert Image.open(drawn).size == Image.open(image).size
        assert f"{image}: " in log and " detections in " in log
    log = _run([REPO / "projects" / "FIBER" / "demo.py", "--config-file", CONFIG, "--input", *images,
                "--output", tmp_path / "top2", "--confidence-threshold", "0.0", "--max-detections", "2",
                "--opts", "MODEL.WEIGHTS", trained / "model_final.pth", *TINY], datasets_root)
    assert log.count(": 2 detections in ") == len(images), log  # the detector keeps more than 2 at threshold 0


def test_missing_dataset_is_named_without_a_traceback(tmp_path):
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY,
                "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", tmp_path / "out"], tmp_path / "empty", expect_success=False)
    expected = tmp_path / "empty" / "fiber_shapes" / "annotations" / "instances_colorshape_train.json"
    assert f"train_net.py: error: dataset 'fiber_shapes_colorshape_train': annotation file not found: {expected}" in log
    assert "Traceback" not in log


def test_a_corrupt_training_image_is_named_in_one_line_from_a_loader_worker(datasets_root, tmp_path):
    shutil.copytree(datasets_root / "fiber_shapes", tmp_path / "fiber_shapes")
    for bad in (tmp_path / "fiber_shapes" / "images" / "train").glob("*.jpg"):  # whatever the data order
        bad.write_bytes(b"not an image at all")
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, "DATALOADER.NUM_WORKERS",
                "1", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path / "out"], tmp_path,
               expect_success=False)
    (line,) = [line for line in log.splitlines() if line.startswith("train_net.py: error: ")]
    assert re.fullmatch(r"train_net.py: error: dataset 'fiber_shapes_\w+_train', file .*/images/train/\d+\.jpg, "
                        r"image_id \d+: not an image format PIL can read \(corrupt or unknown\)", line), line


def test_config_errors_end_in_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("_BASE_: " + str(CONFIG) + "\nSOLVER:\n  MAX_ITER: [1\n")
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", broken], tmp_path, expect_success=False)
    assert f"train_net.py: error: {broken}: not valid YAML: while parsing a flow sequence" in log
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, "SOLVER.NOPE", "1"], tmp_path,
               expect_success=False)
    assert "train_net.py: error: command-line override: Non-existent key: SOLVER.NOPE" in log
    assert "Traceback" not in log


def test_custom_coco_example_config_trains_and_evaluates(datasets_root, tmp_path):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", REPO / "projects" / "FIBER" / "configs" /
          "custom_coco.yaml", *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path], datasets_root)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"my_shapes_val"}  # the dataset registered from the config, under its own name
    assert {"AP", "AP50", "AP75"} <= set(results["my_shapes_val"]["bbox"])


def test_demo_names_an_input_that_matches_nothing(trained, datasets_root, tmp_path):
    log = _run([REPO / "projects" / "FIBER" / "demo.py", "--config-file", CONFIG, "--input", tmp_path / "nope*.jpg",
                "--output", tmp_path, "--opts", "MODEL.WEIGHTS", trained / "model_final.pth"], datasets_root,
               expect_success=False)
    assert "demo.py: error: --input" in log and "nope*.jpg" in log and "Traceback" not in log


COARSE = REPO / "configs" / "fiber_shapes" / "fiber_tiny_coarse.yaml"
TINY_VL = ["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1",
           "INPUT.COARSE.IMAGE_SIZE", "64"]


def test_coarse_only_config_trains_and_evaluates_retrieval(datasets_root, tmp_path):
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", COARSE, *TINY_VL,
                "SOLVER.MAX_ITER", "2", "TEST.RETRIEVAL_ITM_TOP_K", "2", "OUTPUT_DIR", tmp_path], datasets_root)
    assert "ITM re-ranking of the top 2" in log
    losses = [m for m in _metrics(tmp_path) if "total_loss" in m][-1]
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= set(losses)
    retrieval = json.loads((tmp_path / "results.json").read_text())["fiber_shapes_pairs_val"]["retrieval"]
    recalls = {"ir_R@1", "ir_R@5", "ir_R@10", "tr_R@1", "tr_R@5", "tr_R@10", "r_mean"}
    assert set(retrieval) == recalls | {f"itc_{name}" for name in recalls}  # re-ranked, and the dual encoder's own
    assert retrieval["ir_R@10"] == retrieval["itc_ir_R@10"] == 100.0  # 4 validation images: all in the top 10


def test_batches_from_image_clusters_train_and_a_bad_cluster_file_is_one_line(datasets_root, tmp_path):
    clusters = tmp_path / "clusters.json"
    log = _run([REPO / "tools" / "cluster_images.py", "--config-file", COARSE, "--num-clusters", "2", "--output",
                clusters, *TINY_VL], datasets_root)
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["images"] == 8 and summary["clusters"] in (1, 2) and summary["smallest"] >= 4
    table = json.loads(clusters.read_text())
    assert len(table) == 8 and set(table.values()) == set(range(summary["clusters"]))
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", COARSE, *TINY_VL, "SOLVER.MAX_ITER", "2",
          "DATASETS.TEST", "()", "DATALOADER.BATCH_CLUSTERS", clusters, "OUTPUT_DIR", tmp_path / "run"], datasets_root)
    assert "loss_itc" in [m for m in _metrics(tmp_path / "run") if "total_loss" in m][-1]
    del table[sorted(table)[0]]
    clusters.write_text(json.dumps(table))
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", COARSE, *TINY_VL, "SOLVER.MAX_ITER",
                "2", "DATASETS.TEST", "()", "DATALOADER.BATCH_CLUSTERS", clusters, "OUTPUT_DIR", tmp_path / "bad"],
               datasets_root, expect_success=False)
    assert f"train_net.py: error: DATALOADER.BATCH_CLUSTERS '{clusters}' has no cluster for image_id" in log
    assert "Traceback" not in log


COARSE_HOOK = ["COARSE_STAGE.ENABLED", "True", "COARSE_STAGE.DATASETS", "('fiber_shapes_pairs_train',)",
               "COARSE_STAGE.IMS_PER_BATCH", "4", "COARSE_STAGE.LOG_PERIOD", "1", "COARSE_STAGE.CHECKPOINT_PERIOD", "2",
               "INPUT.COARSE.IMAGE_SIZE", "64", "DATASETS.TEST", "()"]


def test_coarse_stage_hook_runs_before_the_fine_stage_and_resumes(datasets_root, tmp_path):
    train = [REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, *COARSE_HOOK,
             "OUTPUT_DIR", tmp_path]
    log = _run([*train, "COARSE_STAGE.MAX_ITER", "3", "SOLVER.MAX_ITER", "2"], datasets_root)
    assert "fine-tuning of MODEL.WEIGHTS" not in log  # from scratch: no warning
    # One console line per coarse iteration (LOG_PERIOD 1), with the coarse lr of the iteration's step.
    printed = re.findall(r"coarse iter: (\d)/3  coarse/loss_itc: \S+ .* time: \S+  lr: (\S+)", log)
    coarse_metrics = [m for m in _metrics(tmp_path) if "coarse/lr" in m]
    assert [int(i) for i, _ in printed] == [1, 2, 3]
    assert [float(lr) for _, lr in printed] == pytest.approx([m["coarse/lr"] for m in coarse_metrics], rel=1e-4)
    assert (tmp_path / "model_coarse_0000002.pth").is_file() and (tmp_path / "model_coarse_final.pth").is_file()
    metrics = _metrics(tmp_path)
    coarse = [m["iteration"] for m in metrics if "coarse/loss_itc" in m]
    fine = [m["iteration"] for m in metrics if "loss_align" in m]
    assert coarse == [0, 1, 2] and fine == [1]  # the coarse stage first, then the fine stage
    # An interruption right after the coarse checkpoint at iteration 2: resuming finishes the coarse stage from
    # there, then runs the whole fine stage.
    (tmp_path / "last_checkpoint").write_text("model_coarse_0000002.pth")
    log = _run([*train[:3], "--resume", *train[3:], "COARSE_STAGE.MAX_ITER", "3", "SOLVER.MAX_ITER", "2"], datasets_root)
    assert "Coarse stage resumed at iteration 2 of 3" in log
    assert "Coarse stage: iterations 2 to 3 before the fine stage" in log
    assert "Starting training from iteration 0" in log


def test_a_coarse_stage_before_a_fine_tune_warns(trained, datasets_root, tmp_path):
    weights = trained / "model_final.pth"
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, *COARSE_HOOK,
                "COARSE_STAGE.MAX_ITER", "1", "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", tmp_path],
               datasets_root)
    assert (f"COARSE_STAGE.ENABLED: coarse iterations 0 to 1 will run before the fine-tuning of MODEL.WEIGHTS "
            f"{weights}; pass COARSE_STAGE.ENABLED False to fine-tune only") in log


def test_demo_config_runs_the_coarse_stage_then_the_fine_stage(datasets_root, tmp_path):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", DEMO_CONFIG, *TINY,
          "INPUT.COARSE.IMAGE_SIZE", "64", "COARSE_STAGE.IMS_PER_BATCH", "4", "COARSE_STAGE.LOG_PERIOD", "1",
          "COARSE_STAGE.MAX_ITER", "2", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path], datasets_root)
    metrics = _metrics(tmp_path)
    coarse = [m for m in metrics if "coarse/total_loss" in m]
    assert [m["iteration"] for m in coarse] == [0, 1]
    assert all(set(m) & {"coarse/loss_itm", "coarse/loss_mlm"} == set() for m in coarse)  # ITC only
    heads = torch.load(tmp_path / "model_coarse_final.pth", weights_only=False)["trainer"]["hooks"]["CoarseStageHook"]
    assert any("itc_image_norm.norm.running_mean" in key for key in heads["model"])  # the ITC batch norm is on
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 4 and "bbox" in results["fiber_shapes_colorshape_val"]


@pytest.mark.parametrize(
    "config, dataset, task, metric",
    [
        ("fiber_tiny_vqa.yaml", "fiber_shapes_vqa_val", "vqa", "accuracy"),
        ("fiber_tiny_caption.yaml", "fiber_shapes_pairs_val", "caption", "CIDEr"),
    ],
)
def test_vqa_and_caption_configs_train_and_evaluate(datasets_root, tmp_path, config, dataset, task, metric):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", REPO / "configs" / "fiber_shapes" / config,
          *TINY_VL, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path], datasets_root)
    value = json.loads((tmp_path / "results.json").read_text())[dataset][task][metric]
    assert value >= 0.0 and (task == "caption" or value <= 100.0)


def test_coarse_stage_hook_interleaves_with_the_fine_stage(datasets_root, tmp_path):
    _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, *COARSE_HOOK,
          "COARSE_STAGE.MODE", "interleave", "COARSE_STAGE.PERIOD", "2", "COARSE_STAGE.MAX_ITER", "5",
          "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", tmp_path], datasets_root)
    metrics = _metrics(tmp_path)
    # One coarse iteration after fine iterations 1 and 3 (every 2nd), written with the fine metrics of that iteration.
    assert [m["iteration"] for m in metrics if "coarse/loss_itc" in m] == [3]
    assert not (tmp_path / "model_coarse_final.pth").exists()
    hook_state = torch.load(tmp_path / "model_final.pth", weights_only=False)["trainer"]["hooks"]["CoarseStageHook"]
    assert hook_state["iteration"] == 2  # the hook's state is in the trainer's checkpoint


def test_amp_training_runs_on_cpu_in_bfloat16(datasets_root, tmp_path):
    """SOLVER.AMP.ENABLED on a CPU: the Trainer steps with FiberAMPTrainer (Detectron2 0.6's AMPTrainer needs CUDA)."""
    log = _run([REPO / "projects" / "FIBER" / "train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.AMP.ENABLED",
                "True", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR",
                tmp_path], datasets_root)
    losses = [m["total_loss"] for m in _metrics(tmp_path) if "total_loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses), log[-2000:]
    assert (tmp_path / "model_final.pth").is_file()
