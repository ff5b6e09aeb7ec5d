"""kill -9 and --resume end with the same weights as an uninterrupted run (max abs diff 0, CPU, fixed seed, no loader
workers), also when the last checkpoint is truncated; a payload in MODEL.WEIGHTS is refused in one line."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "projects" / "FIBER" / "train_net.py"
CONFIG = REPO / "configs" / "fiber_shapes" / "fiber_tiny_grounding.yaml"
# 30 iterations of a small FIBER detector on referring expressions, one image per batch, checkpoints after
# iterations 20 (model_0000019.pth) and 30 (model_final.pth).
RUN = [TRAIN_NET, "--config-file", CONFIG, "SEED", "7", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1",
       "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "20", "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "()",
       "INPUT.MIN_SIZE_TRAIN", "(64, 80)", "INPUT.MAX_SIZE_TRAIN", "96", "MODEL.FPN.OUT_CHANNELS", "32",
       "MODEL.FIBER.HEAD.NUM_CONVS", "1", "MODEL.FIBER.MAX_QUERY_LEN", "48", "MODEL.FIBER.TEXT.MAX_POSITIONS", "50",
       "DATASETS.TRAIN", "('fiber_shapes_refexp_train',)", "DATASETS.TEST", "()"]

pytestmark = pytest.mark.slow


def _env(datasets_root):
    # one intra-op thread: the same arithmetic in every run, and far less CPU on a shared machine
    return dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                OMP_NUM_THREADS="1")


def _run(args, datasets_root, expect_success=True):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=_env(datasets_root), capture_output=True,
                          text=True, timeout=600)
    assert (proc.returncode == 0) == expect_success, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    _run([REPO / "tools" / "make_shapes_dataset.py", "--root", root / "fiber_shapes", "--seed", "3",
          "--num-train", "8", "--num-val", "4", "--num-novel", "4"], root)
    return root


def _start_and_kill_after_iteration_20(out, datasets_root):
    """Start training into `out`; SIGKILL it as soon as last_checkpoint names the iteration-20 checkpoint."""
    process = subprocess.Popen([sys.executable, *map(str, [*RUN, "OUTPUT_DIR", out])], cwd=REPO,
                               env=_env(datasets_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = out / "last_checkpoint"
    deadline = time.monotonic() + 600
    while not (tag.is_file() and tag.read_text() == "model_0000019.pth"):
        assert process.poll() is None and time.monotonic() < deadline, "training ended before its checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tag.read_text() == "model_0000019.pth" and not (out / "model_final.pth").exists()


def _max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_kill_9_and_resume_give_the_weights_of_an_uninterrupted_run(datasets_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = subprocess.Popen([sys.executable, *map(str, [*RUN, "OUTPUT_DIR", straight])], cwd=REPO,
                                     env=_env(datasets_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _start_and_kill_after_iteration_20(killed, datasets_root)  # meanwhile, on the other core
    log = _run([*RUN[:3], "--resume", *RUN[3:], "OUTPUT_DIR", killed], datasets_root)
    assert "Starting training from iteration 20" in log and "Training data continues after 20 drawn indices" in log
    assert uninterrupted.wait(timeout=600) == 0
    expected = torch.load(straight / "model_final.pth", weights_only=True)
    resumed = torch.load(killed / "model_final.pth", weights_only=True)
    assert len(expected["model"]) > 200
    assert _max_abs_diff(expected["model"], resumed["model"]) == 0.0
    moments = expected["trainer"]["_trainer"]["optimizer"]["state"]  # AdamW's moments are saved and restored
    assert moments and all(
        torch.equal(moments[k][name], resumed["trainer"]["_trainer"]["optimizer"]["state"][k][name])
        for k in moments for name in ("exp_avg", "exp_avg_sq")
    )

    # The last checkpoint truncated (as a kill during a non-atomic save left it): --resume says so, continues from
    # the newest readable one (iteration 20) and again ends with the uninterrupted run's weights.
    final = killed / "model_final.pth"
    final.write_bytes(final.read_bytes()[:75_000])
    log = _run([*RUN[:3], "--resume", *RUN[3:], "OUTPUT_DIR", killed], datasets_root)
    assert f"Resuming from {killed / 'model_0000019.pth'} instead: checkpoint '{final}' is truncated or corrupt" in log
    assert "Traceback" not in log
    again = torch.load(final, weights_only=True)["model"]
    assert _max_abs_diff(expected["model"], again) == 0.0


def test_a_payload_in_model_weights_is_refused_in_one_line(datasets_root, tmp_path):
    marker = tmp_path / "code_ran"
    weights = tmp_path / "model.pkl"
    weights.write_bytes(b"c" + b"os\nmkdir\n(V" + str(marker).encode() + b"\ntR.")  # pickle: os.mkdir(marker)
    pickle.loads(weights.read_bytes())  # the payload is live
    assert marker.is_dir()
    marker.rmdir()
    log = _run([*RUN[:3], "--eval-only", *RUN[3:], "MODEL.WEIGHTS", weights, "OUTPUT_DIR", tmp_path / "out"],
               datasets_root, expect_success=False)
    assert not marker.exists()
    assert f"train_net.py: error: checkpoint '{weights}' cannot be read as a pickle of numpy arrays" in log
    assert "Traceback" not in log
