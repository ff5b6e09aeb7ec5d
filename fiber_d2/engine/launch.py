"""Multi-process launching: Detectron2's `launch` on GPUs (NCCL), and the same contract on CPUs (gloo).

Detectron2 0.6's `launch` asserts CUDA and hard-codes NCCL, so CPU-only machines could not run several processes.
`launch` here keeps its signature and semantics (one process per device, `comm` helpers working, a local process group
per machine) and picks the backend from the hardware.
"""
from __future__ import annotations

import gc
import logging
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT = timedelta(minutes=30)

__all__ = ["launch", "DEFAULT_TIMEOUT"]


def launch(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run `main_func(*args)` in `num_processes_per_machine` processes per machine (GPUs with NCCL, else CPU/gloo).

    `dist_url` is "auto" or None for a free local port when `num_machines == 1`; otherwise a "tcp://host:port"
    reachable from every machine.
    """
    if torch.cuda.is_available():
        d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
        return
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url must name a reachable tcp://host:port when num_machines > 1")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    # The processes are spawned (a clean interpreter each); their own subprocesses (data loader workers) start as
    # this process's would (fork on Linux), not spawned as well, which would import torch, Detectron2 and fiber_d2
    # again in every worker of every loader (about 4 s each on 2 CPU cores).
    start_method = mp.get_start_method()
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, tuple(args), timeout,
              start_method),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    start_method: str,
) -> None:
    mp.set_start_method(start_method, force=True)  # for the subprocesses this one starts (see `launch`)
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("Could not join the process group at %s", dist_url)
        raise
    num_machines = world_size // num_processes_per_machine
    for machine in range(num_machines):
        ranks = list(range(machine * num_processes_per_machine, (machine + 1) * num_processes_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    # DefaultTrainer wraps the model with device_ids=[local_rank], which DDP rejects for CPU modules.
    d2_defaults.create_ddp_model = _create_cpu_ddp_model
    comm.synchronize()
    main_func(*args)
    # Free what main_func left in reference cycles (a DDP model's reducer holds the process group) while the
    # interpreter is fully alive: freed during interpreter shutdown instead, gloo's threads abort the process (SIGABRT,
    # "terminate called without an active exception"; seen about once in 50 runs on a loaded machine).
    gc.collect()
    comm.synchronize()  # no rank tears gloo down while a peer still talks to it (that aborts the peer)
    comm._LOCAL_PROCESS_GROUP = None
    dist.destroy_process_group()
    gc.collect()


def _create_cpu_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> torch.nn.Module:
    """`detectron2.engine.create_ddp_model` for CPU processes: DDP without device ids."""
    if comm.get_world_size() == 1:
        return model
    if fp16_compression:
        raise ValueError("fp16 gradient compression is for GPUs; it is not supported with CPU processes")
    return DistributedDataParallel(model, device_ids=None, **kwargs)
