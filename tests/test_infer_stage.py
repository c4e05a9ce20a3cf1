"""Stage `wsi-lpd infer` with a real tiny LPD checkpoint, through a local typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from shapely.geometry import box
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.cli.app import app as cli_app
from wsi_lpd.data.stain import stain_statistics
from wsi_lpd.errors import NoTissueWarning
from wsi_lpd.formats.mosaic import open_mosaic
from wsi_lpd.networks.build import build_model
from wsi_lpd.networks.checkpoint import checkpoint_sha256, save_checkpoint
from wsi_lpd.slide.tissue import write_tissue_geojson_into

MODEL_CONFIG = {
    "encoder": {"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1], "weights": None},
    "head": {"prototypes_per_class": 2, "prototype_dim": 32},
    "predict": {"tta": False, "bg_power": 10.0},
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage")
    torch.manual_seed(0)
    model = build_model("lpd", MODEL_CONFIG, BCSS_CLASSES)
    rng = np.random.default_rng(0)
    rgb = np.full((768, 1024, 3), 245, np.uint8)
    tissue = rng.integers(0, 60, (400, 560, 3), dtype=np.uint8) + np.array([170, 60, 150], np.uint8)
    common = dict(
        method="lpd",
        classes=BCSS_CLASSES,
        mpp=1.0,
        patch_px=64,
        normalisation={"mean": [0.7, 0.5, 0.7], "std": [0.2, 0.2, 0.2]},
        model_config=MODEL_CONFIG,
    )
    ckpt = save_checkpoint(
        root / "model.pt", model, stain_reference=stain_statistics(tissue), **common
    )
    old = save_checkpoint(root / "old.pt", model, **common)  # written before stain statistics
    rgb[200:600, 300:860] = tissue  # pink "tissue" block, level-0 x 300-860, y 200-600
    slide = root / "s1.tiff"
    tifffile.imwrite(
        slide,
        rgb,
        tile=(256, 256),
        compression="zlib",
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )  # 0.5 µm/px
    tiles = root / "tiles"
    tiles.mkdir()
    write_tissue_geojson_into(tiles / "tissue.geojson", box(300, 200, 860, 600))
    return {"root": root, "model": ckpt, "old_model": old, "slide": slide, "tiles": tiles}


def _run(*args: str) -> object:
    return CliRunner().invoke(cli_app, ["infer", *[str(a) for a in args]])


def test_stage_writes_mosaic_and_run_json(files: dict[str, Path]) -> None:
    out = files["root"] / "out"
    cfg = files["root"] / "cfg.yaml"
    cfg.write_text("infer:\n  overlap: 0.5\n  blend: cosine\n  workers: 0\n")
    res = _run(
        files["slide"],
        "--model",
        files["model"],
        "--out",
        out,
        "--tiles",
        files["tiles"],
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--blend",
        "gaussian",
        "--config",
        cfg,
    )
    assert res.exit_code == 0, res.output
    m = open_mosaic(out / "s1.ome.zarr")
    assert m.classes == BCSS_CLASSES and m.mpp == 1.0 and m.level0_per_px == 2.0
    assert m.probs.shape == (5, 384, 512)
    assert m.attrs["model_sha256"] == checkpoint_sha256(files["model"])
    assert m.attrs["slide_id"] == "s1" and m.attrs["parameters"]["blend"] == "gaussian"
    probs, labels = m.probs[:].astype(int), m.labels[:]
    near = np.zeros((384, 512), bool)
    near[99:301, 149:431] = True  # tissue box / 2, ± 1 px for edge rounding of the raster
    assert (labels[~near] == 4).all() and (probs[4, ~near] == 255).all()
    assert (probs[4, 101:299, 151:429] < 255).mean() > 0.9
    assert np.abs(probs.sum(0) - 255).max() <= 3
    run = json.loads((out / "s1.run.json").read_text())
    assert run["stage"] == "infer" and run["parameters"]["overlap"] == 0.5
    assert run["parameters"]["blend"] == "gaussian" and run["parameters"]["workers"] == 0
    assert run["throughput_windows_per_s"] > 0 and run["peak_rss_mib"] > 0
    assert run["inputs"]["model_sha256"] == m.attrs["model_sha256"]
    assert run["parameters"]["tissue"].endswith("tissue.geojson")
    assert 0 < run["result"]["windows"] < run["result"]["windows_total"]
    assert sorted(p.name for p in out.iterdir()) == ["s1.ome.zarr", "s1.run.json"]


def test_stage_detects_tissue_without_tiles(files: dict[str, Path]) -> None:
    out = files["root"] / "out2"
    res = _run(
        files["slide"],
        "--model",
        files["model"],
        "--out",
        out,
        "--slide-id",
        "abc",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-mpp",
        "2.0",
    )
    assert res.exit_code == 0, res.output
    m = open_mosaic(out / "abc.ome.zarr")
    assert m.probs.shape == (5, 192, 256) and m.level0_per_px == 4.0
    back = m.probs[4]
    assert (back[:40] == 255).all() and (back[160:] == 255).all()  # white margins: background
    assert (back[60:140, 90:200] < 255).mean() > 0.9  # detected tissue was predicted
    run = json.loads((out / "abc.run.json").read_text())
    assert run["parameters"]["tissue"] == "detected"


def test_tissue_detection_without_tiles_uses_the_configs_tile_settings(
    files: dict[str, Path],
) -> None:
    """The workflow YAML's ``tile:`` tissue settings drive detection: a saturation floor no pixel
    reaches finds no tissue, so no window is predicted (the defaults find the pink block)."""
    out = files["root"] / "out3"
    cfg = files["root"] / "tile_floor.yaml"
    cfg.write_text("tile:\n  saturation_floor: 1.0\n")
    args = ["--model", files["model"], "--workers", "0", "--device", "cpu", "--output-mpp", "2.0"]
    with pytest.warns(NoTissueWarning, match="no window touches tissue"):
        res = _run(files["slide"], *args, "--out", out, "--config", cfg)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "s1.run.json").read_text())
    assert run["result"]["windows"] == 0 and run["parameters"]["tissue"] == "detected"
    assert (open_mosaic(out / "s1.ome.zarr").probs[4][:] == 255).all()
    assert len(run["inputs"]["slide_sha256_first_mib"]) == 64


def test_stage_errors_are_one_line(files: dict[str, Path]) -> None:
    out = files["root"] / "bad"
    res = _run(
        files["slide"],
        "--model",
        files["root"] / "missing.pt",
        "--out",
        out,
        "--tiles",
        files["tiles"],
    )
    assert res.exit_code == 1 and "missing.pt" in res.output
    res = _run(
        files["slide"],
        "--model",
        files["model"],
        "--out",
        out,
        "--tiles",
        files["tiles"],
        "--slide-mpp",
        "2.0",
        "--device",
        "cpu",
    )
    assert res.exit_code == 1 and "finer than the slide" in res.output
    cfg = files["root"] / "bad.yaml"
    cfg.write_text("infer:\n  overlapp: 0.5\n")
    res = _run(files["slide"], "--model", files["model"], "--out", out, "--config", cfg)
    assert res.exit_code == 1 and "overlapp" in res.output
    assert not out.exists() or not any(out.glob("*.ome.zarr"))


def test_config_classes_must_match_the_checkpoint(files: dict[str, Path]) -> None:
    out = files["root"] / "classes"
    cfg = files["root"] / "classes.yaml"
    cfg.write_text(
        "classes:\n  foreground:\n"
        + "".join(f"    - {{name: {n}, color: [1, 2, 3]}}\n" for n in ("TUM", "LYM", "STR", "NEC"))
        + "  background: {name: BACK, color: [255, 255, 255]}\ninfer: {workers: 0, device: cpu}\n"
    )
    res = _run(files["slide"], "--model", files["model"], "--out", out, "--config", cfg)
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]  # model loading may log before it
    assert "model.pt" in line and "classes.yaml" in line
    assert "TUM, STR, LYM, NEC, BACK" in line and "names and order" in line
    assert not out.exists() or not any(out.iterdir())


def test_mosaic_records_absolute_slide_path(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files["root"])
    res = _run(
        "s1.tiff",
        "--model",
        "model.pt",
        "--out",
        "rel",
        "--tiles",
        "tiles",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-mpp",
        "4.0",
    )
    assert res.exit_code == 0, res.output
    m = open_mosaic(files["root"] / "rel" / "s1.ome.zarr")
    assert m.attrs["slide_path"] == str((files["root"] / "s1.tiff").resolve())
    assert Path(m.attrs["slide_path"]).is_absolute()


def test_mistyped_config_value_is_one_line(files: dict[str, Path]) -> None:
    cfg = files["root"] / "typed.yaml"
    cfg.write_text("infer:\n  batch_size: abc\n  overlap: '0.5'\n")
    res = _run(
        files["slide"], "--model", files["model"], "--out", files["root"] / "t", "--config", cfg
    )
    assert res.exit_code == 1
    assert "typed.yaml: infer.batch_size: Input should be a valid integer" in res.output


def test_old_checkpoint_without_stain_statistics(files: dict[str, Path]) -> None:
    """A model.pt from before stain statistics loads: auto (the default) infers without
    normalisation, reinhard says what to do, none and a reference slide work."""
    common = ("--model", files["old_model"], "--tiles", files["tiles"], "--device", "cpu")
    out = files["root"] / "old"
    res = _run(files["slide"], *common, "--out", out, "--workers", "0")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "s1.run.json").read_text())
    assert run["parameters"]["stain_normalise"] == "none"
    res = _run(files["slide"], *common, "--out", out, "--stain-normalise", "reinhard")
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert "old.pt" in line and "no stain statistics" in line and "stain_reference_slide" in line
    res = _run(files["slide"], *common, "--out", out, "--stain-normalise", "none")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "s1.run.json").read_text())
    assert run["parameters"]["stain_normalise"] == "none"
    res = _run(files["slide"], *common, "--out", out, "--stain-reference-slide", files["slide"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "s1.run.json").read_text())
    assert run["parameters"]["stain_normalise"] == "reinhard"
