"""Training engine and `wsi-lpd train`: outputs, validation, resume, baselines, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from wsi_lpd.classes import ClassList
from wsi_lpd.cli.app import app
from wsi_lpd.data.datasets import LPD_NORMALISATION, PatchDataset
from wsi_lpd.networks.checkpoint import load_model
from wsi_lpd.train.engine import poly_lr, train
from wsi_lpd.train.registry import training_config_from_mapping
from wsi_lpd.train.training_config import TrainingConfig

CLASSES = ClassList.from_names(["A", "B"])
PATCH = 32
TINY = Path(__file__).parents[1] / "configs" / "model" / "lpd_tiny_test.yaml"


def _config(**train_overrides: object) -> TrainingConfig:
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(train_overrides)
    return training_config_from_mapping(raw)


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
    assert result.best_metric == "val_mIoU"
    assert result.best_score is not None and 0.0 <= result.best_score <= 1.0
    for name in ("model.pt", "last.pt", "train_log.csv", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert all(float(r["total"]) > 0 for r in rows)
    assert rows[-1]["val_mIoU"] != ""
    model, contract = load_model(tmp_path / "model.pt")
    assert contract["mpp"] == 1.0 and contract["patch_px"] == PATCH
    assert contract["training"]["best_score"] == pytest.approx(result.best_score)
    assert contract["untrained_classes"] == [] and contract["augmentation"]["hflip_p"] == 0.5
    probs = model.predict(data[0]["image"][None])
    assert probs.shape == (1, 3, PATCH, PATCH)
    # a normalisation over 3 float32 classes sums to 1 within ~3·ε32 ≈ 4e-7 on any CPU
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
    config = training_config_from_mapping(raw, method=method)
    assert config.loss is not None and config.loss.lambda_div == 0.0
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


def test_train_stage_cli(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model-config",
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
    assert "held out for validation" in result.stderr


def test_train_stage_rejects_bad_inputs(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        app,
        [
            "train",
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
        app, ["train", "--config", str(bad), "--patches", str(store), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 1
    assert "train.lr2" in result.output


def _write_config(tmp_path: Path, **train: object) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(train)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("value", "problem"),
    [("abc", "train.lr: Input should be a valid number"), (-1e-3, "train.lr: Input should be")],
)
def test_mistyped_config_value_is_one_line_naming_file_and_key(
    store: Path, tmp_path: Path, value: object, problem: str
) -> None:
    path = _write_config(tmp_path, lr=value)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model-config",
            str(path),
            "--patches",
            str(store),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: {problem}" in lines[0], result.stderr
    assert lines[0].startswith("wsi-lpd train: error: ")
    assert not (tmp_path / "m").exists()


def test_numbers_written_as_strings_are_numbers_and_ranges_are_checked(tmp_path: Path) -> None:
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.train.registry import load_training_config

    assert load_training_config(_write_config(tmp_path, lr="5e-5")).train.lr == 5e-5
    for key, value in (
        ("max_iters", -1),
        ("epochs", 0),
        ("batch_size", 0),
        ("val_fraction", 1.5),
        ("augment", {"stain_strength": 2}),
        ("class_balance", "oversample"),
    ):
        with pytest.raises(ConfigError, match=rf"x\.yaml: train\.{key}: "):
            load_training_config(_write_config(tmp_path, **{key: value}))


def test_nan_loss_is_a_typed_error_naming_the_iteration(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_lpd.errors import TrainingDivergedError
    from wsi_lpd.train.methods.lpd import LPDMethod

    def nan_losses(self, batches, iteration):
        out = self.model(batches["train"]["image"])
        return {"total": out.logits[3].sum() * float("nan")}

    monkeypatch.setattr(LPDMethod, "losses", nan_losses)
    data = PatchDataset(store, LPD_NORMALISATION)
    with pytest.raises(TrainingDivergedError, match="at iteration 1 "):
        train(
            _config(max_iters=2),
            data,
            None,
            CLASSES,
            mpp=1.0,
            patch_px=PATCH,
            normalisation=LPD_NORMALISATION,
            out_dir=tmp_path / "m",
        )
    assert not (tmp_path / "m").exists()


def test_killed_run_leaves_no_output_and_resumes_from_its_state(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_lpd.train.engine import state_dir
    from wsi_lpd.train.methods.lpd import LPDMethod

    torch.set_num_threads(1)
    data = PatchDataset(store, LPD_NORMALISATION)  # 24 patches / batch 4: 6 iterations per epoch
    original = LPDMethod.losses

    def killed_at_8(self, batches, iteration):
        if iteration == 7:
            raise KeyboardInterrupt
        return original(self, batches, iteration)

    monkeypatch.setattr(LPDMethod, "losses", killed_at_8)
    out = tmp_path / "m"
    kwargs = dict(mpp=1.0, patch_px=PATCH, normalisation=LPD_NORMALISATION, out_dir=out)
    with pytest.raises(KeyboardInterrupt):
        train(_config(max_iters=10), data, None, CLASSES, **kwargs)
    assert not out.exists() and (state_dir(out) / "last.pt").is_file()
    monkeypatch.setattr(LPDMethod, "losses", original)
    result = train(_config(max_iters=10), data, None, CLASSES, resume=True, **kwargs)
    assert [r["iteration"] for r in result.history] == [2, 4, 6, 8, 10]
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png",
        "last.pt",
        "model.pt",
        "train_log.csv",
    ]
    assert not state_dir(out).exists()


def test_untrained_class_never_crashes_and_is_never_predicted(store: Path, tmp_path: Path) -> None:
    """Store classes A, B; trained as A, B, C: C has no patch; lpd, pbip and hisynseg survive."""
    torch.set_num_threads(1)
    classes = ClassList.from_names(["A", "B", "C"])
    data = PatchDataset(store, LPD_NORMALISATION)
    data.labels = np.concatenate([data.labels, np.zeros((len(data), 1), np.uint8)], axis=1)
    data.known = np.ones_like(data.labels)
    for method in ("lpd", "pbip", "hisynseg"):
        if method == "hisynseg":
            raw = yaml.safe_load((TINY.parent / "hisynseg_tiny_test.yaml").read_text())
            raw["hisynseg"].update(n_mosaic=4, n_bezier=4)
            raw["hisynseg"]["filter"]["enabled"] = False
            raw["train"].update(max_iters=1)
        else:
            raw = yaml.safe_load(TINY.read_text())
            raw["train"].update(max_iters=2, pbip_features_per_class=4)
        cfg = training_config_from_mapping(raw, method=method)
        out = tmp_path / method
        train(
            cfg,
            data,
            None,
            classes,
            mpp=1.0,
            patch_px=PATCH,
            normalisation=LPD_NORMALISATION,
            out_dir=out,
        )
        model, contract = load_model(out / "model.pt")
        assert contract["untrained_classes"] == ["C"]
        probs = model.predict(torch.randn(2, 3, PATCH, PATCH))
        assert float(probs[:, 2].max()) == 0.0  # masked to exactly 0, not computed small
        assert torch.allclose(probs.sum(1), torch.ones(2, PATCH, PATCH), atol=1e-5)


def test_label_validation_without_masks_and_class_balance(store: Path, tmp_path: Path) -> None:
    """No masks: best checkpoint by label F1 on held-out patches; class_balance: sampler."""
    torch.set_num_threads(1)
    data = PatchDataset(store, LPD_NORMALISATION, indices=np.arange(18))
    val = PatchDataset(store, LPD_NORMALISATION, indices=np.arange(18, 24))
    val.has_masks = False
    result = train(
        _config(max_iters=4, class_balance="sampler"),
        data,
        val,
        CLASSES,
        mpp=1.0,
        patch_px=PATCH,
        normalisation=LPD_NORMALISATION,
        out_dir=tmp_path / "m",
    )
    assert result.best_metric == "val_F1"
    with open(tmp_path / "m" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["val_F1"] != "" and rows[-1]["val_mIoU"] == ""


def test_train_config_flag_is_a_deprecated_alias(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            str(TINY),
            "--patches",
            str(store),
            "--out",
            str(tmp_path / "m"),
            "--max-iters",
            "1",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--config is deprecated" in result.stderr


def test_lpd_and_hisynseg_go_through_the_same_loop(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsi_lpd.train.engine as engine

    torch.set_num_threads(1)
    calls: list[tuple[str, int]] = []
    original = engine.run_loop

    def spy(method, run, state, offset):
        calls.append((method.name, method.round))
        return original(method, run, state, offset)

    monkeypatch.setattr(engine, "run_loop", spy)
    data = PatchDataset(store, LPD_NORMALISATION)
    kwargs = dict(mpp=1.0, patch_px=PATCH, normalisation=LPD_NORMALISATION)
    train(_config(max_iters=2), data, None, CLASSES, out_dir=tmp_path / "lpd", **kwargs)
    raw = yaml.safe_load((TINY.parent / "hisynseg_tiny_test.yaml").read_text())
    raw["hisynseg"].update(round2=True, n_mosaic=4, n_bezier=4)
    raw["hisynseg"]["filter"]["enabled"] = False
    raw["train"].update(max_iters=1)
    cfg = training_config_from_mapping(raw)
    train(cfg, data, None, CLASSES, out_dir=tmp_path / "hisynseg", **kwargs)
    assert calls == [("lpd", 1), ("hisynseg", 1), ("hisynseg", 2)]


def test_paper_config_warns_loudly_without_mit_weights(caplog: pytest.LogCaptureFixture) -> None:
    from wsi_lpd.train.registry import load_training_config

    paper = TINY.parent / "lpd_mit_b1.yaml"
    with caplog.at_level("WARNING"):
        cfg = load_training_config(paper)
    assert cfg.train.batch_size == 10 and cfg.loss is not None and cfg.loss.lambda_sim == 0.1
    assert any(
        r.levelname == "WARNING"
        and str(paper) in r.message
        and "model.encoder.weights" in r.message
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_training_config(TINY)  # mit_tiny is meant to start from random weights
    assert not caplog.records


def test_channels_last_is_a_typed_option_off_on_the_cpu() -> None:
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.train.engine import Optimisation

    assert _config().train.channels_last is False
    on = _config(channels_last=True)
    opt = Optimisation.create(torch.nn.Conv2d(3, 2, 1), on.train, torch.device("cpu"))
    assert not opt.channels_last and not opt.use_amp  # both are CUDA-only
    with pytest.raises(ConfigError, match=r"train\.channels_last: "):
        _config(channels_last="yes")
