"""model.pt contract: build_model validation, save/load round trip, typed errors, checksum."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.networks.build import build_model
from wsi_lpd.networks.checkpoint import (
    FORMAT,
    checkpoint_sha256,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

NORM = {"mean": [0.706, 0.478, 0.668], "std": [0.198, 0.226, 0.174]}


def _config(k: int = 2) -> dict:
    return {
        "encoder": {"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1], "weights": None},
        "head": {"prototypes_per_class": k, "prototype_dim": 32},
        "predict": {"tta": False, "bg_power": 10.0},
    }


def _save(path: Path, method: str = "lpd", config: dict | None = None, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    config = config or _config(1 if method == "cam" else 2)
    model = build_model(method, config, BCSS_CLASSES)
    stored = copy.deepcopy(config)
    stored["encoder"]["weights"] = "/nonexistent/mit_tiny.pth"  # must not be loaded on rebuild
    save_checkpoint(
        path,
        model,
        method=method,
        classes=BCSS_CLASSES,
        mpp=1.0,
        patch_px=64,
        normalisation=NORM,
        model_config=stored,
        predict_config=kw.get("predict_config"),
        training={"iterations": 3, "best": {"miou": 0.5}, "stage_weights": (0, 1), "out": path},
    )
    return model


@pytest.mark.parametrize("method", ["lpd", "cam", "pbip"])
def test_round_trip_identical_predictions(tmp_path: Path, method: str) -> None:
    path = tmp_path / "model.pt"
    model = _save(path, method).eval()
    if method == "pbip":
        bank = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
        model.set_prototype_bank(bank)
        _resave(path, model, method)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loaded, contract = load_model(path)
    assert not loaded.training
    # The round trip itself is lossless: every stored tensor comes back bit for bit.
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    # Predictions of the two module instances: float32 tolerance, not bitwise — the BLAS may pick
    # another kernel or thread split for another buffer (alignment, MKL dynamic threading).
    torch.testing.assert_close(loaded.predict(images), model.predict(images))
    assert contract["format"] == FORMAT and contract["method"] == method
    assert ClassList.from_dict(contract["classes"]) == BCSS_CLASSES
    assert contract["training"]["stage_weights"] == [0, 1]
    assert contract["training"]["out"] == str(path)
    assert contract["model_config"]["encoder"]["weights"] == "/nonexistent/mit_tiny.pth"
    assert "state_dict" not in contract
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) >= {"format", "normalisation", "predict", "state_dict", "mpp", "patch_px"}
    if method == "pbip":
        torch.testing.assert_close(loaded.prototypes, bank)


def _resave(path: Path, model: torch.nn.Module, method: str) -> None:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    save_checkpoint(
        path,
        model,
        method=method,
        classes=raw["classes"],  # the dict form is accepted too
        mpp=raw["mpp"],
        patch_px=raw["patch_px"],
        normalisation=raw["normalisation"],
        model_config=raw["model_config"],
        predict_config=raw["predict"],
        training=raw["training"],
    )


def test_predict_settings_travel_with_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path, predict_config={"mask_absent": "none", "bg_power": 2.0})
    loaded, contract = load_model(path)
    assert contract["predict"] == {"mask_absent": "none", "bg_power": 2.0}
    assert loaded.predict_config["bg_power"] == 2.0
    assert loaded.predict_config["normalisation"] == NORM


def test_other_classes_or_architecture_raise(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    other = ClassList.from_names(["TUM", "STR", "LYM"])
    with pytest.raises(CheckpointError, match="classes"):
        load_model(path, expected_classes=other)
    with pytest.raises(CheckpointError, match="method"):
        load_model(path, expected_method="pbip")

    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["model_config"]["head"]["prototypes_per_class"] = 3  # another architecture
    torch.save(raw, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match=r"arch\.pt.*shape"):
        load_model(tmp_path / "arch.pt")

    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["classes"] = other.to_dict()  # 3 classes vs 4·K prototype rows
    torch.save(raw, tmp_path / "classes.pt")
    with pytest.raises(CheckpointError, match=r"classes\.pt"):
        load_model(tmp_path / "classes.pt")

    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["state_dict"].pop("logit_scales")
    torch.save(raw, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "missing.pt")


def test_broken_files_raise(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a wsi-lpd model"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_atomic_write_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    _save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    digest = checkpoint_sha256(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError):
        checkpoint_sha256(tmp_path / "absent.pt")


def test_save_rejects_non_plain_values(tmp_path: Path) -> None:
    model = build_model("lpd", _config(), BCSS_CLASSES)
    with pytest.raises(ConfigError, match=r"training\.when"):
        save_checkpoint(
            tmp_path / "m.pt",
            model,
            method="lpd",
            classes=BCSS_CLASSES,
            mpp=1.0,
            patch_px=64,
            normalisation=NORM,
            model_config=_config(),
            predict_config=None,
            training={"when": object()},
        )
    assert not (tmp_path / "m.pt").exists()


def test_build_model_validates_config() -> None:
    with pytest.raises(ConfigError, match=r"model\.head\.prototype_dims"):
        build_model("lpd", {**_config(), "head": {"prototype_dims": 8}}, BCSS_CLASSES)
    with pytest.raises(ConfigError, match=r"model\.encoder"):
        build_model("lpd", {"head": {}}, BCSS_CLASSES)
    with pytest.raises(ConfigError, match=r"model\.head\.prototypes_per_class"):
        build_model("cam", _config(2), BCSS_CLASSES)
    with pytest.raises(ConfigError, match="method"):
        build_model("unet", _config(), BCSS_CLASSES)
    with pytest.raises(ConfigError, match=r"model\.predict\.mask_absent"):
        build_model("lpd", {**_config(), "predict": {"mask_absent": "gt"}}, BCSS_CLASSES)
    with pytest.raises(ConfigError, match=r"model\.head\.prototype_dim"):
        build_model("lpd", {**_config(), "head": {"prototype_dim": 1.5}}, BCSS_CLASSES)
    pbip = build_model("pbip", _config(), BCSS_CLASSES)
    assert pbip.prototypes.shape == (8, 32) and not pbip.normalise_prototypes


class _RunsCode:
    def __reduce__(self):  # a pickle that would call print() when loaded without weights_only
        return (print, ("loaded",))


def test_pickled_objects_are_refused_as_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds pickled Python objects"):
        read_checkpoint(path)


def test_stain_reference_round_trip_and_old_checkpoints(tmp_path: Path) -> None:
    """The training patches' stain statistics travel in model.pt; a checkpoint without them
    (written before they existed) still loads and reports none."""
    import numpy as np

    from wsi_lpd.data.stain import stain_statistics
    from wsi_lpd.infer.stain import stain_reference

    rng = np.random.default_rng(0)
    stats = stain_statistics(rng.integers(60, 230, (32, 32, 3), dtype=np.uint8))
    model = build_model("lpd", _config(), BCSS_CLASSES)
    common = dict(method="lpd", classes=BCSS_CLASSES, mpp=1.0, patch_px=64, normalisation=NORM,
                  model_config=_config())  # fmt: skip
    save_checkpoint(tmp_path / "new.pt", model, stain_reference=stats, **common)
    _, contract = load_model(tmp_path / "new.pt")
    assert stain_reference(contract) == stats
    save_checkpoint(tmp_path / "old.pt", model, **common)
    _, contract = load_model(tmp_path / "old.pt")
    assert "stain_reference" not in contract and stain_reference(contract) is None
    bad = {**stats, "reinhard": {"mean": [1.0, 2.0], "std": [1.0, 1.0, 1.0]}}
    with pytest.raises(CheckpointError, match=r"x\.pt: stain_reference: malformed"):
        stain_reference({"stain_reference": bad}, "x.pt")
