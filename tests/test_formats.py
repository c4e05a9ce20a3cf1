"""Slides as labs send them: DICOM WSI (converted from the real SVS with wsidicomizer) and
OME-TIFF pyramids read like the SVS, tiled, inferred and exported; mpp sanity warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.cli.app import app
from wsi_lpd.errors import MissingMppError
from wsi_lpd.formats.mosaic import open_mosaic
from wsi_lpd.networks.build import build_model
from wsi_lpd.networks.checkpoint import save_checkpoint
from wsi_lpd.slide.reader import open_slide

MODEL_CONFIG = {
    "encoder": {"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1], "weights": None},
    "head": {"prototypes_per_class": 2, "prototype_dim": 32},
    "predict": {"tta": False, "bg_power": 10.0},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init LPD checkpoint at 2 µm/px (the run, not the accuracy, is tested)."""
    torch.manual_seed(0)
    net = build_model("lpd", MODEL_CONFIG, BCSS_CLASSES)
    return save_checkpoint(
        tmp_path_factory.mktemp("model") / "model.pt",
        net,
        method="lpd",
        classes=BCSS_CLASSES,
        mpp=2.0,
        patch_px=64,
        normalisation={"mean": [0.7, 0.5, 0.7], "std": [0.2, 0.2, 0.2]},
        model_config=MODEL_CONFIG,
    )


def _cli(*args: object) -> None:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output


def _tile_infer_export(slide: Path, model: Path, out: Path, slide_id: str) -> dict:
    """Run tile → infer → export on ``slide``; returns the tissue, mosaic labels and GeoJSON."""
    torch.set_num_threads(1)
    _cli("tile", slide, "--out", out / "tiles", "--slide-id", slide_id, "--tile-mpp", 2.0,
         "--patch-px", 64)  # fmt: skip
    _cli("infer", slide, "--model", model, "--out", out / "mosaics", "--slide-id", slide_id,
         "--tiles", out / "tiles", "--device", "cpu", "--workers", 0)  # fmt: skip
    mosaic = out / "mosaics" / f"{slide_id}.ome.zarr"
    _cli("export", mosaic, "--out", out / "geojson", "--slide", slide)
    tile_run = json.loads((out / "tiles" / "run.json").read_text())
    geo = json.loads((out / "geojson" / f"{slide_id}.geojson").read_text())
    return {
        "tissue_um2": tile_run["tissue_area_um2"],
        "labels": open_mosaic(mosaic).labels[:],
        "features": [
            (f["properties"]["classification"]["name"], f["geometry"]) for f in geo["features"]
        ],
    }


@pytest.fixture(scope="module")
def svs_run(cmu_slide_path: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run on the real SVS every other format is compared with."""
    return _tile_infer_export(cmu_slide_path, model, tmp_path_factory.mktemp("svs"), "cmu")


# --- DICOM WSI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cmu_dicom(cmu_slide_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CMU-1-Small-Region converted to DICOM WSI (VL Whole Slide Microscopy Image, TILED_FULL)
    by wsidicomizer; uncompressed frames so that pixels can be compared exactly."""
    from wsidicom.codec.settings import NumpySettings
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.sources import TiffSlideSource

    out = tmp_path_factory.mktemp("dicom")
    files = WsiDicomizer.convert(
        cmu_slide_path,
        out / "raw",
        preferred_source=TiffSlideSource,  # the opentile source needs the libturbojpeg library
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
        workers=1,
        encoding=NumpySettings(),  # explicit VR little endian: lossless
    )
    assert len(files) == 1  # one level: the SVS has one
    dest = out / "CMU-dicom.dcm"
    Path(files[0]).rename(dest)
    return dest


def test_dicom_conversion_of_the_svs_reads_like_the_svs(
    cmu_slide_path: Path, cmu_dicom: Path
) -> None:
    import pydicom

    ds = pydicom.dcmread(cmu_dicom, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image
    with open_slide(cmu_slide_path) as svs, open_slide(cmu_dicom) as dcm:
        assert (dcm.backend, dcm.vendor) == ("openslide", "dicom")
        assert dcm.mpp == svs.mpp == 0.499
        assert dcm.dimensions == svs.dimensions == (2220, 2967)
        a = svs.read_region((0, 0), svs.dimensions, svs.mpp)
        b = dcm.read_region((0, 0), dcm.dimensions, dcm.mpp)
        assert np.array_equal(a, b)  # same decoded JPEG tiles, stored losslessly
        assert np.array_equal(svs.thumbnail(4.0), dcm.thumbnail(4.0))


def test_dicom_tiles_infers_and_exports_like_the_svs(
    svs_run: dict, cmu_dicom: Path, model: Path, tmp_path: Path
) -> None:
    svs = svs_run
    dcm = _tile_infer_export(cmu_dicom, model, tmp_path / "dcm", "cmu")
    assert svs["tissue_um2"] == dcm["tissue_um2"] and svs["tissue_um2"] > 0
    assert np.array_equal(svs["labels"], dcm["labels"])
    assert svs["features"] == dcm["features"] and svs["features"]


# --- OME-TIFF --------------------------------------------------------------------------------


def _pyramid(rgb: np.ndarray) -> list[np.ndarray]:
    """Three levels 2× apart, each the exact rounded 2×2 mean of the one above."""
    levels = [rgb]
    for _ in range(2):  # 2220×2964 → 1110×1482 → 555×741
        h, w = levels[-1].shape[:2]
        blocks = levels[-1].reshape(h // 2, 2, w // 2, 2, 3).astype(np.uint16)
        levels.append(((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    return levels


def _write_pyramid(path: Path, levels: list[np.ndarray], mpp: float, ome: bool) -> None:
    """``ome``: OME-TIFF, SubIFD levels, PhysicalSizeX/Y in µm (as tifffile writes it); else a
    generic tiled TIFF, one page per level with CENTIMETER resolution tags (read by OpenSlide)."""
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    if ome:
        meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}  # fmt: skip
        with tifffile.TiffWriter(path, ome=True) as tw:
            tw.write(levels[0], subifds=len(levels) - 1, metadata=meta, **opts)
            for level in levels[1:]:
                tw.write(level, subfiletype=1, metadata=None, **opts)
        return
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            res = 1e4 / (mpp * 2**i)
            tw.write(level, subfiletype=1 if i else 0, resolution=(res, res),
                     resolutionunit="CENTIMETER", **opts)  # fmt: skip


def test_ome_tiff_pyramid_reads_tiles_infers_and_exports(
    cmu_slide_path: Path, model: Path, tmp_path: Path
) -> None:
    with open_slide(cmu_slide_path) as svs:
        rgb = svs.read_region((0, 0), svs.dimensions, svs.mpp)[:2964]  # sides multiples of 4
    levels = _pyramid(rgb)
    ome_path, tif_path = tmp_path / "cmu.ome.tiff", tmp_path / "cmu.tiff"
    _write_pyramid(ome_path, levels, 0.499, ome=True)
    _write_pyramid(tif_path, levels, 0.499, ome=False)
    with open_slide(ome_path) as ome, open_slide(tif_path) as tif:
        assert (ome.backend, ome.vendor, ome.mpp) == ("tifffile", "ome-tiff", 0.499)
        assert (tif.backend, tif.vendor) == ("openslide", "generic-tiff")
        assert ome.level_dimensions == tuple((lv.shape[1], lv.shape[0]) for lv in levels)
        assert ome.level_dimensions == tif.level_dimensions
        assert np.array_equal(ome.read_region((0, 0), ome.dimensions, ome.mpp), rgb)
        x, y = 600, 900  # a level-2 read: its pixels are the level written there (lossless)
        got = ome.read_region((x, y), (100, 80), 4 * 0.499)
        assert np.array_equal(got, levels[2][y // 4 : y // 4 + 80, x // 4 : x // 4 + 100])
    # the same pyramid through OpenSlide (vendor TIFF path) and tifffile (OME path): every
    # stage reads the same level pixels, so the outputs must be identical
    ome_run = _tile_infer_export(ome_path, model, tmp_path / "ome", "cmu")
    tif_run = _tile_infer_export(tif_path, model, tmp_path / "tif", "cmu")
    assert ome_run["tissue_um2"] == tif_run["tissue_um2"] > 0
    assert np.array_equal(ome_run["labels"], tif_run["labels"])
    assert ome_run["features"] == tif_run["features"] and ome_run["features"]


# --- mpp sanity ------------------------------------------------------------------------------


def _aperio_tiff(path: Path, mpp: float | None, app_mag: int) -> Path:
    mpp_field = f"|MPP = {mpp}" if mpp is not None else ""
    tifffile.imwrite(
        path,
        np.full((512, 512, 3), 230, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        description=f"Aperio Image Library v12.0.15 \r\n512x512 [0,0 512x512] (256x256) "
        f"JPEG/RGB Q=90|AppMag = {app_mag}{mpp_field}",
        metadata=None,
    )
    return path


def test_mpp_that_disagrees_with_the_objective_warns(tmp_path: Path, caplog) -> None:
    bad = _aperio_tiff(tmp_path / "bad.svs", 1.0, 40)
    with caplog.at_level(logging.WARNING, logger="wsi_lpd.slide.reader"):
        assert open_slide(bad).mpp == 1.0
    [record] = [r for r in caplog.records if "objective" in r.getMessage()]
    assert str(bad) in record.getMessage()
    assert "1 µm/px" in record.getMessage() and "40x" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsi_lpd.slide.reader"):
        assert open_slide(_aperio_tiff(tmp_path / "ok.svs", 0.2527, 40)).mpp == 0.2527
        assert open_slide(bad, mpp=0.25).mpp == 0.25  # an explicit override is not second-guessed
    assert not [r for r in caplog.records if "objective" in r.getMessage()]


def test_slide_without_mpp_keeps_its_clear_error(tmp_path: Path) -> None:
    path = _aperio_tiff(tmp_path / "nompp.svs", None, 40)
    with pytest.raises(MissingMppError, match=r"nompp\.svs: no pixel size"):
        open_slide(path)
