"""`tools/benchmark.py checkouts`: the training step of this checkout against another, each in its own processes
(here the other checkout is this one, so both run the same code on the same tiny FIBER-Shapes set)."""
import statistics
import subprocess
from pathlib import Path

import pytest

from fiber_d2.benchmark import checkouts
from fiber_d2.benchmark.common import BenchmarkError
from fiber_d2.data.shapes import generate_fiber_shapes
from test_benchmark import run_rows

REPO = Path(__file__).resolve().parents[1]
STAGE1 = "configs/fiber_shapes/fiber_tiny_grounding_stage1.yaml"


def test_processes_alternate_and_the_summary_is_the_ratio_of_their_medians(tmp_path, monkeypatch):
    generate_fiber_shapes(tmp_path / "fiber_shapes", seed=3, num_train=8, num_val=2, num_novel=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # the processes register FIBER-Shapes from there
    opts = ["DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
            "INPUT.MAX_SIZE_TRAIN", "192"]
    rows = run_rows(checkouts, "--baseline", REPO, "--processes", "2", "--iters", "2", "--warmup", "1", "--opts", *opts)
    processes, summary = rows[:-1], rows[-1]
    assert [(row["variant"], row["process"]) for row in processes] == [
        ("baseline", 0), ("ours", 0), ("baseline", 1), ("ours", 1)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    for row in rows:
        assert row["bench"] == "checkouts" and row["model"] == "fiber_tiny_grounding_stage1" and row["opts"] == opts
        assert (row["threads"], row["warmup"], row["iters"]) == (1, 1, 2)
    for row in processes:
        assert row["commit"] == commit.stdout.strip() and row["batch"] == 2 and row["cpu_ms"] > 0
        assert 0 < row["pixels_per_image"] <= 128 * 192  # shorter side 128, longer side at most 192
    medians = {name: statistics.median(r["cpu_ms"] for r in processes if r["variant"] == name)
               for name in ("ours", "baseline")}
    assert summary["cpu_ms_ours"] == pytest.approx(medians["ours"], abs=0.01)
    assert summary["ours_over_baseline_cpu"] == pytest.approx(medians["ours"] / medians["baseline"], rel=1e-3)
    assert summary["commits"] == {"baseline": commit.stdout.strip(), "ours": commit.stdout.strip()}


def test_a_checkout_without_the_config_or_whose_step_fails_is_one_error(tmp_path, monkeypatch):
    with pytest.raises(BenchmarkError, match=f"baseline checkout {tmp_path} has no config {STAGE1}"):
        run_rows(checkouts, "--baseline", tmp_path, "--processes", "1")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "missing"))
    with pytest.raises(BenchmarkError, match="the training step of .* failed: .*"):
        run_rows(checkouts, "--baseline", REPO, "--processes", "1", "--iters", "1", "--warmup", "0")


def test_ours_opts_reach_only_this_checkout(tmp_path, monkeypatch):
    # Both checkouts are this one. The baseline's process runs (bfloat16, the stage-1 config's precision); ours gets
    # float16, which the CPU step refuses with one line.
    generate_fiber_shapes(tmp_path / "fiber_shapes", seed=3, num_train=8, num_val=2, num_novel=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    opts = ["DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
            "INPUT.MAX_SIZE_TRAIN", "192"]
    calls, real = [], checkouts.process_steps
    monkeypatch.setattr(checkouts, "process_steps",
                        lambda root, args, opts: calls.append(opts) or real(root, args, opts))
    with pytest.raises(BenchmarkError, match=f"training step of {REPO} failed: .*must give bfloat16 on the CPU"):
        run_rows(checkouts, "--baseline", REPO, "--processes", "1", "--iters", "1", "--warmup", "0",
                 "--ours-opts", "SOLVER.AMP.PRECISION", "float16", "--opts", *opts)
    assert calls == [opts, opts + ["SOLVER.AMP.PRECISION", "float16"]]  # the baseline's ran, then ours failed
