"""Bad inputs through the CLI, as a hostile new user would try them (tile, synth, evaluate, info,
config): each ends with exit 1, exactly one line on stderr naming the file, nothing half-written
and an earlier output left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.cli.app import app
from wsi_lpd.formats.mosaic import write_mosaic


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, stage: str, names: str) -> str:
    """Exit 1, one stderr line ``wsi-lpd <stage>: error: …`` that contains ``names``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wsi-lpd {stage}: error: "), lines[0]
    assert names in lines[0], lines[0]
    return lines[0]


def no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.fixture
def slide(make_tiff) -> Path:
    return make_tiff()[0]


def _yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


TILE_CASES = {
    "missing slide": lambda tmp, s: ([tmp / "nope.svs"], str(tmp / "nope.svs")),
    "text file as slide": lambda tmp, s: (
        [_yaml(tmp, "not a slide\n" * 40, "notes.svs")],
        "notes.svs",
    ),
    "empty file": lambda tmp, s: ([_yaml(tmp, "", "empty.tif")], "empty.tif"),
    "truncated slide": lambda tmp, s: ([_truncated(s, tmp)], "cut.tif"),
    "bad config type": lambda tmp, s: (
        [s, "--config", _yaml(tmp, 'tile:\n  tile_mpp: "abc"\n')],
        "cfg.yaml: tile.tile_mpp",
    ),
    "old key bad type": lambda tmp, s: (
        [s, "--config", _yaml(tmp, 'tile:\n  mpp: "abc"\n')],
        "cfg.yaml: tile.tile_mpp",
    ),
    "negative patch": lambda tmp, s: (
        [s, "--config", _yaml(tmp, "tile:\n  patch_px: -5\n")],
        "tile.patch_px",
    ),
    "negative flag": lambda tmp, s: ([s, "--min-tissue", "-1"], "tile.min_tissue"),
    "flag not a number": lambda tmp, s: ([s, "--tile-mpp", "abc"], "'--tile-mpp'"),
    "overlap of a whole tile": lambda tmp, s: ([s, "--overlap", "1"], "tile.overlap"),
    "unknown key": lambda tmp, s: (
        [s, "--config", _yaml(tmp, "tile:\n  patch_size: 224\n")],
        "tile.patch_size: unknown key",
    ),
    "not YAML": lambda tmp, s: (
        [s, "--config", _yaml(tmp, "tile: [unclosed\n  : :\n")],
        "cfg.yaml: not valid YAML",
    ),
    "missing config": lambda tmp, s: ([s, "--config", tmp / "no.yaml"], "no.yaml"),
    "tile bigger than slide": lambda tmp, s: ([s, "--patch-px", "4096"], "smaller than one"),
    "roi not GeoJSON": lambda tmp, s: (
        [s, "--roi", _yaml(tmp, "x,y\n1,2\n", "roi.geojson")],
        "roi.geojson",
    ),
    "roi missing": lambda tmp, s: ([s, "--roi", tmp / "roi.geojson"], "roi.geojson"),
    "roi without polygon": lambda tmp, s: (
        [s, "--roi", _yaml(tmp, '{"type": "FeatureCollection", "features": []}', "e.geojson")],
        "e.geojson",
    ),
    "bad slide id": lambda tmp, s: ([s, "--slide-id", "../x"], "../x"),
}


def _truncated(source: Path, tmp: Path) -> Path:
    cut = tmp / "cut.tif"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    return cut


@pytest.mark.parametrize("case", sorted(TILE_CASES))
def test_tile_refuses(case: str, slide: Path, tmp_path: Path) -> None:
    args, names = TILE_CASES[case](tmp_path, slide)
    out = tmp_path / "out"
    result = invoke("tile", args[0], "--out", out, *args[1:])
    assert_refused(result, "tile", names)
    assert not out.exists()
    no_leftovers(tmp_path)


def test_tile_without_mpp_names_the_slide_and_the_flag(make_tiff, tmp_path: Path) -> None:
    path, _ = make_tiff(mpp=None, name="nompp.tif")
    out = tmp_path / "out"
    line = assert_refused(invoke("tile", path, "--out", out), "tile", "nompp.tif")
    assert "--slide-mpp" in line and not out.exists()


def test_refused_input_keeps_the_old_output_and_prints_no_info(slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiles.npz").write_bytes(b"earlier result")
    result = invoke("tile", slide, "--out", out, "--patch-px", "4096")
    line = assert_refused(result, "tile", str(slide))
    assert "INFO" not in result.stderr and "Traceback" not in line
    assert (out / "tiles.npz").read_bytes() == b"earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["tiles.npz"]


def test_verbose_prints_the_traceback(slide: Path, tmp_path: Path) -> None:
    result = invoke("tile", slide, "--out", tmp_path / "o", "--patch-px", "4096", "-v")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("wsi-lpd tile: error: ")


def test_aperio_tagged_tiff_openslide_rejects_is_read_with_tifffile(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "strips.svs"
    description = "Aperio Image Library v12.0.0\n800x600 -> 800x600 - |AppMag = 20|MPP = 0.5"
    tifffile.imwrite(path, np.full((600, 800, 3), 200, np.uint8), description=description)
    result = invoke("info", path, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["vendor"], info["mpp"], info["objective_power"]) == ("aperio", 0.5, 20.0)


@pytest.mark.parametrize(
    ("case", "names"),
    [("missing", "nope.svs"), ("text", "notes.svs"), ("directory", "adir")],
)
def test_info_refuses(case: str, names: str, tmp_path: Path) -> None:
    path = {"missing": tmp_path / "nope.svs", "directory": tmp_path / "adir"}.get(case)
    if case == "text":
        path = _yaml(tmp_path, "hello\n" * 30, "notes.svs")
    if case == "directory":
        path.mkdir()
    assert_refused(invoke("info", path), "info", names)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("tile:\n  tile_mpp: abc\n", "cfg.yaml: tile.tile_mpp"),
        ("threads:\n  infer: 0\n", "cfg.yaml: threads.infer"),
        ("tiles: {}\n", "cfg.yaml: tiles: unknown key"),
        ("- a\n- b\n", "cfg.yaml: the top level must be a mapping"),
        ("classes:\n  foreground: []\n", "cfg.yaml: classes.foreground"),
        ("evaluate:\n  protocol: voc\n", "cfg.yaml: evaluate.protocol"),
    ],
)
def test_config_refuses(text: str, names: str, tmp_path: Path) -> None:
    assert_refused(invoke("config", "--config", _yaml(tmp_path, text)), "config", names)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("synth:\n  width_px: 0\n", "synth.width_px"),
        ("synth:\n  slide_mpp: 2.0\n  mask_mpp: 1.0\n", "mask_mpp"),
        ("synth:\n  prefix: a/b\n", "synth.prefix"),
        ("synth:\n  n_slides: many\n", "synth.n_slides"),
    ],
)
def test_synth_refuses(text: str, names: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("synth", "--out", out, "--config", _yaml(tmp_path, text))
    assert_refused(result, "synth", names)
    assert not out.exists()


@pytest.fixture
def mosaic(tmp_path: Path) -> Path:
    probs = np.zeros((len(BCSS_CLASSES.all), 16, 16), np.uint8)
    probs[0] = 255
    return write_mosaic(
        tmp_path / "s1.ome.zarr",
        probs,
        classes=BCSS_CLASSES,
        mpp=2.0,
        slide_mpp=1.0,
        slide_id="s1",
        slide_path="",
        level0_width=32,
        level0_height=32,
    )


def test_evaluate_refuses(mosaic: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    truth = _yaml(tmp_path, '{"type": "FeatureCollection", "features": []}', "t.geojson")
    cases = [
        (["--pred", mosaic, "--truth", tmp_path / "truth.geojson"], "truth.geojson"),
        (["--pred", tmp_path / "nothing.ome.zarr", "--truth", truth], "nothing.ome.zarr"),
        (["--pred", _yaml(tmp_path, "x", "file.ome.zarr"), "--truth", truth], "file.ome.zarr"),
        (["--pred", mosaic], "--truth"),
        (["--pred", mosaic, "--truth", truth, "--workers", "0"], "evaluate.workers"),
        (["--pred", mosaic, "--truth", _yaml(tmp_path, "a: 1", "t.csv")], "t.csv"),
    ]
    (tmp_path / "empty.ome.zarr").mkdir()
    cases.append((["--pred", tmp_path / "empty.ome.zarr", "--truth", truth], "empty.ome.zarr"))
    for args, names in cases:
        assert_refused(invoke("evaluate", "--out", out, *args), "evaluate", names)
        assert not out.exists()
    no_leftovers(tmp_path)


def test_an_unexpected_exception_is_one_line_naming_the_input(
    slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsi_lpd.slide.stage

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(wsi_lpd.slide.stage, "detect_tissue_with_thumbnail", crash)
    out = tmp_path / "out"
    result = invoke("tile", slide, "--out", out)
    line = next(ln for ln in result.stderr.splitlines() if "error:" in ln)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert line == f"wsi-lpd tile: error: {slide}: RuntimeError: boom second line"
    assert not out.exists()
