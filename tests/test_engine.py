"""Launching several CPU processes (gloo), the optimizer builder and the evaluator choice."""
import json

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from fiber_d2.config import add_fiber_config
from fiber_d2.engine import launch
from fiber_d2.evaluation import build_evaluator
from fiber_d2.solver import build_optimizer


def _gather_and_average(out_path):
    rank = comm.get_rank()
    gathered = comm.all_gather(rank * 10)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    ddp = d2_defaults.create_ddp_model(model, broadcast_buffers=False)
    x = torch.full((1, 2), float(rank + 1))  # rank 0 sees [1, 1], rank 1 sees [2, 2]
    ddp(x).sum().backward()
    loader = torch.utils.data.DataLoader(range(4), batch_size=2, num_workers=1)  # a worker started by this rank
    result = {
        "start_method": mp.get_start_method(),
        "loaded": [batch.tolist() for batch in loader],
        "rank": rank,
        "world": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "gathered": gathered,
        "grad": model.weight.grad.tolist(),
        "ddp": type(ddp).__name__,
    }
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_launch_two_cpu_processes_gathers_and_averages_gradients(tmp_path):
    out = tmp_path / "rank"
    launch(_gather_and_average, 2, args=(str(out),))
    results = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == 2
        assert res["local_rank"] == r and res["local_size"] == 2
        assert res["gathered"] == [0, 10]
        assert res["ddp"] == "DistributedDataParallel"
        # d(sum(w.x))/dw = x, averaged over the two ranks: (1 + 2) / 2
        assert res["grad"] == [[1.5, 1.5]]
        # The ranks are spawned, but start their own workers as this process would (not spawned: a re-import each)
        assert res["start_method"] == mp.get_start_method() and res["loaded"] == [[0, 1], [2, 3]]


def test_launch_single_process_runs_in_this_process(tmp_path):
    out = tmp_path / "single"
    launch(_gather_and_average, 1, args=(str(out),))
    res = json.loads((tmp_path / "single.0").read_text())
    assert res["world"] == 1 and res["ddp"] == "Linear" and res["grad"] == [[1.0, 1.0]]


def _cfg(**solver):
    cfg = get_cfg()
    add_fiber_config(cfg)
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_adamw_optimizer_uses_betas_and_no_decay_on_norms():
    cfg = _cfg(OPTIMIZER="ADAMW", BASE_LR=1e-4, WEIGHT_DECAY=0.01, WEIGHT_DECAY_NORM=0.0, BETAS=(0.9, 0.98))
    optimizer = build_optimizer(cfg, _model())
    assert isinstance(optimizer, torch.optim.AdamW)
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays[0] == 0.0 and decays[-1] == 0.01
    assert all(group["betas"] == (0.9, 0.98) and group["lr"] == 1e-4 for group in optimizer.param_groups)


def test_sgd_is_the_default_and_unknown_optimizer_is_named():
    assert isinstance(build_optimizer(_cfg(), _model()), torch.optim.SGD)
    with pytest.raises(ValueError, match="'LAMB'"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), _model())


def test_evaluator_chosen_from_metadata(tmp_path):
    coco_json = tmp_path / "x.json"
    coco_json.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "circle"}]}))
    MetadataCatalog.get("test_engine_coco").set(evaluator_type="coco", json_file=str(coco_json))
    MetadataCatalog.get("test_engine_other").set(evaluator_type="nonexistent")
    assert isinstance(build_evaluator(_cfg(), "test_engine_coco", str(tmp_path)), COCOEvaluator)
    with pytest.raises(NotImplementedError, match="test_engine_other.*nonexistent"):
        build_evaluator(_cfg(), "test_engine_other")


def test_lr_multipliers_scale_matching_parameters_and_reject_unused_regexes():
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.LR_MULTIPLIERS = ((r"^text\.", 0.1), (r"head", 5.0))
    model = torch.nn.ModuleDict(
        {"text": torch.nn.Linear(2, 2), "image": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)}
    )
    optimizer = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lrs == pytest.approx(
        {"text.weight": 1e-5, "text.bias": 1e-5, "image.weight": 1e-4, "image.bias": 1e-4,
         "head.weight": 5e-4, "head.bias": 5e-4}
    )
    cfg.SOLVER.LR_MULTIPLIERS = ((r"^language_backbone\.", 0.1),)
    with pytest.raises(ValueError, match="language_backbone"):
        build_optimizer(cfg, model)
