"""Data-parallel training processes: spawn N workers or join a torchrun-style launch.

``launch(nproc, fn, *args)`` runs ``fn(*args)`` in ``nproc`` processes, each with a
``torch.distributed`` process group (``nccl`` on CUDA, ``gloo`` on the CPU) and the environment a
``torchrun`` launch sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``). Under
``torchrun`` (those variables already set), :func:`init_from_env` joins the group instead.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, spawn

from wsi_lpd.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


def backend_for(device: str) -> str:
    """``nccl`` for CUDA devices (``auto`` with CUDA present), else ``gloo``."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def process_device(device: str) -> str:
    """The device of this process: CUDA runs use ``cuda:LOCAL_RANK`` in a distributed run."""
    if is_distributed() and backend_for(device) == "nccl":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank()))}"
    return device


def init_from_env(device: str) -> bool:
    """Join a process group described by torchrun's variables (``WORLD_SIZE`` > 1); True if so."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"distributed launch: WORLD_SIZE is set but {key} is not")
    dist.init_process_group(backend_for(device), init_method="env://")
    if backend_for(device) == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    log.info("joined process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    local_rank: int,
    nproc: int,
    port: int,
    device: str,
    log_level: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    logging.basicConfig(
        level=log_level if local_rank == 0 else max(log_level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s [rank {local_rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    init_from_env(device)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(nproc: int, device: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes with a process group (1: in this process)."""
    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1 (got {nproc})")
    if nproc == 1:
        fn(*args)
        return
    if backend_for(device) == "nccl" and torch.cuda.device_count() < nproc:
        raise ConfigError(
            f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    try:
        level = logging.getLogger().getEffectiveLevel()
        spawn(
            _worker,
            args=(nproc, _free_port(), device, level, fn, args),
            nprocs=nproc,
            join=True,
        )
    except ProcessRaisedException as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise TrainingError(f"a training process failed: {lines[-1] if lines else exc}") from None
    except ProcessExitedException as exc:
        raise TrainingError(f"a training process died ({exc})") from None
