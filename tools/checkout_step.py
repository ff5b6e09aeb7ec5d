#!/usr/bin/env python
"""Run by `tools/benchmark.py checkouts`, once per process: the training step of the checkout at ROOT.

    python tools/checkout_step.py ROOT CONFIG ITERS WARMUP THREADS [KEY VALUE ...]

Imports fiber_d2 from ROOT (not from the checkout this file is in), so it uses only what every fiber_d2 checkout
has: `add_fiber_config`, and a `Trainer` in `fiber_d2.engine.trainer` or, in older ones, `projects/FIBER/train_net.py`.
The model starts from random weights (seed 0); the loader is the checkout's own with `DATALOADER.NUM_WORKERS 0`,
seeded (0) so that every process draws the same images in the same order, and its batches are taken before the
timing. A step is forward, losses, backward and the optimizer step (the trainer's
optimizer, with its gradient clipping), on the CPU; with SOLVER.AMP.ENABLED the forward runs under bfloat16
autocast, as the checkout's mixed-precision trainer does. Prints one JSON line: the CPU milliseconds of each timed step
(`time.process_time`) and the mean pixels per image of the timed batches.
"""
import json
import os
import sys
import time
import warnings


def main(argv: list) -> None:
    root, config, iters, warmup, threads, *opts = argv
    root = os.path.abspath(root)
    # Python put this file's folder first on the path, where scripts (benchmark.py, ...) could shadow modules
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [root, os.path.join(root, "projects", "FIBER")] + [p for p in sys.path if os.path.abspath(p) != here]
    warnings.filterwarnings("ignore")
    import torch
    from detectron2.config import get_cfg
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    import fiber_d2
    from fiber_d2.config import add_fiber_config

    if not os.path.abspath(fiber_d2.__file__).startswith(root + os.sep):
        raise SystemExit(f"checkout_step: fiber_d2 was imported from {fiber_d2.__file__}, not from {root}")
    torch.set_num_threads(int(threads))
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(os.path.join(root, config))
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", *opts])
    try:
        from fiber_d2.engine.trainer import Trainer
    except ImportError:  # checkouts before the Trainer moved into the package
        from train_net import Trainer
    if cfg.get("KEEP_FREED_CPU_MEMORY", False):  # as that checkout's train_net.py does
        from fiber_d2.engine.allocator import keep_freed_cpu_memory

        keep_freed_cpu_memory()
    seed_all_rng(0)  # the weights and the loader's stream: the same in every process
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(int(warmup) + int(iters))]
    precision = autocast_precision(cfg)
    cpu_ms = []
    with EventStorage(0):
        for index, batch in enumerate(batches):
            start = time.process_time()
            with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
                losses = sum(model(batch).values())
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            if index >= int(warmup):
                cpu_ms.append(1e3 * (time.process_time() - start))
    timed = batches[int(warmup):]
    pixels = sum(x["image"].shape[-2] * x["image"].shape[-1] for b in timed for x in b) / sum(map(len, timed))
    print(json.dumps({"cpu_ms": cpu_ms, "pixels_per_image": pixels, "batch": len(timed[0])}))


def autocast_precision(cfg):
    """The forward's autocast dtype: the checkout's `amp_precision` with SOLVER.AMP.ENABLED, else None (float32).
    bfloat16 only: its backward needs no gradient scaler, so the step above is the trainer's."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    import torch
    from fiber_d2.engine.amp import amp_precision

    precision = amp_precision(cfg)
    if precision != torch.bfloat16:
        raise SystemExit(f"checkout_step: SOLVER.AMP.PRECISION must give bfloat16 on the CPU, not {precision}")
    return precision


if __name__ == "__main__":
    main(sys.argv[1:])
