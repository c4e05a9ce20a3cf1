"""`wsi-lpd export`: mosaic → QuPath GeoJSON + overlay PNG + run metadata; bounded memory."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.cli.app import app as cli_app
from wsi_lpd.formats.geojson import read_annotations
from wsi_lpd.formats.mosaic import MosaicWriter, write_mosaic

BG = BCSS_CLASSES.background_index
SCALE = 4.0  # level-0 px per mosaic px (mpp 2.0 / slide mpp 0.5)


def scene(height: int = 260, width: int = 300) -> np.ndarray:
    """Classes with holes, touching classes and shapes crossing 64-px block seams."""
    yy, xx = np.mgrid[0:height, 0:width]
    lab = np.full((height, width), BG, dtype=np.uint8)
    r = np.hypot(yy - 110, xx - 120)
    lab[r < 80] = 0
    lab[r < 40] = BG
    lab[r < 24] = 3
    lab[(yy > 60) & (yy < 150) & (xx >= 200) & (xx < 280)] = 1
    blob = ((yy - 200) / 40.0) ** 2 + ((xx - 150) / 110.0) ** 2 < 1
    lab[blob & (lab == BG)] = 2
    return lab


def one_hot_probs(lab: np.ndarray, value: int = 200) -> np.ndarray:
    """(C+1, Y, X) uint8: ``value`` on the pixel's class, the rest shared by the others."""
    probs = np.full((BG + 1, *lab.shape), (255 - value) // BG, dtype=np.uint8)
    np.put_along_axis(probs, lab[None].astype(np.int64), value, axis=0)
    return probs


def make_mosaic(path: Path, lab: np.ndarray, bounds=None) -> Path:
    h, w = lab.shape
    return write_mosaic(
        path,
        one_hot_probs(lab),
        classes=BCSS_CLASSES,
        mpp=2.0,
        slide_mpp=0.5,
        level0_width=int(w * SCALE),
        level0_height=int(h * SCALE),
        slide_id="s1",
        slide_path="/nonexistent/s1.svs",
        bounds=bounds,
        model_sha256="ab" * 32,
    )


def invoke(*args: object):
    """Run the stage through the real CLI; restore the root log handlers afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(cli_app, ["export", *[str(a) for a in args]])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    lab = scene()
    path = make_mosaic(
        tmp_path_factory.mktemp("m") / "s1.ome.zarr", lab, bounds=(40, 80, 1000, 900)
    )
    return path, lab


def rasterise(geom, shape) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return shapely.contains_xy(geom, xx * SCALE, yy * SCALE)


def test_export_writes_geojson_overlay_and_metadata(mosaic, tmp_path) -> None:
    path, lab = mosaic
    out = tmp_path / "out"
    res = invoke(path, "--out", out, "--min-area-um2", 0, "--block-px", 64)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "s1.export.json",
        "s1.geojson",
        "s1.overlay.png",
    ]  # nothing partial left behind
    feats = json.loads((out / "s1.geojson").read_text())["features"]
    meta = json.loads((out / "s1.export.json").read_text())
    assert meta["stage"] == "export" and meta["features"] == len(feats)
    assert meta["vertices"] == sum(
        len(shapely.get_coordinates(shapely.geometry.shape(f["geometry"]))) for f in feats
    )
    for f in feats:
        uuid.UUID(f["id"])
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["color"] == list(
            BCSS_CLASSES.all[BCSS_CLASSES.index(props["classification"]["name"])].color
        )
        assert props["measurements"]["Class probability (mean)"] == pytest.approx(200 / 255)
        assert props["measurements"]["Margin to runner-up (mean)"] == pytest.approx(187 / 255)
    fc = json.loads((out / "s1.geojson").read_text())["properties"]["wsi_lpd"]
    assert fc["model_sha256"] == "ab" * 32 and fc["mpp"] == 2.0 and fc["slide_mpp"] == 0.5
    assert fc["version"] and fc["run_date"].startswith("20") and fc["slide_id"] == "s1"
    assert meta["classes"]["TUM"]["mean_margin"] == pytest.approx(187 / 255, abs=1e-4)
    back = read_annotations(out / "s1.geojson")
    assert {a.class_name for a in back} == set(BCSS_CLASSES.foreground_names)  # no BACK
    for k, name in enumerate(BCSS_CLASSES.foreground_names):
        geom = shapely.union_all([a.geometry for a in back if a.class_name == name])
        pred, truth = rasterise(geom, lab.shape), lab == k
        assert (pred & truth).sum() / (pred | truth).sum() >= 0.99, name
        assert meta["classes"][name]["area_um2"] == pytest.approx(geom.area * 0.25, rel=1e-6)
        assert meta["classes"][name]["area_um2"] == pytest.approx(truth.sum() * 4.0, rel=0.02)
    overlay = Image.open(out / "s1.overlay.png")
    assert overlay.height == 1040 and overlay.width > 1200  # thumbnail 1200x1040 + legend
    thumb = np.asarray(overlay.convert("RGB"))[:1040, :1200].astype(int)
    tum_px = thumb[int(110 * SCALE) - 2, int(60 * SCALE)]  # inside the TUM ring, white slide
    assert tum_px[0] > tum_px[1] + 40  # tinted red


def test_overlay_draws_on_the_slide_thumbnail(mosaic, tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    path, lab = mosaic
    slide = tmp_path / "s1.tif"
    pixels = np.zeros((lab.shape[0] * 4, lab.shape[1] * 4, 3), dtype=np.uint8)
    pixels[..., 1] = 180  # a green slide, 0.5 µm/px, same size as the mosaic's level 0
    tifffile.imwrite(
        slide,
        pixels,
        tile=(256, 256),
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    res = invoke(path, "--out", out, "--slide", slide, "--block-px", 64)
    assert res.exit_code == 0, res.output
    thumb = np.asarray(Image.open(out / "s1.overlay.png").convert("RGB"))
    assert tuple(thumb[5, 5]) == (0, 180, 0)  # background: the slide itself
    assert thumb[int(110 * SCALE), int(60 * SCALE), 0] > 60  # TUM tints it red


def test_export_options_and_config(mosaic, tmp_path) -> None:
    path, _ = mosaic
    plain = tmp_path / "plain"
    assert invoke(path, "--out", plain, "--min-area-um2", 0, "--block-px", 64).exit_code == 0
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """
            export:
              min_area_um2: 0
              block_px: 64
              object_type: detection
              per_class: true
            """
        )
    )
    out = tmp_path / "opts"
    res = invoke(path, "--out", out, "--config", config, "--gzip", "--subtract-bounds")
    assert res.exit_code == 0, res.output
    assert (out / "s1.geojson.gz").is_file() and not (out / "s1.geojson").exists()
    back = read_annotations(out / "s1.geojson.gz")
    assert sorted(a.class_name for a in back) == sorted(BCSS_CLASSES.foreground_names)
    assert {a.properties["objectType"] for a in back} == {"detection"}
    ref = read_annotations(plain / "s1.geojson")
    for a in back:
        expected = shapely.union_all([r.geometry for r in ref if r.class_name == a.class_name])
        expected = shapely.clip_by_rect(expected, 40, 80, 1040, 980)  # OpenSlide bounds
        moved = shapely.transform(a.geometry, lambda c: c + np.array([40.0, 80.0]))
        assert shapely.symmetric_difference(moved, expected).area < 1e-6
    # a flag overrides the config
    res = invoke(path, "--out", tmp_path / "o2", "--config", config, "--object-type", "annotation")
    assert res.exit_code == 0, res.output
    types = {a.properties["objectType"] for a in read_annotations(tmp_path / "o2" / "s1.geojson")}
    assert types == {"annotation"}


def test_export_errors_are_one_line(tmp_path) -> None:
    res = invoke(tmp_path / "missing.ome.zarr", "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "missing.ome.zarr" in res.output and len(res.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  simplify: 3\n")
    res = invoke(tmp_path / "missing.ome.zarr", "--out", tmp_path / "o", "--config", bad)
    assert res.exit_code == 1 and "simplify" in res.output


MEMORY_CHILD = textwrap.dedent(
    """
    import sys, typer
    from pathlib import Path
    from typer.testing import CliRunner
    from wsi_lpd.cli.app import app
    r = CliRunner().invoke(app, ["export", sys.argv[1], "--out", sys.argv[2], "--block-px", "1024"])
    assert r.exit_code == 0, r.output
    # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    """
)


def _big_mosaic(path: Path, side_px: int) -> Path:
    """A side×side mosaic with two large shapes (few output polygons), written band by band."""
    writer = MosaicWriter(
        path,
        BCSS_CLASSES,
        height_px=side_px,
        width_px=side_px,
        mpp=2.0,
        slide_mpp=0.5,
        level0_width=side_px * 4,
        level0_height=side_px * 4,
        slide_id=f"m{side_px}",
        min_level_px=side_px,
    )
    with writer:
        band = 1024
        xx = np.arange(side_px)[None, :] + 0.5
        for y0 in range(0, side_px, band):
            yy = np.arange(y0, y0 + band)[:, None] + 0.5
            r = np.hypot(yy - side_px / 2, xx - side_px / 2) / side_px
            lab = np.full((band, side_px), BG, dtype=np.uint8)
            lab[r < 0.4] = 0
            lab[r < 0.2] = 1
            probs = np.zeros((BG + 1, band, side_px), dtype=np.uint8)
            probs[0] = 128
            writer.write_band(y0, probs, lab)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
def test_export_memory_does_not_grow_with_mosaic_size(tmp_path) -> None:
    peaks = []
    for side in (4096, 8192):
        mosaic_path = _big_mosaic(tmp_path / f"m{side}.ome.zarr", side)
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(mosaic_path), str(tmp_path / f"o{side}")],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(proc.stdout.split()[-1]) / 1024)  # kB → MiB
        meta = json.loads((tmp_path / f"o{side}" / f"m{side}.export.json").read_text())
        assert meta["features"] == 2
    # 8192² labels + probs are 320 MiB: reading them whole would more than double the peak
    assert peaks[1] < 1.3 * peaks[0], peaks


def _copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_export_refuses_a_store_with_a_missing_chunk(mosaic, tmp_path) -> None:
    path, _ = mosaic
    ok = invoke(path, "--out", tmp_path / "ok", "--workers", 1)
    assert ok.exit_code == 0, ok.output  # untouched store: exported
    data = _copy_store(path, tmp_path / "data" / "s1.ome.zarr")
    for chunk in (data / "0" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    res = invoke(data, "--out", tmp_path / "out1")
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert "data/s1.ome.zarr: chunk 0/c/0/0/0 is missing" in last
    assert not (tmp_path / "out1").exists()
    label = _copy_store(path, tmp_path / "label" / "s1.ome.zarr")
    (label / "labels/classes/0/c/0/0").unlink()
    res = invoke(label, "--out", tmp_path / "out2")
    assert res.exit_code == 1 and "chunk labels/classes/0/c/0/0 is missing" in res.output
    assert not (tmp_path / "out2").exists()


def test_min_probability_and_parallel_workers(tmp_path, monkeypatch) -> None:
    import wsi_lpd.export.vectorize

    monkeypatch.setattr(wsi_lpd.export.vectorize, "PARALLEL_MIN_PX", 0)  # small test raster
    lab = scene()
    probs = one_hot_probs(lab)
    probs[:, lab == 1] = np.array([20, 120, 20, 20, 95], np.uint8)[:, None]  # STR at 0.47
    path = write_mosaic(
        tmp_path / "s1.ome.zarr",
        probs,
        classes=BCSS_CLASSES,
        mpp=2.0,
        slide_mpp=0.5,
        level0_width=1200,
        level0_height=1040,
        slide_id="s1",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("export:\n  min_probability: {STR: 0.5}\n  min_area_um2: 0\n")
    res = invoke(path, "--out", tmp_path / "a", "--config", cfg, "--block-px", 64, "--workers", 1)
    assert res.exit_code == 0, res.output
    names = [a.class_name for a in read_annotations(tmp_path / "a" / "s1.geojson")]
    assert "STR" not in names and "TUM" in names
    meta = json.loads((tmp_path / "a" / "s1.export.json").read_text())
    assert meta["classes"]["STR"]["dropped_low_probability"] == 1
    res = invoke(
        path,
        "--out",
        tmp_path / "b",
        "--min-area-um2",
        0,
        "--block-px",
        64,
        "--workers",
        2,
        "--min-probability",
        "STR=0.4",
    )
    assert res.exit_code == 0, res.output
    two = read_annotations(tmp_path / "b" / "s1.geojson")
    one = invoke(
        path, "--out", tmp_path / "c", "--min-area-um2", 0, "--block-px", 64, "--workers", 1
    )
    assert one.exit_code == 0
    ref = read_annotations(tmp_path / "c" / "s1.geojson")
    assert sorted((a.class_name, round(a.geometry.area)) for a in two) == sorted(
        (a.class_name, round(a.geometry.area)) for a in ref
    )
    assert any(a.class_name == "STR" for a in two)
    bad = invoke(path, "--out", tmp_path / "d", "--min-probability", "XYZ=0.5")
    assert bad.exit_code == 1 and "XYZ" in bad.output
    bad = invoke(path, "--out", tmp_path / "d", "--min-probability", "STR=1.5")
    assert bad.exit_code == 1 and "min_probability" in bad.output


def test_invalid_geometry_is_refused_before_writing() -> None:
    from shapely.geometry import Polygon

    from wsi_lpd.errors import AnnotationError
    from wsi_lpd.formats.geojson import feature

    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    with pytest.raises(AnnotationError, match="TUM: invalid Polygon"):
        feature(bowtie, "TUM", (200, 0, 0))
    ok = feature(shapely.box(0, 0, 5, 5), "TUM", (200, 0, 0), measurements={"a": 1})
    assert ok.is_valid and ok["properties"]["measurements"] == {"a": 1.0}


def test_export_adds_the_tile_stages_artefacts(mosaic, tmp_path) -> None:
    from shapely.geometry import box

    from wsi_lpd.slide.artefacts import write_artefacts_geojson_into

    path, _ = mosaic
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    pen = shapely.MultiPolygon([box(100, 200, 300, 260)])
    write_artefacts_geojson_into(tiles / "artefacts.geojson", {"pen": pen}, 0.5)
    out = tmp_path / "out"
    res = invoke(path, "--out", out, "--tiles", tiles, "--subtract-bounds")
    assert res.exit_code == 0, res.output
    feats = json.loads((out / "s1.geojson").read_text())["features"]
    found = [f for f in feats if f["properties"]["classification"]["name"] == "Artefact: pen"]
    assert len(found) == 1 and found[0]["properties"]["classification"]["color"] == [230, 0, 230]
    # shifted by the bounds origin (40, 80) like the class polygons
    assert shapely.geometry.shape(found[0]["geometry"]).equals(box(60, 120, 260, 180))
    assert json.loads((out / "s1.export.json").read_text())["artefact_features"] == 1
    (tiles / "artefacts.geojson").unlink()  # tile output of an earlier version: nothing added
    assert invoke(path, "--out", out, "--tiles", tiles).exit_code == 0
    missing = invoke(path, "--out", out, "--tiles", tmp_path / "nope")
    assert missing.exit_code == 1 and "nope: tile folder not found" in missing.output
