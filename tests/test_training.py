"""Training engine and `wsi-lpd train`: outputs, validation, resume, baselines, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from pipelines import train as train_stage
from wsi_lpd.classes import ClassList
from wsi_lpd.datasets import LPD_NORMALISATION, PatchDataset
from wsi_lpd.model.checkpoint import load_model
from wsi_lpd.patch_store import PatchStoreWriter
from wsi_lpd.training import TrainConfig, poly_lr, train

CLASSES = ClassList.from_names(["A", "B"])
PATCH = 32
TINY = Path(__file__).parents[1] / "configs" / "model" / "lpd_tiny_test.yaml"


def _patch(rng: np.random.Generator, cls: int) -> np.ndarray:
    """Class A: dense dark dots on pink; class B: sparse streaks on pale pink."""
    img = np.full((PATCH, PATCH, 3), (235, 190, 215), np.uint8)
    if cls == 0:
        for _ in range(25):
            y, x = rng.integers(0, PATCH - 3, 2)
            img[y : y + 3, x : x + 3] = (70, 40, 120)
    else:
        for _ in range(4):
            y = rng.integers(0, PATCH)
            img[y, :] = (200, 90, 150)
    return img


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 patches, half with both classes side by side, all with ground-truth masks."""
    path = tmp_path_factory.mktemp("store") / "train.zarr"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, CLASSES, mpp=1.0, patch_px=PATCH, with_masks=True) as writer:
        slide = writer.add_slide("s0")
        for i in range(24):
            kind = i % 3
            if kind < 2:
                image, mask = _patch(rng, kind), np.full((PATCH, PATCH), kind, np.uint8)
                labels = np.eye(2, dtype=np.uint8)[kind]
            else:
                image = np.concatenate([_patch(rng, 0)[:, :16], _patch(rng, 1)[:, 16:]], axis=1)
                mask = np.zeros((PATCH, PATCH), np.uint8)
                mask[:, 16:] = 1
                labels = np.ones(2, np.uint8)
            writer.append(image, labels, (i * PATCH, 0), slide, mask)
    return path


def _config(**train_overrides: object) -> TrainConfig:
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(train_overrides)
    return TrainConfig.from_mapping(raw)


def test_poly_schedule_decays_to_zero() -> None:
    assert poly_lr(1e-3, 0, 100, 1.0) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100, 1.0) == pytest.approx(5e-4)
    assert poly_lr(1e-3, 100, 100, 1.0) == 0.0


def test_train_writes_checkpoint_log_and_curves(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = PatchDataset(store, LPD_NORMALISATION, indices=np.arange(18))
    val = PatchDataset(store, LPD_NORMALISATION, indices=np.arange(18, 24))
    result = train(
        _config(),
        data,
        val,
        CLASSES,
        mpp=1.0,
        patch_px=PATCH,
        normalisation=LPD_NORMALISATION,
        out_dir=tmp_path,
    )
    assert result.iterations == 6
    assert result.best_miou is not None and 0.0 <= result.best_miou <= 1.0
    for name in ("model.pt", "last.pt", "train_log.csv", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert all(float(r["total"]) > 0 for r in rows)
    assert rows[-1]["val_mIoU"] != ""
    model, contract = load_model(tmp_path / "model.pt")
    assert contract["mpp"] == 1.0 and contract["patch_px"] == PATCH
    assert contract["training"]["best_val_mIoU"] == pytest.approx(result.best_miou)
    probs = model.predict(data[0]["image"][None])
    assert probs.shape == (1, 3, PATCH, PATCH)
    assert torch.allclose(probs.sum(1), torch.ones(1, PATCH, PATCH), atol=1e-5)


def test_resume_continues_from_last_checkpoint(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = PatchDataset(store, LPD_NORMALISATION)
    # 6 patches / batch 4 = 2 iterations per epoch: stop after the first epoch, then resume.
    first = train(
        _config(max_iters=2),
        data,
        None,
        CLASSES,
        mpp=1.0,
        patch_px=PATCH,
        normalisation=LPD_NORMALISATION,
        out_dir=tmp_path,
    )
    assert first.iterations == 2
    resumed = train(
        _config(max_iters=6),
        data,
        None,
        CLASSES,
        mpp=1.0,
        patch_px=PATCH,
        normalisation=LPD_NORMALISATION,
        out_dir=tmp_path,
        resume=True,
    )
    assert resumed.iterations == 6
    assert [r["iteration"] for r in resumed.history] == [2, 4, 6]


@pytest.mark.parametrize("method", ["cam", "pbip"])
def test_baselines_train_in_the_same_engine(store: Path, tmp_path: Path, method: str) -> None:
    torch.set_num_threads(1)
    raw = yaml.safe_load(TINY.read_text())
    raw["model"]["head"]["prototypes_per_class"] = 1 if method == "cam" else 2
    raw["train"].update(max_iters=2, pbip_features_per_class=4)
    config = TrainConfig.from_mapping(raw, method=method)
    assert config.loss["lambda_div"] == 0.0
    data = PatchDataset(store, LPD_NORMALISATION)
    train(
        config,
        data,
        None,
        CLASSES,
        mpp=1.0,
        patch_px=PATCH,
        normalisation=LPD_NORMALISATION,
        out_dir=tmp_path,
    )
    model, contract = load_model(tmp_path / "model.pt")
    assert contract["method"] == method
    if method == "pbip":
        assert not model.prototypes.requires_grad


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(train_stage.command)
    return app


def test_train_stage_cli(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(
        _app(),
        [
            "--config",
            str(TINY),
            "--patches",
            str(store),
            "--out",
            str(out),
            "--max-iters",
            "2",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file() and (out / "run.json").is_file()


def test_train_stage_rejects_bad_inputs(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        _app(),
        [
            "--config",
            str(tmp_path / "nope.yaml"),
            "--patches",
            str(store),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert missing.exit_code == 1
    assert "nope.yaml" in missing.output and "not found" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"encoder": {"type": "mit"}}, "train": {"lr2": 1}}))
    result = runner.invoke(
        _app(), ["--config", str(bad), "--patches", str(store), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 1
    assert "train.lr2" in result.output
