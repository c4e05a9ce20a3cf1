"""Tissue detection, rasterising, tissue GeoJSON and tile grids (real slide and synthetic)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box

from wsi_lpd.errors import DatasetError, NoTissueWarning, SlideTooSmallError
from wsi_lpd.slide.geometry import rasterize
from wsi_lpd.slide.options import TissueOptions
from wsi_lpd.slide.reader import open_slide
from wsi_lpd.slide.tiling import FORMAT, TileGrid, make_tile_grid
from wsi_lpd.slide.tissue import (
    TISSUE_CLASS,
    detect_tissue,
    read_tissue_geojson,
    saturation,
    smooth3,
    write_tissue_geojson_into,
)

# --------------------------------------------------------------------------------------------------
# the real slide CMU-1-Small-Region


@pytest.fixture(scope="module")
def cmu(cmu_slide_path: Path):
    """(slide, tissue) of the real slide, tissue detected once with the defaults (8 µm/px)."""
    slide = open_slide(cmu_slide_path)
    return slide, detect_tissue(slide)


def test_real_slide_tissue(cmu) -> None:
    """One H&E section, ~34 % of the slide (checked by eye on a thumbnail with the outline)."""
    slide, tissue = cmu
    w, h = slide.dimensions
    assert isinstance(tissue, MultiPolygon) and tissue.is_valid and not tissue.is_empty
    fraction = tissue.area / (w * h)
    assert 0.25 < fraction < 0.45
    assert 1 <= len(tissue.geoms) <= 3
    minx, miny, maxx, maxy = tissue.bounds
    assert minx >= 0 and miny >= 0 and maxx <= w and maxy <= h
    assert 0.15 * w < minx < 0.35 * w and 0.8 * w < maxx  # the section lies right of centre
    assert miny < 0.1 * h and maxy > 0.95 * h  # and runs from top to bottom
    for x, y in [(1040, 2000), (1300, 2600), (1100, 900)]:  # inside the section
        assert tissue.contains(Point(x, y)), (x, y)
    for x, y in [(100, 100), (2100, 300), (150, 2800), (2150, 1500)]:  # white glass
        assert not tissue.contains(Point(x, y)), (x, y)


def test_real_slide_tile_grid_lies_in_tissue(cmu) -> None:
    slide, tissue = cmu
    w, h = slide.dimensions
    grid = make_tile_grid(
        w,
        h,
        slide.mpp,
        tissue,
        mpp=1.0,
        patch_px=224,
        min_tissue=0.5,
        slide_id="cmu",
        slide_path=str(slide.path),
    )
    assert len(grid) >= 5
    side = grid.patch_level0_px
    assert side == pytest.approx(224 / 0.499)
    assert (grid.x >= 0).all() and (grid.x + side <= w + 1e-6).all()
    assert (grid.y >= 0).all() and (grid.y + side <= h + 1e-6).all()
    tol = 0.05
    for x, y, frac in zip(grid.x, grid.y, grid.tissue_fraction, strict=True):
        exact = box(x, y, x + side, y + side).intersection(tissue).area / side**2
        assert exact >= 0.5 - tol, (x, y, exact)
        assert abs(frac - exact) < tol, (x, y, frac, exact)
    # every full tile position that is clearly in tissue is kept, every one clearly out is not
    every = make_tile_grid(w, h, slide.mpp, None, mpp=1.0, patch_px=224, min_tissue=0.0)
    kept = set(zip(grid.x.tolist(), grid.y.tolist(), strict=True))
    for x, y in zip(every.x.tolist(), every.y.tolist(), strict=True):
        exact = box(x, y, x + side, y + side).intersection(tissue).area / side**2
        if exact >= 0.5 + tol:
            assert (x, y) in kept, (x, y, exact)
        elif exact < 0.5 - tol:
            assert (x, y) not in kept, (x, y, exact)


# --------------------------------------------------------------------------------------------------
# synthetic slides


def test_synthetic_tissue_found_and_glass_left_out(make_tiff) -> None:
    path, image = make_tiff(width=2048, height=1536)
    slide = open_slide(path)
    tissue = detect_tissue(slide, TissueOptions(tissue_mpp=4.0))
    assert tissue.is_valid and not tissue.is_empty
    mask = rasterize(tissue, (1536, 2048), 1.0)
    stained = saturation(image) > 0.3 * 255
    white = image.min(axis=2) == 255
    assert (mask & stained).sum() / stained.sum() > 0.95
    assert (mask & white).sum() / white.sum() < 0.01


def test_blank_slide_has_no_tissue_and_no_tiles(make_tiff, tmp_path: Path) -> None:
    path, _ = make_tiff(blank=True, width=512, height=512, levels=2)
    slide = open_slide(path)
    tissue = detect_tissue(slide)
    assert isinstance(tissue, MultiPolygon) and tissue.is_empty
    with pytest.warns(NoTissueWarning, match="no tissue"):
        grid = make_tile_grid(
            *slide.dimensions, slide.mpp, tissue, mpp=1.0, patch_px=224, slide_path=str(path)
        )
    assert len(grid) == 0 and grid.x.dtype == np.int64 and grid.tissue_fraction.dtype == np.float32
    grid.save(tmp_path / "empty.npz")
    assert len(TileGrid.load(tmp_path / "empty.npz")) == 0
    # tissue present but no tile reaches min_tissue: also empty, also warned
    sliver = MultiPolygon([box(0, 0, 30, 512)])
    with pytest.warns(NoTissueWarning):
        assert len(make_tile_grid(512, 512, 0.5, sliver, mpp=0.5, patch_px=128)) == 0


def test_slide_too_small(tmp_path: Path) -> None:
    # 224 px at 1 µm/px is 448 level-0 px at 0.5 µm/px
    with pytest.raises(SlideTooSmallError, match=r"tiny\.tif"):
        make_tile_grid(447, 1000, 0.5, None, mpp=1.0, patch_px=224, slide_path="tiny.tif")
    with pytest.raises(SlideTooSmallError):
        make_tile_grid(1000, 100, 0.5, MultiPolygon([box(0, 0, 1000, 100)]), mpp=1.0, patch_px=224)
    grid = make_tile_grid(448, 448, 0.5, None, mpp=1.0, patch_px=224)
    assert list(zip(grid.x, grid.y, strict=True)) == [(0, 0)]


# --------------------------------------------------------------------------------------------------
# tile grids


@pytest.mark.parametrize(
    ("width", "height", "slide_mpp", "mpp", "patch_px", "overlap_px"),
    [
        (5000, 3000, 0.5, 1.0, 224, 0),
        (5000, 3000, 0.5, 1.0, 224, 32),
        (4321, 2345, 0.499, 1.0, 224, 0),  # non-integer level-0 stride
        (3001, 2999, 0.25, 0.5, 256, 64),
        (2000, 2000, 1.0, 1.0, 100, 99),
    ],
)
def test_tile_stride_and_extent(width, height, slide_mpp, mpp, patch_px, overlap_px) -> None:
    grid = make_tile_grid(
        width, height, slide_mpp, None, mpp=mpp, patch_px=patch_px, overlap_px=overlap_px
    )
    factor = mpp / slide_mpp
    stride_l0 = (patch_px - overlap_px) * factor
    side = patch_px * factor
    assert grid.stride_px == patch_px - overlap_px
    assert grid.patch_level0_px == pytest.approx(side)
    xs, ys = np.unique(grid.x), np.unique(grid.y)
    assert len(grid) == len(xs) * len(ys)
    # positions are multiples of the exact level-0 stride, rounded (no drift along the row)
    np.testing.assert_array_equal(xs, np.round(np.arange(len(xs)) * stride_l0).astype(np.int64))
    np.testing.assert_array_equal(ys, np.round(np.arange(len(ys)) * stride_l0).astype(np.int64))
    # full tiles only, and as many as fit
    assert xs[-1] + side <= width + 0.5 and ys[-1] + side <= height + 0.5
    assert (len(xs)) * stride_l0 + side > width and (len(ys)) * stride_l0 + side > height
    assert (grid.tissue_fraction == 1).all()


def test_tissue_fractions_of_known_geometry() -> None:
    """Left half tissue: tiles left of the edge 1, right 0, straddling ones in between."""
    tissue = MultiPolygon([box(0, 0, 1000, 2048)])
    grid = make_tile_grid(2048, 2048, 0.5, tissue, mpp=1.0, patch_px=128, min_tissue=0.0)
    side = grid.patch_level0_px  # 256
    exact = np.clip((1000 - grid.x) / side, 0, 1)
    np.testing.assert_allclose(grid.tissue_fraction, exact, atol=1 / 16)
    kept = make_tile_grid(2048, 2048, 0.5, tissue, mpp=1.0, patch_px=128, min_tissue=0.5)
    assert set(kept.x.tolist()) == {0, 256, 512, 768}
    assert (kept.tissue_fraction >= 0.5).all()


def _grid(n: int, seed: int = 0) -> TileGrid:
    rng = np.random.default_rng(seed)
    return TileGrid(
        x=rng.integers(0, 200_000, n),
        y=rng.integers(0, 200_000, n),
        tissue_fraction=rng.random(n, dtype=np.float32),
        mpp=1.0,
        patch_px=224,
        overlap_px=16,
        slide_id="slide-Ü1",
        slide_path="/data/slides/slide Ü1.svs",
        slide_mpp=0.2527,
        slide_width=200_000,
        slide_height=190_000,
        extra={"tissue_mpp": 8.0, "note": "ok"},
    )


def test_tile_grid_round_trip(tmp_path: Path) -> None:
    grid = _grid(1234)
    path = tmp_path / "tiles.npz"
    grid.save(path)
    back = TileGrid.load(path)
    for name in ("x", "y", "tissue_fraction"):
        got, want = getattr(back, name), getattr(grid, name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    for name in (
        "mpp",
        "patch_px",
        "overlap_px",
        "slide_id",
        "slide_path",
        "slide_mpp",
        "slide_width",
        "slide_height",
        "extra",
    ):
        assert getattr(back, name) == getattr(grid, name), name
        assert type(getattr(back, name)) is type(getattr(grid, name)), name
    assert back.stride_px == 208 and back.patch_level0_px == pytest.approx(224 / 0.2527)
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["format"] == FORMAT and meta["n_tiles"] == 1234


def test_tile_grid_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing\.npz"):
        TileGrid.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    with pytest.raises(DatasetError, match=r"bad\.npz"):
        TileGrid.load(bad)
    other = tmp_path / "other.npz"
    np.savez(
        other,
        x=np.zeros(1),
        y=np.zeros(1),
        tissue_fraction=np.zeros(1),
        meta=np.array(json.dumps({"format": "something/else"})),
    )
    with pytest.raises(DatasetError, match="format"):
        TileGrid.load(other)


def test_tile_grid_of_100k_tiles_is_stored_as_whole_arrays(tmp_path: Path) -> None:
    """Loading is fast because a grid is three whole arrays (no per-tile records or pickles):
    asserted on the file's layout, not on a wall-clock time, which depends on the machine and
    its load (timings belong in bench/)."""
    grid = _grid(100_000)
    path = tmp_path / "big.npz"
    grid.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["meta", "tissue_fraction", "x", "y"]
        assert data["x"].shape == data["y"].shape == data["tissue_fraction"].shape == (100_000,)
    back = TileGrid.load(path)
    assert len(back) == 100_000
    for name in ("x", "y", "tissue_fraction"):
        np.testing.assert_array_equal(getattr(back, name), getattr(grid, name), err_msg=name)


# --------------------------------------------------------------------------------------------------
# rasterize, tissue GeoJSON


def _brute_force(geometry, shape_hw: tuple[int, int], s: float) -> np.ndarray:
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w]
    return shapely.contains_xy(geometry, (xx + 0.5) * s, (yy + 0.5) * s)


def _star(rng: np.random.Generator) -> Polygon:
    n = int(rng.integers(5, 30))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(8, 60, n)
    cx, cy = rng.uniform(-20, 120, 2)
    return Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


@pytest.mark.parametrize("s", [1.0, 2.5, 4.0])
def test_rasterize_marks_pixel_centres_inside(s: float) -> None:
    shape = (int(100 / s), int(110 / s))
    shapes = {
        "box": box(10.3, 7.9, 61.2, 45.7),  # no edge on a pixel centre
        "hole": Polygon(
            [(5.2, 5.3), (90.1, 8.7), (80.6, 70.2), (9.9, 60.1)],
            [[(30.2, 30.1), (55.3, 28.6), (50.4, 50.7), (28.8, 47.2)]],
        ),
        "concave": Polygon(
            [(3.3, 40.1), (50.7, 2.2), (97.6, 45.5), (60.1, 44.9), (52.2, 90.3), (40.3, 46.1)]
        ),
        "multi": MultiPolygon([box(1.1, 1.2, 20.3, 20.4), box(60.6, 70.7, 150.2, 90.1)]),
        "outside": box(-30.2, -20.1, 15.7, 300.3),  # beyond the raster on three sides
    }
    rng = np.random.default_rng(0)
    for i in range(40):
        star = _star(rng)
        if star.is_valid:
            shapes[f"star{i}"] = star
    for name, geometry in shapes.items():
        got = rasterize(geometry, shape, s)
        want = _brute_force(geometry, shape, s)
        assert got.shape == shape and got.dtype == bool
        assert want.any() or name.startswith("star"), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert not rasterize(MultiPolygon(), shape, s).any()
    assert not rasterize(box(500, 500, 600, 600), shape, s).any()


def test_tissue_geojson_round_trip(tmp_path: Path) -> None:
    piece = Polygon(
        [(100, 100), (900, 120), (880, 700), (120, 650)],
        [[(300, 300), (500, 300), (500, 450), (300, 450)]],
    )
    tissue = MultiPolygon([piece, box(1500.5, 200.25, 1800.75, 900.125)])
    path = tmp_path / "tissue.geojson"
    assert write_tissue_geojson_into(path, tissue) == 2
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    for feat in data["features"]:
        assert feat["properties"]["classification"]["name"] == TISSUE_CLASS
        assert feat["properties"]["objectType"] == "annotation"
    back = read_tissue_geojson(path)
    assert isinstance(back, MultiPolygon) and len(back.geoms) == 2
    assert back.symmetric_difference(tissue).area < 1e-6
    assert sum(len(p.interiors) for p in back.geoms) == 1
    # an empty tissue writes an empty collection and reads back empty
    empty = tmp_path / "empty.geojson"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_tissue_geojson_into(empty, MultiPolygon()) == 0
    assert read_tissue_geojson(empty).is_empty


def test_saturation_and_speck_smoothing() -> None:
    """uint8 saturation agrees with skimage's HSV; the 3×3 smoothing drops lone specks only."""
    from skimage.color import rgb2hsv

    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    expected = rgb2hsv(rgb)[..., 1] * 255
    assert np.abs(saturation(rgb).astype(float) - expected).max() <= 1.0
    specks = np.zeros((30, 30), np.uint8)
    specks[0, 0] = specks[0, 15] = specks[10, 10] = specks[29, 29] = 200  # lone pixels, edges too
    specks[20:23, 5:8] = 150  # a 3×3 blob survives whole
    out = smooth3(specks)
    assert out[20:23, 5:8].min() == 150
    out[20:23, 5:8] = 0
    assert out.max() == 0


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5.4])
def test_disk_morphology_equals_scipy(radius: float) -> None:
    from scipy import ndimage

    from wsi_lpd.slide.tissue import _disk, dilate_disk, erode_disk

    mask = np.random.default_rng(3).random((61, 47)) > 0.7
    disk = _disk(radius)
    assert np.array_equal(dilate_disk(mask, radius), ndimage.binary_dilation(mask, disk))
    assert np.array_equal(erode_disk(mask, radius), ndimage.binary_erosion(mask, disk))


def test_histogram_otsu_equals_skimage() -> None:
    from skimage.filters import threshold_otsu

    from wsi_lpd.slide.tissue import otsu_threshold

    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(30, 8, 5000), rng.normal(140, 20, 3000)])
    image = np.clip(values, 3, 250).astype(np.uint8).reshape(80, 100)
    assert otsu_threshold(image) == float(threshold_otsu(image))
    assert otsu_threshold(np.full((4, 4), 9, np.uint8)) == 9.0


def _find_contours_polygons(mask: np.ndarray, level0_per_px: float) -> MultiPolygon:
    """The reference tracer: each 4-connected piece through skimage's marching squares."""
    from scipy import ndimage
    from skimage.measure import find_contours

    labels, _n = ndimage.label(mask)
    polygons = []
    for idx, slc in enumerate(ndimage.find_objects(labels), start=1):
        rings = find_contours(np.pad(labels[slc] == idx, 1), 0.5)
        shift = np.array([slc[1].start - 0.5, slc[0].start - 0.5])
        coords = [(r[:, ::-1] + shift) * level0_per_px for r in rings if len(r) >= 4]
        outer = int(np.argmax([Polygon(c).area for c in coords]))
        poly = Polygon(coords[outer], [c for i, c in enumerate(coords) if i != outer])
        polygons.append(poly.simplify(0.5 * level0_per_px, preserve_topology=True))
    return MultiPolygon(polygons)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_array_tracer_equals_find_contours(seed: int) -> None:
    """Outlines traced with array operations (holes, islands in holes, diagonal touches) give
    the same simplified polygons as skimage's find_contours, vertex for vertex."""
    from scipy import ndimage

    from wsi_lpd.slide.geometry import polygonize

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((90, 120)) > 0.45)
    mask[40:60, 40:80] = True
    mask[45:55, 50:70] = False  # a hole ...
    mask[48:52, 58:62] = True  # ... with an island
    mask[0, 0] = mask[1, 1] = True  # pieces touching at a corner only
    new, ref = polygonize(mask, (4.0, 4.0)), _find_contours_polygons(mask, 4.0)
    assert len(new.geoms) == len(ref.geoms) > 5
    assert shapely.equals(new, ref)
    new_parts = sorted(shapely.normalize(p).wkb for p in new.geoms)
    assert new_parts == sorted(shapely.normalize(p).wkb for p in ref.geoms)
