"""Data-parallel training: 2 CPU processes (gloo) take the same steps as 1 process with the
same global batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsi_lpd.classes import ClassList
from wsi_lpd.data.datasets import LPD_NORMALISATION, PatchDataset
from wsi_lpd.data.training_data import TrainingData
from wsi_lpd.formats.patch_store import PatchStoreWriter
from wsi_lpd.networks.checkpoint import read_checkpoint
from wsi_lpd.train.engine import GlobalBatchSampler, TrainJob, launch_training, train
from wsi_lpd.train.registry import training_config_from_mapping

CLASSES = ClassList.from_names(["A", "B"])
PATCH = 32
TINY = Path(__file__).parents[1] / "configs" / "model" / "lpd_tiny_test.yaml"


def test_global_batches_are_sharded_by_rank_and_keep_weighting() -> None:
    one = iter(GlobalBatchSampler(10, 4, seed=3))
    two = [iter(GlobalBatchSampler(10, 2, seed=3, rank=r, world=2)) for r in range(2)]
    for _ in range(5):
        assert next(one) == next(two[0]) + next(two[1])
    weights = np.r_[np.full(9, 1e-9), 1.0]  # all weight on patch 9
    shards = [
        iter(GlobalBatchSampler(10, 2, seed=0, weights=weights, rank=r, world=2)) for r in range(2)
    ]
    assert next(shards[0]) == next(shards[1]) == [9, 9]
    resumed = iter(GlobalBatchSampler(10, 4, seed=3, start=3))
    again = iter(GlobalBatchSampler(10, 4, seed=3))
    for _ in range(3):
        next(again)
    assert next(resumed) == next(again)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "train.zarr"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, CLASSES, mpp=1.0, patch_px=PATCH) as writer:
        slide = writer.add_slide("s0")
        for i in range(16):
            image = rng.integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
            writer.append(image, np.eye(2, dtype=np.uint8)[i % 2], (i * PATCH, 0), slide)
    return path


def test_two_gloo_processes_equal_one_process_with_the_global_batch(
    store: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(
        max_iters=3, augment={"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0}, workers=0
    )
    data = PatchDataset(store, LPD_NORMALISATION)
    kwargs = dict(mpp=1.0, patch_px=PATCH, normalisation=LPD_NORMALISATION)
    torch.set_num_threads(1)
    single = training_config_from_mapping({**raw, "train": {**raw["train"], "batch_size": 4}})
    train(single, data, None, CLASSES, out_dir=tmp_path / "one", **kwargs)
    double = training_config_from_mapping({**raw, "train": {**raw["train"], "batch_size": 2}})
    job = TrainJob(
        double,
        TrainingData(data, None, CLASSES, 1.0, PATCH, dict(LPD_NORMALISATION)),
        tmp_path / "two",
        device="cpu",
    )
    launch_training(job, nproc=2)
    a = read_checkpoint(tmp_path / "one" / "model.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "two" / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    start = read_checkpoint(tmp_path / "one" / "model.pt")["training"]["iteration"]
    assert start == 3


def test_torchrun_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.train import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False  # a plain single-process run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK"):
        distributed.init_from_env("cpu")
    with pytest.raises(ConfigError, match="--nproc"):
        distributed.launch(0, "cpu", print)
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
