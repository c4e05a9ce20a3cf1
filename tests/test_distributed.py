"""Data-parallel training: 2 CPU processes (gloo) take the same steps as 1 process with the
same global batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from wsi_lpd.classes import ClassList
from wsi_lpd.data.datasets import LPD_NORMALISATION, PatchDataset
from wsi_lpd.data.training_data import TrainingData
from wsi_lpd.formats.patch_store import PatchStoreWriter
from wsi_lpd.networks.checkpoint import read_checkpoint
from wsi_lpd.train import distributed
from wsi_lpd.train.engine import (
    GlobalBatchSampler,
    TrainJob,
    _average_gradients,
    launch_training,
    poly_lr,
    seed_everything,
    train,
)
from wsi_lpd.train.methods import Method
from wsi_lpd.train.registry import make_method, training_config_from_mapping
from wsi_lpd.train.training_config import TrainingConfig

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


def _batch(store: Path, size: int) -> dict[str, torch.Tensor]:
    """The first ``size`` patches as one float64 batch (float32 → float64 is exact)."""
    items = next(iter(DataLoader(PatchDataset(store, LPD_NORMALISATION), batch_size=size)))
    return {k: v.double() if v.is_floating_point() else v for k, v in items.items()}


def _gradients(method: Method, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """One step's gradients of the full loss (past the warm-up: every loss term active)."""
    method.model.zero_grad(set_to_none=True)
    iteration = method.config.loss.warmup_iters  # type: ignore[union-attr]
    method.losses({"train": batch}, iteration)["total"].backward()
    return {n: p.grad for n, p in method.model.named_parameters() if p.requires_grad}


def _rank_gradients(
    config: TrainingConfig,
    weights: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    reductions: tuple[str, ...],
    out: Path,
) -> None:
    """One rank of ``distributed.launch``: the gradients of its slice of the global batch, then,
    per reduction, ``mean`` (the engine's all-reduce average), ``sum`` (all-reduce without the
    division by the world size) or ``one_rank`` (no all-reduce: this rank's gradients only)."""
    rank, world = distributed.rank(), distributed.world_size()
    method = make_method(config, CLASSES)
    method.model.double().load_state_dict(weights)
    size = len(batch["image"]) // world
    local = _gradients(method, {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()})
    named = [(n, p) for n, p in method.model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    reduced = {}
    for reduction in reductions:
        for name, p in named:
            g = local[name]
            p.grad = None if g is None else g.clone()
        if reduction == "mean":
            _average_gradients(params, world)
        elif reduction == "sum":
            _average_gradients(params, 1)  # the same all-reduce, divided by 1: a plain sum
        reduced[reduction] = {name: p.grad for name, p in named}
    if rank == 0:
        torch.save(reduced, out)


# Gradient agreement in float64: every entry within GRAD_TOL · S, S the largest gradient entry
# of the model (the scale of the terms the backward pass adds up). The two sides differ only in
# summation order: the all-reduce adds two half-batch means where one process takes one
# full-batch mean, and each half's matmuls/convolutions accumulate over fewer rows, in an order
# that depends on the BLAS, CPU and thread count. Reordering a float64 sum of n terms of size
# ≤ S moves it by at most ~n·2⁻⁵³·S; the tiny model's reductions have n ≲ 10⁴ terms, so ≲ 1e-12·S
# on any machine (measured: 4e-16·S). An absolute scale, not a per-tensor relative one: the
# attention queries of stages 1–3 attend to a single reduced key, their exact gradient is 0 and
# both sides hold ~1e-20 of rounding noise. GRAD_TOL = 1e-10 leaves 100× over the worst case and
# is still 10⁶ below what a wrong reduction gives: a plain sum is off by the gradient itself (up
# to S), one rank's half-batch gradient differs from the global batch's by O(S).
GRAD_TOL = 1e-10


def _same_gradients(
    got: dict[str, torch.Tensor | None], want: dict[str, torch.Tensor | None]
) -> bool:
    """True if the same parameters have gradients and every entry agrees within GRAD_TOL · S."""
    if got.keys() != want.keys():
        return False
    if any((got[n] is None) != (w is None) for n, w in want.items()):
        return False
    pairs = [(g, w) for n, w in want.items() if w is not None and (g := got[n]) is not None]
    scale = max(float(w.abs().max()) for _, w in pairs)
    return all(float((g - w).abs().max()) <= GRAD_TOL * scale for g, w in pairs)


def test_averaged_gradients_of_two_processes_equal_the_global_batch_gradients(
    store: Path, tmp_path: Path
) -> None:
    config = training_config_from_mapping(yaml.safe_load(TINY.read_text()))
    seed_everything(config.train.seed)
    method = make_method(config, CLASSES)
    method.model.double()
    weights = {k: v.clone() for k, v in method.model.state_dict().items()}
    batch = _batch(store, 4)
    want = _gradients(method, batch)
    assert sum(g is not None for g in want.values()) > len(want) // 2  # a real backward pass
    reductions = ("mean", "sum", "one_rank")
    distributed.launch(
        2, "cpu", _rank_gradients, config, weights, batch, reductions, tmp_path / "g.pt"
    )
    got = torch.load(tmp_path / "g.pt")
    assert all(g.dtype == torch.float64 for g in got["mean"].values() if g is not None)
    assert _same_gradients(got["mean"], want)
    # the comparison has teeth: it rejects a sum without the division and a single rank's share
    assert not _same_gradients(got["sum"], want)
    assert not _same_gradients(got["one_rank"], want)


def _adamw_max_drift(config: TrainingConfig, steps: int) -> float:
    """Largest |w_a − w_b| two AdamW runs from the same weights can reach after ``steps`` steps,
    whatever their gradients (so: whatever the summation order did to their last bits).

    AdamW: w ← w·(1 − lr_t·wd) − lr_t·m̂_t / (√v̂_t + eps) with m̂_t = Σ a_i g_i and
    v̂_t = Σ b_i g_i², a_i = (1−β1)β1^(t−i)/(1−β1^t), b_i = (1−β2)β2^(t−i)/(1−β2^t). By
    Cauchy–Schwarz |m̂_t| ≤ √(Σ a_i²/b_i)·√v̂_t, so one update moves a weight by at most
    lr_t·C_t with C_t = √(Σ a_i²/b_i) (C_1 = 1, ≈ 1.001 at t = 3 for (0.9, 0.999)). The decay
    factor (1 − lr_t·wd) ≤ 1 never widens a difference, so two runs drift apart by at most
    Σ_t 2·lr_t·max_{s≤t} C_s (a parameter skipped on a step has taken fewer Adam steps: max).
    """
    s = config.train
    b1, b2 = s.betas
    drift, c_max = 0.0, 0.0
    for t in range(1, steps + 1):
        a = [(1 - b1) * b1 ** (t - i) / (1 - b1**t) for i in range(1, t + 1)]
        b = [(1 - b2) * b2 ** (t - i) / (1 - b2**t) for i in range(1, t + 1)]
        c_max = max(c_max, math.sqrt(sum(x * x / y for x, y in zip(a, b, strict=True))))
        drift += 2 * poly_lr(s.lr, t - 1, steps, s.poly_power) * c_max
    return drift


def test_two_gloo_processes_train_like_one_process_with_the_global_batch(
    store: Path, tmp_path: Path
) -> None:
    """End to end through ``launch_training``: spawn, weight broadcast, batch sharding, rank-0
    checkpoint. Whether the gradients are averaged right is the test above's job: here the
    weights can only be compared within what AdamW guarantees (see :func:`_adamw_max_drift`):
    a gradient near zero whose last bits differ between the runs moves its weight by up to lr
    either way (Adam divides by √v̂), so a tighter tolerance holds on one CPU and not another."""
    steps = 3
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(
        max_iters=steps, augment={"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0}, workers=0
    )
    data = PatchDataset(store, LPD_NORMALISATION)
    kwargs = dict(mpp=1.0, patch_px=PATCH, normalisation=LPD_NORMALISATION)
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
    one = read_checkpoint(tmp_path / "one" / "model.pt")
    two = read_checkpoint(tmp_path / "two" / "model.pt")
    a, b = one["state_dict"], two["state_dict"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    drift = _adamw_max_drift(single, steps)  # 2·lr·(1 + 2/3 + 1/3)·C ≈ 4.0e-3 at lr 1e-3
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=drift, rtol=0.0, msg=key)
    assert one["training"]["iteration"] == two["training"]["iteration"] == steps


def test_torchrun_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_lpd.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False  # a plain single-process run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK"):
        distributed.init_from_env("cpu")
    with pytest.raises(ConfigError, match="--nproc"):
        distributed.launch(0, "cpu", print)
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
