"""Vectorising label rasters: exact pixel-edge polygons, seams, simplification, measurements."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import shapely
import zarr

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.export.vectorize import (
    AREA_KEY,
    PROBABILITY_KEY,
    class_features,
    polygonize_block,
    vectorize_labels,
)
from wsi_lpd.formats.geojson import read_annotations, write_feature_collection_into

BG = BCSS_CLASSES.background_index  # 4


def scene(height: int = 260, width: int = 300) -> np.ndarray:
    """Classes with holes, classes touching each other and shapes crossing 64-px block seams."""
    yy, xx = np.mgrid[0:height, 0:width]
    lab = np.full((height, width), BG, dtype=np.uint8)
    r = np.hypot(yy - 110, xx - 120)
    lab[r < 80] = 0  # TUM disk ...
    lab[r < 40] = BG  # ... with a background hole
    lab[r < 24] = 3  # NEC island inside the hole
    lab[(yy > 60) & (yy < 150) & (xx >= 200) & (xx < 280)] = 1  # STR touching TUM
    blob = ((yy - 200) / 40.0) ** 2 + ((xx - 150) / 110.0) ** 2 < 1  # LYM across seams
    lab[blob & (lab == BG)] = 2
    lab[100:104, 60:64] = BG  # a small hole in TUM
    lab[[3, 4, 4], [3, 4, 5]] = 2  # diagonal-only contacts
    return lab


def rasterise(geom: shapely.Geometry, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Pixel-centre rasterisation of a level-0 geometry onto a mosaic grid (level0 px / scale)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return shapely.contains_xy(geom, xx * scale, yy * scale)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_polygonize_block_is_pixel_exact() -> None:
    lab = scene()
    faces, values, pixels = polygonize_block(lab, BG)
    assert set(values.tolist()) == {0, 1, 2, 3}
    assert (lab[pixels[:, 0], pixels[:, 1]] == values).all()
    for k in range(4):
        geom = shapely.union_all(faces[values == k])
        assert geom.is_valid
        assert geom.area == (lab == k).sum()
        assert (rasterise(geom, lab.shape) == (lab == k)).all()
    assert all(len(f.interiors) == 0 for f in faces[values == 3])
    assert any(len(f.interiors) for f in faces[values == 0])  # holes are interior rings


@pytest.mark.parametrize("block_px", [64, 4096])
def test_exact_classes_tile_the_labelled_area(block_px: int) -> None:
    lab = scene()
    res = vectorize_labels(
        lab,
        BCSS_CLASSES,
        mpp=2.0,
        level0_per_px=1.0,
        min_area_um2=0,
        simplify_um=0,
        block_px=block_px,
    )
    assert [r.name for r in res] == BCSS_CLASSES.foreground_names
    geoms = [r.geometry for r in res]
    for k, geom in enumerate(geoms):
        assert geom.is_valid
        assert geom.area == (lab == k).sum()
        assert (rasterise(geom, lab.shape) == (lab == k)).all()
    for i in range(4):
        for j in range(i + 1, 4):
            assert shapely.intersection(geoms[i], geoms[j]).area == 0
    labelled = shapely.union_all(geoms)
    assert labelled.area == (lab != BG).sum()
    # the annulus is one component with its hole; the NEC island sits inside the hole
    tum = max(res[0].components, key=lambda g: g.area)
    assert len(tum.interiors) == 2
    big_hole = max((shapely.Polygon(r) for r in tum.interiors), key=lambda g: g.area)
    assert res[3].components[0].within(big_hole)


def test_seams_do_not_change_the_result() -> None:
    lab = scene()
    kwargs = dict(mpp=1.0, level0_per_px=1.0, min_area_um2=0, simplify_um=0)
    small = vectorize_labels(lab, BCSS_CLASSES, block_px=64, **kwargs)
    whole = vectorize_labels(lab, BCSS_CLASSES, block_px=1024, **kwargs)
    for a, b in zip(small, whole, strict=True):
        assert len(a.components) == len(b.components)
        assert shapely.symmetric_difference(a.geometry, b.geometry).area == 0
        assert shapely.equals(a.geometry, b.geometry)


def test_simplified_round_trip_through_geojson(tmp_path) -> None:
    lab = scene()
    scale = 4.0  # level-0 px per mosaic px
    res = vectorize_labels(
        lab, BCSS_CLASSES, mpp=2.0, level0_per_px=scale, min_area_um2=0, block_px=64
    )
    geoms = np.array([r.geometry for r in res])
    assert shapely.is_valid(geoms).all()
    assert shapely.coverage_is_valid(geoms)  # neighbours still share their edges exactly
    exact_vertices = sum(
        r.num_vertices
        for r in vectorize_labels(
            lab, BCSS_CLASSES, mpp=2.0, level0_per_px=scale, min_area_um2=0, simplify_um=0
        )
    )
    assert sum(r.num_vertices for r in res) < 0.6 * exact_vertices
    path = tmp_path / "out.geojson"
    write_feature_collection_into(path, class_features(res))
    back = read_annotations(path)
    for k, name in enumerate(BCSS_CLASSES.foreground_names):
        geom = shapely.union_all([a.geometry for a in back if a.class_name == name])
        assert iou(rasterise(geom, lab.shape, scale), lab == k) >= 0.99, name


def test_min_area_removes_pieces_and_fills_holes() -> None:
    lab = np.full((200, 200), BG, dtype=np.uint8)
    lab[20:180, 20:180] = 0
    lab[60:62, 60:62] = BG  # 4 px hole → filled
    lab[100:140, 100:140] = BG  # 1600 px hole → kept
    lab[150:152, 30:33] = 1  # 6 px STR speck inside TUM → removed
    lab[5:7, 190:192] = 2  # 4 px speck away from everything → removed
    lab[62:66, 126:130] = 2  # 16 px speck on a 64-px seam corner → removed too
    res = vectorize_labels(
        lab,
        BCSS_CLASSES,
        mpp=1.0,
        level0_per_px=1.0,
        min_area_um2=20,
        simplify_um=0,
        block_px=64,
    )
    tum = res[0]
    assert len(tum.components) == 1
    assert len(tum.components[0].interiors) == 1
    assert tum.components[0].area == 160 * 160 - 1600
    assert res[1].components == [] and res[2].components == []
    assert shapely.coverage_is_valid(np.array([r.geometry for r in res]))


def test_measurements_area_and_mean_probability() -> None:
    lab = np.full((128, 160), BG, dtype=np.uint8)
    lab[10:50, 10:150] = 1  # crosses the x = 64 and x = 128 seams
    lab[80:120, 20:60] = 1
    probs = np.zeros((5, 128, 160), dtype=np.uint8)
    probs[1, 10:50, 10:150] = 204  # 0.8
    probs[1, 10:50, 10:80] = 153  # 0.6 on half of it → mean 0.7
    probs[1, 80:120, 20:60] = 51  # 0.2
    res = vectorize_labels(
        lab,
        BCSS_CLASSES,
        mpp=2.0,
        level0_per_px=4.0,
        probs=probs,
        min_area_um2=0,
        simplify_um=0,
        block_px=64,
    )
    stl = res[1]
    order = np.argsort([-g.area for g in stl.components])
    areas = stl.area_um2[order]
    np.testing.assert_allclose(areas, [40 * 140 * 4.0, 40 * 40 * 4.0])  # mosaic px × mpp²
    means = stl.mean_probability[order]
    expected_big = (70 * 153 + 70 * 204) / 140 / 255
    np.testing.assert_allclose(means, [expected_big, 51 / 255], rtol=1e-9)
    assert stl.components[order[0]].bounds == (40.0, 40.0, 600.0, 200.0)  # level-0 px
    feats = list(class_features(res, per_class=True))
    assert len(feats) == 1
    meas = feats[0]["properties"]["measurements"]
    assert meas[AREA_KEY] == pytest.approx(40 * 180 * 4.0)
    assert meas[PROBABILITY_KEY] == pytest.approx((5600 * expected_big + 1600 * 0.2) / 7200)


def test_offset_clip_and_array_backends(tmp_path) -> None:
    lab = scene(130, 140)
    store = zarr.create_array(tmp_path / "l.zarr", shape=lab.shape, chunks=(32, 32), dtype="uint8")
    store[:] = lab
    kwargs = dict(mpp=1.0, level0_per_px=2.0, min_area_um2=0, simplify_um=0, block_px=64)
    ref = vectorize_labels(lab, BCSS_CLASSES, **kwargs)
    via_zarr = vectorize_labels(store, BCSS_CLASSES, **kwargs)
    da = pytest.importorskip("dask.array")
    via_dask = vectorize_labels(da.from_array(lab, chunks=50), BCSS_CLASSES, **kwargs)
    for a, b, c in zip(ref, via_zarr, via_dask, strict=True):
        assert shapely.equals(a.geometry, b.geometry) or a.geometry.is_empty
        assert shapely.equals(a.geometry, c.geometry) or a.geometry.is_empty
    shifted = vectorize_labels(
        lab, BCSS_CLASSES, offset_px=(100.0, 30.0), clip_box_px=(0, 0, 200, 250), **kwargs
    )
    expected = shapely.clip_by_rect(ref[0].geometry, 0, 0, 200, 250)
    moved = shapely.transform(shifted[0].geometry, lambda c: c + np.array([100.0, 30.0]))
    assert shapely.symmetric_difference(moved, expected).area < 1e-9
    assert shifted[0].total_area_um2 == pytest.approx(expected.area * 0.25)  # slide mpp 0.5


def test_features_follow_qupath_rules() -> None:
    lab = scene()
    res = vectorize_labels(lab, BCSS_CLASSES, mpp=2.0, level0_per_px=1.0, min_area_um2=0)
    for per_class in (False, True):
        feats = list(class_features(res, object_type="detection", per_class=per_class))
        assert len(feats) == (4 if per_class else sum(len(r.components) for r in res))
        for f in feats:
            uuid.UUID(f["id"])
            props = f["properties"]
            assert props["objectType"] == "detection"
            assert props["classification"]["name"] in BCSS_CLASSES.foreground_names
            assert len(props["classification"]["color"]) == 3
            assert props["classification"]["name"] != "BACK"
            assert set(props["measurements"]) == {AREA_KEY}  # no probabilities were given
            geom = f["geometry"]
            assert geom["type"] in ("Polygon", "MultiPolygon")
            if geom["type"] == "MultiPolygon":
                assert len(geom["coordinates"]) > 1
