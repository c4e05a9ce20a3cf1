"""Device selection: `cuda:auto` gives each process its own GPU (simulated GPU count, CPU only)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
import torch

from wsi_lpd import device
from wsi_lpd.device import claim_gpu, gpu_ids, release_gpus, resolve_device
from wsi_lpd.errors import ConfigError, DeviceBusyError

FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "WSI_LPD_GPU_WAIT_S", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WSI_LPD_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(device, "POLL_S", 0.05)
    release_gpus()
    yield
    release_gpus()


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def hold_gpu(count: int, directory: Path, ready, release, result) -> None:
    """Child process: claim a GPU, report it, keep it until told to exit."""
    result.put(claim_gpu(count, directory))
    ready.set()
    release.wait(30)


def test_two_threads_get_distinct_gpus_and_a_third_is_refused(tmp_path: Path) -> None:
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(claim_gpu(2, tmp_path))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1]
    with pytest.raises(DeviceBusyError, match=rf"all 2 GPU\(s\) are in use.*{tmp_path}"):
        claim_gpu(2, tmp_path)


def test_processes_get_distinct_gpus_and_the_lock_ends_with_the_process(tmp_path: Path) -> None:
    ready, release, result = FORK.Event(), FORK.Event(), FORK.Queue()
    child = FORK.Process(target=hold_gpu, args=(2, tmp_path, ready, release, result))
    child.start()
    try:
        assert ready.wait(30)
        assert result.get(timeout=5) == 0
        assert (tmp_path / "gpu-0.lock").read_text().strip() == str(child.pid)
        assert claim_gpu(2, tmp_path) == 1  # this process: the other GPU
        release_gpus()
        assert claim_gpu(2, tmp_path) == 1  # GPU 0 is still the child's
        release_gpus()
    finally:
        release.set()
        child.join(30)
    assert claim_gpu(2, tmp_path) == 0  # freed by the child's exit


def test_a_waiting_process_gets_the_gpu_once_it_is_freed(tmp_path: Path) -> None:
    ready, release, result = FORK.Event(), FORK.Event(), FORK.Queue()
    child = FORK.Process(target=hold_gpu, args=(1, tmp_path, ready, release, result))
    child.start()
    assert ready.wait(30)
    with pytest.raises(DeviceBusyError):
        claim_gpu(1, tmp_path)
    threading.Timer(0.2, release.set).start()
    assert claim_gpu(1, tmp_path, wait_s=30) == 0
    child.join(30)


def test_locks_are_named_by_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-1a2b/3")
    assert gpu_ids(2) == ["2", "GPU-1a2b_3"]
    assert gpu_ids(1) == ["2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_ids(3) == ["0", "1", "2"]


def test_processes_seeing_the_same_physical_gpu_under_different_indices_share_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    ready, release, result = FORK.Event(), FORK.Event(), FORK.Queue()
    child = FORK.Process(target=hold_gpu, args=(1, tmp_path, ready, release, result))
    child.start()
    try:
        assert ready.wait(30)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # physical GPU 1 is index 1 here
        assert claim_gpu(2, tmp_path) == 0
        with pytest.raises(DeviceBusyError):
            claim_gpu(2, tmp_path)
    finally:
        release.set()
        child.join(30)


def test_cuda_auto_resolves_to_one_gpu_per_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_cuda(monkeypatch, 2)
    assert resolve_device("cuda:auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:auto") == torch.device("cuda", 0)  # the same GPU again
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu-0.lock"]


def test_cuda_auto_inside_a_slurm_job_uses_the_allocated_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_cuda(monkeypatch, 1)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert resolve_device("cuda:auto") == torch.device("cuda", 0)
    assert not (tmp_path / "locks").exists()  # no lock: the scheduler owns the assignment


def test_cuda_auto_gives_each_rank_of_a_slurm_job_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, 2)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda:auto") == torch.device("cuda", 1)


def test_cuda_auto_refused_without_cuda_or_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"cuda:auto.*not available"):
        resolve_device("cuda:auto")
    with pytest.raises(ConfigError, match="sees no GPU"):
        claim_gpu(0, tmp_path)


def test_plain_devices_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:1")
