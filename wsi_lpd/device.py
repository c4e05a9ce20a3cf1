"""Torch device selection shared by training and inference.

``cuda:auto`` gives each process its own GPU on a node shared by concurrent jobs (e.g.
``snakemake --resources gpu=N``): the process takes the first GPU whose lock file it can lock
(``fcntl.flock`` on ``gpu-<id>.lock`` in ``$WSI_LPD_GPU_LOCK_DIR``, default
``/tmp/wsi-lpd-gpu-locks``) and holds the lock until it exits, so the OS frees it even after a
crash. GPUs are those CUDA sees, so ``CUDA_VISIBLE_DEVICES`` is honoured; inside a SLURM job
with GPUs the scheduler's allocation is the job's own and ``cuda:auto`` is ``cuda:0`` (``cuda:r``
for the process of local rank r, ``LOCAL_RANK``, of a multi-GPU run).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import IO

import torch

from wsi_lpd.errors import ConfigError, DeviceBusyError

log = logging.getLogger(__name__)

AUTO_GPU = "cuda:auto"
DEFAULT_LOCK_DIR = "/tmp/wsi-lpd-gpu-locks"
POLL_S = 1.0  # seconds between tries while waiting for a GPU

# Locks this process holds (device index → open lock file); closed only when the process exits.
_held: dict[int, IO[str]] = {}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda:auto`` → a free GPU of its own (see the
    module docstring); refuses CUDA when there is none."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device) == AUTO_GPU:
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {AUTO_GPU!r} requested but CUDA is not available")
        return torch.device("cuda", own_gpu())
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return dev


def own_gpu() -> int:
    """This process's GPU index: the one it already holds, the scheduler's, or a free one."""
    if _held:
        return next(iter(_held))
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES"):
        # the job's own GPUs; rank r of a multi-process run (LOCAL_RANK) takes the r-th
        index = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
        log.info(
            "cuda:auto: GPU %d of those SLURM allocated to job %s",
            index,
            os.environ["SLURM_JOB_ID"],
        )
        return index
    wait_s = float(os.environ.get("WSI_LPD_GPU_WAIT_S", "0"))
    return claim_gpu(torch.cuda.device_count(), lock_dir(), wait_s=wait_s)


def lock_dir() -> Path:
    return Path(os.environ.get("WSI_LPD_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def gpu_ids(count: int) -> list[str]:
    """Node-wide names of the visible GPUs: CUDA_VISIBLE_DEVICES entries (index or UUID), else
    the indices, so two processes seeing different subsets never share a lock name."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    ids = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    return [re.sub(r"[^A-Za-z0-9._-]", "_", i) for i in ids]


def claim_gpu(count: int, directory: Path, wait_s: float = 0.0) -> int:
    """Lock the first free one of ``count`` GPUs and return its index (held until exit).

    Waits up to ``wait_s`` seconds for one to become free, then raises DeviceBusyError.
    """
    if count < 1:
        raise ConfigError(f"device: {AUTO_GPU!r} requested but CUDA sees no GPU")
    directory.mkdir(parents=True, exist_ok=True)
    ids = gpu_ids(count)
    deadline = time.monotonic() + wait_s
    waiting_logged = False
    while True:
        for index, name in enumerate(ids):
            if index in _held:
                continue
            path = directory / f"gpu-{name}.lock"
            handle = open(path, "a+")  # noqa: SIM115 (kept open: the lock lives with it)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held[index] = handle
            log.info("cuda:auto: GPU %d (%s) is this process's (lock %s)", index, name, path)
            return index
        if time.monotonic() >= deadline:
            raise DeviceBusyError(
                f"device: {AUTO_GPU!r}: all {count} GPU(s) are in use by other processes "
                f"(lock files gpu-*.lock in {directory}; holders' pids inside); run fewer GPU "
                "jobs at once (snakemake --resources gpu=N) or set WSI_LPD_GPU_WAIT_S to wait"
            )
        if not waiting_logged:
            log.info("cuda:auto: all %d GPU(s) busy; waiting up to %.0f s", count, wait_s)
            waiting_logged = True
        time.sleep(POLL_S)


def release_gpus() -> None:
    """Give back every GPU this process holds (tests; a process normally keeps its GPU)."""
    for handle in _held.values():
        handle.close()
    _held.clear()
