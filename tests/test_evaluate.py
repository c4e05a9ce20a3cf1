"""`wsi-lpd evaluate`: mosaics vs label masks / GeoJSON (mode A), a model on patches (mode B)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import box
from torch import nn
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.cli.app import app
from wsi_lpd.formats.geojson import feature, write_feature_collection_into
from wsi_lpd.formats.mosaic import write_mosaic
from wsi_lpd.formats.patch_store import PatchStoreWriter
from wsi_lpd.networks.build import register_model
from wsi_lpd.networks.checkpoint import save_checkpoint

PX = 8
METHOD = "test-red"
NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["evaluate", *(str(a) for a in args)])
    return result.exit_code, result.output


class RedModel(nn.Module):
    """Predicts TUM where the normalised red channel is > 0, background elsewhere (half size)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        red = images[:, :1, ::2, ::2] * self.scale
        scores = torch.zeros(images.shape[0], self.num_classes + 1, *red.shape[-2:])
        tum = (red[:, 0] > 0).float()
        if image_labels is not None:
            tum = tum * image_labels[:, 0, None, None]
        scores[:, 0] = tum
        scores[:, -1] = 1 - tum
        return scores


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    register_model(METHOD, lambda cfg, classes: RedModel(classes.num_foreground))
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        RedModel(4),
        method=METHOD,
        classes=BCSS_CLASSES,
        mpp=1.0,
        patch_px=PX,
        normalisation=NORM,
        model_config={},
    )
    return path


def _patch(red_columns: int) -> np.ndarray:
    image = np.zeros((PX, PX, 3), dtype=np.uint8)
    image[:, :red_columns, 0] = 255
    return image


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """Slide a: red left half, truth TUM top-left quarter + STR bottom-left + BACK right (labels
    TUM, STR). Slide b: red everywhere but labelled negative, truth all BACK."""
    path = tmp_path / "store.zarr"
    with PatchStoreWriter(path, BCSS_CLASSES, 1.0, PX, with_masks=True) as w:
        a, b = w.add_slide("a"), w.add_slide("b")
        mask = np.full((PX, PX), 4, dtype=np.uint8)
        mask[:4, :4] = 0
        mask[4:, :4] = 1
        w.append(_patch(4), np.array([1, 1, 0, 0]), (0, 0), a, mask)
        w.append(_patch(8), np.zeros(4), (8, 0), b, np.full((PX, PX), 4, dtype=np.uint8))
    return path


def test_mode_b_patch_store_given_labels(tmp_path: Path, model_path: Path, store: Path) -> None:
    code, output = _run(
        "--model", model_path, "--patches", store, "--out", tmp_path / "ev", "--batch-size", "1"
    )
    assert code == 0, output
    assert "mIoU" in output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["mode"] == "model" and metrics["protocol"] == "lpd"
    pooled = metrics["pooled"]
    # Slide a: TUM predicted on 32 px (16 TUM, 16 STR); slide b: labels given → all background.
    assert pooled["per_class"]["TUM"]["iou"] == pytest.approx(16 / 32)
    assert pooled["per_class"]["STR"]["iou"] == pytest.approx(0.0)
    assert pooled["per_class"]["LYM"]["iou"] is None
    assert pooled["per_class"]["BACK"]["iou"] == pytest.approx(1.0)
    assert pooled["miou"] == pytest.approx(0.25)  # mean of TUM, STR only
    assert set(metrics["per_slide"]) == {"a", "b"}
    assert metrics["per_slide"]["b"]["per_class"]["BACK"]["iou"] == pytest.approx(1.0)
    assert np.asarray(pooled["confusion_matrix"]).sum() == 2 * PX * PX
    assert (tmp_path / "ev" / "metrics.md").read_text().count("| **mIoU** |") == 3
    assert (tmp_path / "ev" / "run.json").is_file()


def test_mode_b_predicted_labels_and_wsss_protocol(
    tmp_path: Path, model_path: Path, store: Path
) -> None:
    code, output = _run(
        "--model",
        model_path,
        "--patches",
        store,
        "--out",
        tmp_path / "ev",
        "--label-mode",
        "predicted",
        "--protocol",
        "wsss-tissue",
    )
    assert code == 0, output
    pooled = json.loads((tmp_path / "ev" / "metrics.json").read_text())["pooled"]
    # GT background dropped: slide b's red patch no longer costs anything.
    assert "BACK" not in pooled["per_class"]
    assert pooled["per_class"]["TUM"]["iou"] == pytest.approx(16 / 32)
    assert pooled["pixels"] == 32


def test_mode_b_bcss_dir(tmp_path: Path, model_path: Path) -> None:
    root = tmp_path / "bcss"
    (root / "test" / "img").mkdir(parents=True)
    (root / "test" / "mask").mkdir(parents=True)
    Image.fromarray(_patch(PX)).save(root / "test" / "img" / "x.png")
    mask = Image.fromarray(np.zeros((PX, PX), dtype=np.uint8), mode="P")
    mask.putpalette([255, 0, 0] * 256)
    mask.save(root / "test" / "mask" / "x.png")
    code, output = _run("--model", model_path, "--bcss-dir", root, "--out", tmp_path / "ev")
    assert code == 0, output
    pooled = json.loads((tmp_path / "ev" / "metrics.json").read_text())["pooled"]
    assert pooled["per_class"]["TUM"]["iou"] == pytest.approx(1.0)


def test_mode_b_class_mismatch(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "other.zarr"
    with PatchStoreWriter(path, ClassList.from_names(["A", "B"]), 1.0, PX, with_masks=True) as w:
        w.append(_patch(4), np.array([1, 0]), (0, 0), w.add_slide("s"), np.zeros((PX, PX)))
    code, output = _run("--model", model_path, "--patches", path, "--out", tmp_path / "ev")
    assert code == 1
    assert "wsi-lpd evaluate: error:" in output and "differ from" in output
    assert not (tmp_path / "ev" / "metrics.json").exists()


def _mosaic(
    path: Path,
    classes: ClassList = BCSS_CLASSES,
    bounds: tuple[int, int, int, int] | None = None,
) -> Path:
    """16×16 mosaic at 2 µm/px of a 0.5 µm/px slide (4 level-0 px per px): left TUM, right STR."""
    probs = np.zeros((len(classes.all), 16, 16), dtype=np.uint8)
    probs[0, :, :8] = 255
    probs[1, :, 8:] = 255
    return write_mosaic(
        path,
        probs,
        classes=classes,
        mpp=2.0,
        slide_mpp=0.5,
        level0_width=64,
        level0_height=64,
        slide_id=path.name.split(".")[0],
        bounds=bounds,
    )


def test_mode_a_mosaic_vs_label_mask(tmp_path: Path) -> None:
    from wsi_lpd.formats.labelmask import write_label_mask_into

    mosaic = _mosaic(tmp_path / "s1.ome.zarr")
    truth = np.zeros((4, 4), dtype=np.uint8)  # 8 µm/px: 16 level-0 px per px
    truth[:2, 2:] = 1
    truth[2:, 2:] = 4
    write_label_mask_into(tmp_path / "s1.mask.tiff", truth, 8.0, BCSS_CLASSES)
    code, output = _run(
        "--pred", mosaic, "--truth", tmp_path / "s1.mask.tiff", "--out", tmp_path / "ev"
    )
    assert code == 0, output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    pooled = metrics["pooled"]
    assert pooled["per_class"]["TUM"]["iou"] == pytest.approx(1.0)
    assert pooled["per_class"]["STR"]["iou"] == pytest.approx(0.5)  # STR predicted on BACK
    assert pooled["per_class"]["BACK"]["iou"] == pytest.approx(0.0)
    assert pooled["miou"] == pytest.approx(0.75)
    assert pooled["fwiou"] == pytest.approx(8 / 16 + 4 / 16 * 0.5)
    assert list(metrics["per_slide"]) == ["s1"]

    code, output = _run(
        "--pred",
        mosaic,
        "--truth",
        tmp_path / "s1.mask.tiff",
        "--out",
        tmp_path / "ev2",
        "--protocol",
        "wsss-tissue",
    )
    assert code == 0, output
    pooled = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["pooled"]
    assert pooled["miou"] == pytest.approx(1.0)


def test_mode_a_mismatched_classes(tmp_path: Path) -> None:
    from wsi_lpd.formats.labelmask import write_label_mask_into

    mosaic = _mosaic(tmp_path / "s1.ome.zarr")
    other = ClassList.from_names(["TE", "NEC", "LYM", "TAS"])
    write_label_mask_into(tmp_path / "m.tiff", np.zeros((4, 4), dtype=np.uint8), 8.0, other)
    code, output = _run("--pred", mosaic, "--truth", tmp_path / "m.tiff", "--out", tmp_path)
    assert code == 1
    assert output.count("\n") == 1 and "m.tiff: classes" in output


def test_mode_a_mosaic_vs_geojson(tmp_path: Path) -> None:
    mosaic = _mosaic(tmp_path / "s2.ome.zarr")
    gj = tmp_path / "s2.geojson"
    write_feature_collection_into(
        gj,
        [
            # Mosaic pixel centres lie at level-0 (4j + 2, 4i + 2); the NEC box's left edge
            # passes through the centres of column 12.
            feature(box(1, 1, 15, 63), "TUM", (200, 0, 0)),  # mosaic columns 0-3: TUM, correct
            feature(box(50, 1, 63, 31), "NEC", (128, 0, 128)),  # columns 12-15, rows 0-7: STR
        ],
    )
    code, output = _run("--pred", mosaic, "--truth", gj, "--out", tmp_path / "ev")
    assert code == 0, output
    pooled = json.loads((tmp_path / "ev" / "metrics.json").read_text())["pooled"]
    assert pooled["pixels"] == 4 * 16 + 4 * 8  # unannotated pixels are not evaluated
    assert pooled["per_class"]["TUM"]["iou"] == pytest.approx(1.0)
    assert pooled["per_class"]["NEC"]["iou"] == pytest.approx(0.0)
    assert pooled["per_class"]["STR"]["iou"] == pytest.approx(0.0)


def test_mode_a_geojson_of_a_cropped_slide_is_shifted_by_its_bounds(tmp_path: Path) -> None:
    """QuPath shows a slide cropped at x = 32 from there: its box at x 1-15 is the STR half."""
    mosaic = _mosaic(tmp_path / "s3.ome.zarr", bounds=(32, 0, 32, 64))
    gj = tmp_path / "s3.geojson"
    write_feature_collection_into(gj, [feature(box(1, 1, 15, 63), "STR", (0, 200, 0))])
    code, output = _run("--pred", mosaic, "--truth", gj, "--out", tmp_path / "ev")
    assert code == 0, output
    pooled = json.loads((tmp_path / "ev" / "metrics.json").read_text())["pooled"]
    assert pooled["pixels"] == 4 * 16
    assert pooled["per_class"]["STR"]["iou"] == pytest.approx(1.0)


def test_usage_errors(tmp_path: Path) -> None:
    code, output = _run("--out", tmp_path)
    assert code == 1 and "either --pred" in output
    code, output = _run("--pred", tmp_path / "a", "--out", tmp_path, "--protocol", "voc")
    assert code == 1 and "evaluate.protocol" in output


def test_mode_b_real_lpd_model_smoke(tmp_path: Path) -> None:
    """A tiny random-init LPD model: low-resolution output is upsampled to the mask size."""
    from wsi_lpd.networks.build import build_model

    config = {
        "encoder": {"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1], "weights": None},
        "head": {"prototypes_per_class": 2, "prototype_dim": 32},
        "predict": {"tta": False},
    }
    torch.manual_seed(0)
    model = build_model("lpd", config, BCSS_CLASSES)
    path = save_checkpoint(
        tmp_path / "lpd.pt",
        model,
        method="lpd",
        classes=BCSS_CLASSES,
        mpp=1.0,
        patch_px=32,
        normalisation=NORM,
        model_config=config,
    )
    store = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(store, BCSS_CLASSES, 1.0, 32, with_masks=True) as w:
        s = w.add_slide("s")
        for _ in range(3):
            image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            w.append(image, np.array([1, 0, 1, 0]), (0, 0), s, rng.integers(0, 5, (32, 32)))
    for mode in ("given", "predicted"):
        code, output = _run(
            "--model", path, "--patches", store, "--out", tmp_path / mode, "--label-mode", mode
        )
        assert code == 0, output
        pooled = json.loads((tmp_path / mode / "metrics.json").read_text())["pooled"]
        assert pooled["pixels"] == 3 * 32 * 32
        assert 0.0 <= pooled["miou"] <= 1.0


@pytest.mark.parametrize(("truth_scale", "mosaic_scale"), [(4.0, 2.0), (2.0, 4.0), (3.0, 2.0)])
def test_parallel_bands_equal_the_serial_confusion(
    monkeypatch: pytest.MonkeyPatch, truth_scale: float, mosaic_scale: float
) -> None:
    from wsi_lpd.evaluate import evaluation
    from wsi_lpd.evaluate.metrics import mosaic_confusion_vs_annotations, mosaic_confusion_vs_mask

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (90, 70), dtype=np.uint8)
    truth = rng.integers(0, 5, (int(90 * mosaic_scale / truth_scale) + 3, 50), dtype=np.uint8)
    monkeypatch.setattr(evaluation, "BAND_PIXELS", 700)  # many small bands
    serial = mosaic_confusion_vs_mask(labels, mosaic_scale, truth, truth_scale, 5, 4)
    banded = evaluation.confusion_vs_mask(labels, mosaic_scale, truth, truth_scale, 5, 4, workers=3)
    # integer pixel counts: exact whatever the band split and worker order
    assert np.array_equal(serial, banded) and serial.sum() == truth.size

    geoms = [box(10, 20, 100, 300), None, box(50, 150, 130, 170), None, None]
    serial = mosaic_confusion_vs_annotations(labels, mosaic_scale, geoms, 5, rows_per_block=8)
    banded = evaluation.confusion_vs_annotations(
        labels, mosaic_scale, geoms, 5, workers=3, rows_per_block=8
    )
    assert np.array_equal(serial, banded) and serial.sum() > 0
