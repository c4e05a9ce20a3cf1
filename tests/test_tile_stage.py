"""The ``wsi-lpd tile`` stage: outputs, options from config and flags, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely import union_all
from shapely.geometry import Point, box
from typer.testing import CliRunner

from wsi_lpd.cli.app import app
from wsi_lpd.formats.geojson import feature, read_annotations, write_feature_collection_into
from wsi_lpd.slide.tiling import TileGrid


def run(*args: object):
    return CliRunner().invoke(app, ["tile", *(str(a) for a in args)])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def test_tile_stage_writes_the_four_outputs(make_tiff, tmp_path: Path) -> None:
    slide, _ = make_tiff(name="case-01.tif")
    out = tmp_path / "tiles" / "case-01"
    result = run(slide, "--out", out, "--mpp", 1.0, "--patch-px", 64, "--min-tissue", 0.5)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "artefacts.geojson",
        "qc.png",
        "run.json",
        "tiles.npz",
        "tissue.geojson",
    ]
    assert leftovers(out.parent) == []

    grid = TileGrid.load(out / "tiles.npz")
    assert grid.slide_id == "case-01" and grid.mpp == 1.0 and grid.patch_px == 64
    assert grid.slide_mpp == pytest.approx(0.5) and (grid.slide_width, grid.slide_height) == (
        1024,
        768,
    )
    assert Path(grid.slide_path) == slide.resolve()
    assert 5 < len(grid) < (1024 // 128) * (768 // 128)  # tissue blobs, not the whole glass
    assert np.all(grid.tissue_fraction >= 0.5)
    assert np.all(grid.x % 128 == 0) and np.all(grid.y % 128 == 0)  # 64 px at 1 µm = 128 level-0

    tissue = read_annotations(out / "tissue.geojson")
    assert tissue and {a.class_name for a in tissue} == {"Tissue"}
    assert all(a.properties["objectType"] == "annotation" for a in tissue)
    # every tile's centre lies in the written tissue
    union = union_all([a.geometry for a in tissue])
    assert all(union.contains(Point(x + 64, y + 64)) for x, y in zip(grid.x, grid.y, strict=True))

    with Image.open(out / "qc.png") as qc:
        assert qc.mode == "RGB" and 400 <= max(qc.size) <= 1100
        pixels = np.asarray(qc)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 50  # the tissue contour is drawn

    meta = json.loads((out / "run.json").read_text())
    assert meta["stage"] == "tile" and meta["n_tiles"] == len(grid)
    assert meta["parameters"]["tile_mpp"] == 1.0 and meta["parameters"]["patch_px"] == 64
    assert meta["inputs"]["slide_width"] == 1024 and meta["inputs"]["slide_mpp"] == 0.5
    assert (
        meta["inputs"]["vendor"] == "generic-tiff"
        and len(meta["inputs"]["slide_sha256_first_mib"]) == 64
    )
    assert meta["wall_time_s"] >= 0
    assert str(out) in result.stderr  # it logs where it wrote


def test_tissue_geojson_replaces_detection_and_config_is_overridden(
    make_tiff, tmp_path: Path
) -> None:
    slide, _ = make_tiff()
    region = tmp_path / "region.geojson"
    write_feature_collection_into(region, [feature(box(0, 0, 512, 256), "Stroma", (0, 0, 255))])
    config = tmp_path / "config.yaml"
    config.write_text("tile:\n  tile_mpp: 2.0\n  patch_px: 32\n  min_tissue: 1.0\n")
    out = tmp_path / "out"
    result = run(
        slide,
        "--out",
        out,
        "--slide-id",
        "S1",
        "--config",
        config,
        "--tile-mpp",
        1.0,
        "--tissue-geojson",
        region,
        "--slide-mpp",
        0.25,
    )
    assert result.exit_code == 0, result.output
    grid = TileGrid.load(out / "tiles.npz")
    # flags win over the config (tile_mpp), the config over the defaults (patch_px, min_tissue)
    assert (grid.mpp, grid.patch_px, grid.slide_mpp, grid.slide_id) == (1.0, 32, 0.25, "S1")
    step = 32 * 1.0 / 0.25  # 128 level-0 px
    assert len(grid) == (512 // step) * (256 // step)  # exactly the tiles inside the box
    assert grid.x.max() + step <= 512 and grid.y.max() + step <= 256
    written = read_annotations(out / "tissue.geojson")
    assert len(written) == 1 and written[0].geometry.equals(box(0, 0, 512, 256))


def test_existing_output_is_replaced_whole(make_tiff, tmp_path: Path) -> None:
    slide, _ = make_tiff(blank=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = run(slide, "--out", out, "--patch-px", 64)
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists()
    assert len(TileGrid.load(out / "tiles.npz")) == 0  # blank glass: an empty grid, not an error
    assert "no tissue" in result.stderr.lower()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("missing", []),
        ("text", []),
        ("bad-id", ["--slide-id", "../escape"]),
        ("bad-config", ["--config", "CONFIG"]),
        ("bad-overlap", ["--overlap", "1.0"]),
    ],
)
def test_errors_are_one_line_and_leave_nothing(
    make_tiff, tmp_path: Path, case: str, extra: list[str]
) -> None:
    if case == "missing":
        slide = tmp_path / "missing.svs"
    elif case == "text":
        slide = tmp_path / "notes.svs"
        slide.write_text("this is not a slide\n" * 50)
    else:
        slide, _ = make_tiff()
    config = tmp_path / "bad.yaml"
    config.write_text("tile:\n  patch_size: 224\n")
    extra = [str(config) if a == "CONFIG" else a for a in extra]
    out = tmp_path / "out"
    result = run(slide, "--out", out, *extra)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsi-lpd tile: error:"), result.stderr
    expected = {
        "missing": str(slide),
        "text": str(slide),
        "bad-id": "../escape",
        "bad-config": "patch_size",
        "bad-overlap": "overlap",
    }[case]
    assert expected in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []


def test_roi_limits_the_tiles_and_is_shifted_on_cropped_slides(make_tiff, tmp_path: Path) -> None:
    from wsi_lpd.slide.tissue import read_roi_geojson

    slide, _ = make_tiff()
    roi = tmp_path / "roi.geojson"
    write_feature_collection_into(roi, [feature(box(0, 0, 512, 768), "Region*", (0, 0, 255))])
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert run(slide, "--out", whole, "--patch-px", 32, "--min-tissue", 0.01).exit_code == 0
    result = run(slide, "--out", half, "--patch-px", 32, "--min-tissue", 0.01, "--roi", roi)
    assert result.exit_code == 0, result.stderr
    all_tiles, roi_tiles = TileGrid.load(whole / "tiles.npz"), TileGrid.load(half / "tiles.npz")
    assert 0 < len(roi_tiles) < len(all_tiles)
    assert roi_tiles.x.max() < 512 and all_tiles.x.max() >= 512
    assert json.loads((half / "run.json").read_text())["parameters"]["roi"] == str(roi)

    assert read_roi_geojson(roi, (100, 50)).bounds == (100, 50, 612, 818)
    assert read_roi_geojson(roi).bounds == (0, 0, 512, 768)


def test_run_metadata_goes_to_a_folder_or_a_named_file(tmp_path: Path) -> None:
    from wsi_lpd.run_metadata import write_run_metadata

    folder = write_run_metadata(tmp_path / "out", "tile", {"a": 1}, {"slide": "s.svs"}, 0.0)
    named = write_run_metadata(tmp_path / "infer" / "S1.run.json", "infer", {}, {}, 0.0, n=2)
    assert folder == tmp_path / "out" / "run.json"
    assert named == tmp_path / "infer" / "S1.run.json"
    assert json.loads(folder.read_text())["parameters"] == {"a": 1}
    assert json.loads(named.read_text())["n"] == 2
    assert sorted(p.name for p in (tmp_path / "infer").iterdir()) == ["S1.run.json"]
