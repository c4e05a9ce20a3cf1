"""Patch stores from tile grids + QuPath annotations or a CSV; the `wsi-lpd patches` stage."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import box
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES, ClassList, ClassMapping
from wsi_lpd.cli.app import app as cli_app
from wsi_lpd.data.patches import (
    build_patch_store_from_annotations,
    build_patch_store_from_csv,
    class_coverage,
    label_states,
)
from wsi_lpd.errors import AnnotationError, DatasetError
from wsi_lpd.formats.geojson import (
    feature,
    qupath_offset_px,
    read_annotations,
    write_feature_collection_into,
)
from wsi_lpd.formats.patch_store import open_patch_store
from wsi_lpd.slide.tiling import make_tile_grid

SLIDE_PX = 256  # level-0 side at 0.5 µm/px
TILE_L0 = 64  # 32 px patches at 1 µm/px


def _colour(x_level0: int, y_level0: int) -> tuple[int, int]:
    """Red and green of the 64×64 level-0 block holding a pixel: encodes the block's position."""
    return 40 * (x_level0 // TILE_L0) + 10, 40 * (y_level0 // TILE_L0) + 10


@pytest.fixture()
def slide(tmp_path: Path) -> Path:
    yy, xx = np.mgrid[0:SLIDE_PX, 0:SLIDE_PX]
    red, green = _colour(xx, yy)  # type: ignore[arg-type]
    image = np.stack([red, green, np.full_like(red, 200)], axis=-1).astype(np.uint8)
    path = tmp_path / "slide.tiff"
    tifffile.imwrite(
        path,
        image,
        tile=(128, 128),
        photometric="rgb",
        compression="zlib",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    return path


@pytest.fixture()
def tiles(tmp_path: Path, slide: Path) -> Path:
    grid = make_tile_grid(
        SLIDE_PX, SLIDE_PX, 0.5, None, 1.0, 32, slide_id="s1", slide_path=str(slide)
    )
    out = tmp_path / "tiles"
    out.mkdir()
    grid.save(out / "tiles.npz")
    return out


def _annotations(path: Path, extra: list[dict] | None = None) -> Path:
    feats = [
        feature(box(0, 0, 128, 64), "TUM", (200, 0, 0)),  # tiles (0, 0), (64, 0)
        feature(box(96, 0, 192, 64), "STR", (255, 165, 0)),  # half of (64, 0), all of (128, 0)
        feature(box(0, 192, 64, 256), "BACK", (255, 255, 255)),  # tile (0, 192): no label
        feature(box(192, 192, 195, 256), "LYM", (0, 0, 200)),  # ~5 % of tile (192, 192)
    ]
    write_feature_collection_into(path, feats + (extra or []))
    return path


def test_class_coverage_exact() -> None:
    cov = class_coverage(
        [box(0, 0, 10, 10), None, box(5, 0, 15, 10)],
        np.array([0, 10, 20]),
        np.array([0, 0, 0]),
        10.0,
    )
    np.testing.assert_allclose(cov, [[1, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])


def test_store_from_annotations(tmp_path: Path, tiles: Path) -> None:
    out = tmp_path / "store.zarr"
    summary = build_patch_store_from_annotations(
        [tiles], [_annotations(tmp_path / "a.geojson")], out, BCSS_CLASSES, progress=False
    )
    store = open_patch_store(out)
    assert summary["patches"] == len(store) == 4
    assert summary["per_class"] == {"TUM": 2, "STR": 2, "LYM": 0, "NEC": 0}
    assert store.slides == ["s1"] and store.mpp == 1.0 and store.patch_px == 32
    assert not store.has_masks
    coords = [tuple(c) for c in store.coords[:]]
    assert coords == [(0, 0), (64, 0), (128, 0), (0, 192)]
    np.testing.assert_array_equal(
        store.labels[:], [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    )
    for i, (x, y) in enumerate(coords):  # pixels come from the right place at 1 µm/px
        image = store.images[i]
        assert image.shape == (32, 32, 3)
        red, green = _colour(x, y)
        assert abs(int(image[..., 0].mean()) - red) <= 1
        assert abs(int(image[..., 1].mean()) - green) <= 1


def test_store_with_truth_masks(tmp_path: Path, tiles: Path) -> None:
    from wsi_lpd.classes import ClassList
    from wsi_lpd.formats.labelmask import write_label_mask_into

    # Mask at 8 µm/px (16 level-0 px per px) with its own class order: STR, TUM, LYM, NEC, BACK.
    mask_classes = ClassList.from_names(["STR", "TUM", "LYM", "NEC"])
    mask = np.full((16, 16), 4, dtype=np.uint8)
    mask[:4, :4] = 1  # TUM over tile (0, 0) …
    mask[:4, 1] = 0  # … except level-0 columns 16-31: STR
    write_label_mask_into(tmp_path / "truth.tiff", mask, 8.0, mask_classes)
    out = tmp_path / "store.zarr"
    build_patch_store_from_annotations(
        [tiles],
        [_annotations(tmp_path / "a.geojson")],
        out,
        BCSS_CLASSES,
        truth_masks=[tmp_path / "truth.tiff"],
        progress=False,
    )
    store = open_patch_store(out)
    assert store.has_masks and store.masks.shape == (4, 32, 32)
    first = store.masks[0]  # 1 µm/px: a mask pixel spans 8 patch pixels
    assert (first[:, :8] == 0).all() and (first[:, 8:16] == 1).all() and (first[:, 16:] == 0).all()
    assert (store.masks[1] == 4).all()  # BACK, in BCSS order
    tum_only = tmp_path / "tum.geojson"
    write_feature_collection_into(tum_only, [feature(box(0, 0, 64, 64), "TUM", (200, 0, 0))])
    with pytest.raises(AnnotationError, match=r"truth\.tiff: mask class 'STR'"):
        build_patch_store_from_annotations(
            [tiles],
            [tum_only],
            tmp_path / "x.zarr",
            ClassList.from_names(["TUM", "LYM", "NEC"]),
            truth_masks=[tmp_path / "truth.tiff"],
        )


def test_higher_min_fraction_drops_partial_labels(tmp_path: Path, tiles: Path) -> None:
    out = tmp_path / "store.zarr"
    build_patch_store_from_annotations(
        [tiles],
        [_annotations(tmp_path / "a.geojson")],
        out,
        BCSS_CLASSES,
        min_class_fraction=0.6,
        progress=False,
    )
    store = open_patch_store(out)
    np.testing.assert_array_equal(store.labels[1], [1, 0, 0, 0])  # STR covers only 50 %


def test_unknown_class_raises(tmp_path: Path, tiles: Path) -> None:
    ann = _annotations(tmp_path / "bad.geojson", [feature(box(0, 0, 9, 9), "FAT", (1, 2, 3))])
    with pytest.raises(AnnotationError, match=r"bad\.geojson: annotation class 'FAT'"):
        build_patch_store_from_annotations([tiles], [ann], tmp_path / "s.zarr", BCSS_CLASSES)


def test_pairing_errors(tmp_path: Path, tiles: Path) -> None:
    with pytest.raises(DatasetError, match="pair up by order"):
        build_patch_store_from_annotations(
            [tiles, tiles], [tmp_path / "a"], tmp_path / "s.zarr", BCSS_CLASSES
        )
    with pytest.raises(DatasetError, match="slide id 's1' appears in an earlier tile dir"):
        build_patch_store_from_annotations(
            [tiles, tiles], [tmp_path / "a", tmp_path / "a"], tmp_path / "s.zarr", BCSS_CLASSES
        )
    with pytest.raises(DatasetError, match="tile grid not found"):
        build_patch_store_from_annotations(
            [tmp_path / "none"], [tmp_path / "a"], tmp_path / "s.zarr", BCSS_CLASSES
        )


def _csv(path: Path, rows: list[str], header: str = "slide_id,path,x,y,labels") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_store_from_csv(tmp_path: Path, slide: Path) -> None:
    csv_path = _csv(
        tmp_path / "labels.csv",
        ["s1,slide.tiff,64,128,TUM;STR", "s1,slide.tiff,0,0,", f"s2,{slide},128,64,NEC"],
    )
    summary = build_patch_store_from_csv(
        csv_path, tmp_path / "c.zarr", BCSS_CLASSES, 1.0, 32, progress=False
    )
    store = open_patch_store(tmp_path / "c.zarr")
    assert summary["patches"] == 3 and store.slides == ["s1", "s2"]
    np.testing.assert_array_equal(store.labels[:], [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(store.slide_index[:], [0, 0, 1])
    red, green = _colour(64, 128)
    assert abs(int(store.images[0][..., 0].mean()) - red) <= 1
    assert abs(int(store.images[0][..., 1].mean()) - green) <= 1


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["s1,slide.tiff,0,0,TUM"], "slide_id,path,x,labels", "missing column\\(s\\) y"),
        (["s1,slide.tiff,0,zero,TUM"], None, "labels.csv:2: x and y must be integers"),
        (["s1,slide.tiff,0,0,TUM;BACK"], None, "label 'BACK' is not a foreground class"),
        (["s1,slide.tiff,0,0,", "s1,other.tiff,0,0,"], None, "slide id 's1' names"),
        (["s9,missing.tiff,0,0,"], None, "missing.tiff not found"),
        ([], None, "no rows"),
    ],
)
def test_csv_validation(
    tmp_path: Path, slide: Path, rows: list[str], header: str | None, message: str
) -> None:
    csv_path = _csv(tmp_path / "labels.csv", rows, header or "slide_id,path,x,y,labels")
    with pytest.raises(DatasetError, match=message):
        build_patch_store_from_csv(csv_path, tmp_path / "c.zarr", BCSS_CLASSES, 1.0, 32)


def _invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, ["patches", *[str(a) for a in args]])
    return result.exit_code, result.output


def test_stage_writes_store_and_run_json(tmp_path: Path, tiles: Path) -> None:
    ann = _annotations(tmp_path / "a.geojson")
    config = tmp_path / "config.yaml"
    config.write_text(
        "classes:\n"
        "  foreground:\n"
        "    - {name: TUM, color: [200, 0, 0]}\n"
        "    - {name: STR, color: [255, 165, 0]}\n"
        "    - {name: LYM, color: [0, 0, 200]}\n"
        "  background: {name: BACK, color: [255, 255, 255]}\n"
        "patches:\n"
        "  min_class_fraction: 0.6\n"
    )
    out = tmp_path / "out" / "store.zarr"
    code, output = _invoke(
        "--tiles",
        tiles,
        "--annotations",
        ann,
        "--out",
        out,
        "--config",
        config,
        "--min-class-fraction",
        "0.2",
    )
    assert code == 0, output
    store = open_patch_store(out)
    assert store.classes.foreground_names == ["TUM", "STR", "LYM"]
    np.testing.assert_array_equal(store.labels[1], [1, 1, 0])  # the flag (0.2) beat the config
    run = json.loads((tmp_path / "out" / "store.run.json").read_text())
    assert run["stage"] == "patches" and run["summary"]["patches"] == 4
    assert run["parameters"]["min_class_fraction"] == 0.2
    assert sorted(p.name for p in out.parent.iterdir()) == ["store.run.json", "store.zarr"]


def test_stage_errors_leave_no_store(tmp_path: Path, tiles: Path) -> None:
    ann = _annotations(tmp_path / "bad.geojson", [feature(box(0, 0, 9, 9), "FAT", (1, 2, 3))])
    config = tmp_path / "refuse.yaml"
    config.write_text("patches:\n  unknown_classes: refuse\n")
    out = tmp_path / "store.zarr"
    code, output = _invoke("--tiles", tiles, "--annotations", ann, "--out", out, "--config", config)
    assert code == 1
    assert (
        output.startswith("wsi-lpd patches: error:")
        and "'FAT'" in output
        and "bad.geojson" in output
    )
    assert output.count("\n") == 1
    assert not out.exists() and list(tmp_path.glob(".store.zarr*")) == []
    code, output = _invoke("--out", out)
    assert code == 1 and "either --tiles" in output
    config.write_text("patches:\n  class_map: {Tumour: TUMOUR}\n")
    code, output = _invoke("--tiles", tiles, "--annotations", ann, "--out", out, "--config", config)
    assert code == 1 and output.count("\n") == 1
    assert "refuse.yaml: patches.class_map.Tumour: 'TUMOUR' is not a class" in output
    config.write_text("patches:\n  min_annotated_fraction: 1.5\n")
    code, output = _invoke("--tiles", tiles, "--annotations", ann, "--out", out, "--config", config)
    assert code == 1 and "refuse.yaml: patches.min_annotated_fraction:" in output


def test_stage_ignores_unknown_classes_by_default_and_counts_them(
    tmp_path: Path, tiles: Path
) -> None:
    extra = [feature(box(0, 0, 9, 9), "Region*", (1, 2, 3)) for _ in range(3)]
    ann = _annotations(
        tmp_path / "a.geojson", [*extra, feature(box(0, 0, 9, 9), "Other", (1, 2, 3))]
    )
    out = tmp_path / "store.zarr"
    code, output = _invoke("--tiles", tiles, "--annotations", ann, "--out", out)
    assert code == 0, output
    assert len(open_patch_store(out)) == 4
    assert "a.geojson: ignored 3 annotation(s) of class 'Region*'" in output
    assert "a.geojson: ignored 1 annotation(s) of class 'Other'" in output


def test_qupath_class_names_map_to_model_classes(tmp_path: Path, tiles: Path) -> None:
    ann = tmp_path / "qupath.geojson"
    write_feature_collection_into(
        ann,
        [
            feature(box(0, 0, 64, 64), "Tumor", (200, 0, 0)),
            feature(box(64, 0, 128, 64), "stroma", (255, 165, 0)),
            feature(box(128, 0, 192, 64), "Immune cells", (0, 0, 200)),
            feature(box(192, 0, 256, 64), "nec", (128, 0, 128)),
            feature(box(0, 64, 64, 128), "Tumour", (200, 0, 0)),
            feature(box(64, 64, 128, 128), "Ignore*", (1, 1, 1)),
        ],
    )
    mapping = ClassMapping(BCSS_CLASSES, {"tumour": "TUM", "Ignore*": None}, "refuse")
    build_patch_store_from_annotations(
        [tiles], [ann], tmp_path / "s.zarr", BCSS_CLASSES, class_mapping=mapping, progress=False
    )
    store = open_patch_store(tmp_path / "s.zarr")
    assert [tuple(c) for c in store.coords[:]] == [(0, 0), (64, 0), (128, 0), (192, 0), (0, 64)]
    np.testing.assert_array_equal(store.positive(), np.eye(4, dtype=np.uint8)[[0, 1, 2, 3, 0]])


def test_class_mapping_resolution_order() -> None:
    classes = ClassList.from_names(["TUM", "Stroma"])
    mapping = ClassMapping(classes, {"Tumor": "Stroma", "Fat": "BACK", "Region*": None})
    assert mapping.resolve("Tumor") == "Stroma"  # the config's map wins over QuPath's names
    assert mapping.resolve("tum") == "TUM" and mapping.resolve("STROMA") == "Stroma"
    assert mapping.resolve("fat") == "BACK" and mapping.resolve("Region*") is None
    assert mapping.resolve("Necrosis") is None  # NEC is not a model class here
    assert mapping.indices(["Tumor", None, "Region*", "Necrosis"], "f.geojson") == [
        1,
        None,
        None,
        None,
    ]
    with pytest.raises(AnnotationError, match=r"f\.geojson: annotation class 'Necrosis'"):
        ClassMapping(classes, unknown_classes="refuse").indices(["Necrosis"], "f.geojson")


def test_annotations_shift_by_the_slide_bounds(
    tmp_path: Path, tiles: Path, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QuPath coordinates of a cropped slide are relative to its bounds: shifted to level 0."""
    from wsi_lpd.formats import geojson
    from wsi_lpd.slide.reader import open_slide

    with open_slide(slide) as opened:
        assert qupath_offset_px(opened) == (0, 0)  # an uncropped slide
    assert qupath_offset_px(SimpleNamespace(bounds=(64, 128, 10, 10))) == (64, 128)
    ann = tmp_path / "cropped.geojson"
    write_feature_collection_into(ann, [feature(box(0, 0, 64, 64), "TUM", (200, 0, 0))])
    assert read_annotations(ann, offset_px=(64, 128))[0].geometry.bounds == (64, 128, 128, 192)
    monkeypatch.setattr(geojson, "qupath_offset_px", lambda _slide: (64, 128))
    build = functools.partial(
        build_patch_store_from_annotations, [tiles], [ann], classes=BCSS_CLASSES, progress=False
    )
    build(out=tmp_path / "shifted.zarr")
    build(out=tmp_path / "raw.zarr", qupath_bounds=False)
    assert [tuple(c) for c in open_patch_store(tmp_path / "shifted.zarr").coords[:]] == [(64, 128)]
    assert [tuple(c) for c in open_patch_store(tmp_path / "raw.zarr").coords[:]] == [(0, 0)]


def _second_tiles(tmp_path: Path, slide: Path) -> Path:
    grid = make_tile_grid(
        SLIDE_PX, SLIDE_PX, 0.5, None, 1.0, 32, slide_id="s2", slide_path=str(slide)
    )
    out = tmp_path / "tiles2"
    out.mkdir()
    grid.save(out / "tiles.npz")
    return out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {
                "type": "FeatureCollection",
                "features": [feature(box(1000, 1000, 1200, 1200), "TUM", (200, 0, 0))],
            },
            r"ann\.geojson: no patch for slide 's1': all 1 annotation polygon\(s\) lie outside "
            r"the slide \(0\.\.256 x 0\.\.256 level-0 px\)",
        ),
        ({"type": "FeatureCollection", "features": []}, r"ann\.geojson: .*holds no polygon"),
        (
            {
                "type": "FeatureCollection",
                "features": [feature(box(0, 0, 3, 3), "TUM", (200, 0, 0))],
            },
            r"ann\.geojson: no patch for slide 's1': no tissue tile of 16 is covered enough",
        ),
        (
            {
                "type": "FeatureCollection",
                "features": [feature(box(0, 0, 64, 64), "Region*", (1, 2, 3))],
            },
            r"ann\.geojson: .*none of its 1 annotation\(s\) has a model class",
        ),
        ({"slides": ["a", "b"]}, r"ann\.geojson: not GeoJSON \(found a JSON dict"),
        ([1, 2], r"ann\.geojson: not GeoJSON \(found a JSON int"),
        ({"type": "Topology"}, r"ann\.geojson: not GeoJSON \(found type 'Topology'"),
    ],
)
def test_annotation_files_that_give_no_patch_fail_naming_the_file(
    tmp_path: Path, tiles: Path, content: object, message: str
) -> None:
    ann = tmp_path / "ann.geojson"
    ann.write_text(json.dumps(content))
    mapping = ClassMapping(BCSS_CLASSES)  # unknown classes ignored
    with pytest.raises(AnnotationError, match=message):
        build_patch_store_from_annotations(
            [tiles], [ann], tmp_path / "s.zarr", BCSS_CLASSES, class_mapping=mapping
        )
    assert not (tmp_path / "s.zarr").exists()  # nothing written before the check


def test_a_slide_without_patches_warns_when_others_give_patches(
    tmp_path: Path, tiles: Path, slide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside.geojson"
    write_feature_collection_into(outside, [feature(box(900, 900, 990, 990), "TUM", (200, 0, 0))])
    good = _annotations(tmp_path / "good.geojson")
    summary = build_patch_store_from_annotations(
        [tiles, _second_tiles(tmp_path, slide)],
        [good, outside],
        tmp_path / "s.zarr",
        BCSS_CLASSES,
        progress=False,
    )
    assert summary["per_slide"] == {"s1": 4, "s2": 0}
    assert "outside.geojson: no patch for slide 's2': all 1 annotation polygon(s)" in caplog.text
    code, output = _invoke(
        "--tiles", tiles, "--annotations", outside, "--out", tmp_path / "stage.zarr"
    )
    assert code == 1 and output.count("\n") == 1 and "outside.geojson" in output
    assert not (tmp_path / "stage.zarr").exists()


def test_store_from_synthetic_slide_matches_annotations(tmp_path: Path) -> None:
    """End to end on `wsi_lpd.synthetic.slides`: three-state labels agree with a per-patch
    reference; with
    the truth mask, labels come from the mask and are all known."""
    from shapely.geometry import box as shp_box

    from wsi_lpd.formats.geojson import read_annotations
    from wsi_lpd.synthetic.slides import write_synthetic_slide

    syn = write_synthetic_slide(
        tmp_path / "syn.tiff", width_px=2048, height_px=2048, mpp=0.5, seed=0, texture=False
    )
    grid = make_tile_grid(
        2048, 2048, 0.5, None, 2.0, 32, slide_id="syn", slide_path=str(syn.slide_path)
    )
    (tmp_path / "tiles").mkdir()
    grid.save(tmp_path / "tiles" / "tiles.npz")
    build = functools.partial(
        build_patch_store_from_annotations,
        [tmp_path / "tiles"],
        [syn.annotations_path],
        classes=BCSS_CLASSES,
        progress=False,
    )
    build(out=tmp_path / "ann.zarr")
    store = open_patch_store(tmp_path / "ann.zarr")
    # Reference: per tile, per class, annotated area fraction by plain shapely, one by one.
    anns = read_annotations(syn.annotations_path)
    union = shapely.union_all([a.geometry for a in anns])
    expected: dict[tuple[int, int], list[int]] = {}
    for x, y in zip(grid.x, grid.y, strict=True):
        tile = shp_box(x, y, x + 128, y + 128)
        frac = [
            sum(a.geometry.intersection(tile).area for a in anns if a.class_name == name)
            / tile.area
            for name in BCSS_CLASSES.foreground_names
        ]
        complete = union.intersection(tile).area / tile.area >= 0.9
        row = [1 if f >= 0.1 else (0 if complete else -1) for f in frac]
        if any(v != -1 for v in row):
            expected[(int(x), int(y))] = row
    coords = [tuple(int(v) for v in c) for c in store.coords[:]]
    assert len(coords) == len(expected) > 10  # patches without a known label are left out
    states = store.label_states()
    for c, row in zip(coords, states, strict=True):
        assert list(row) == expected[c], c
    assert (states == 1).sum(axis=0).min() > 0  # every class occurs on this slide

    build(out=tmp_path / "truth.zarr", truth_masks=[syn.mask_path])
    truth = open_patch_store(tmp_path / "truth.zarr")
    assert truth.known().all()
    for row, mask in zip(truth.label_states(), truth.masks[:], strict=True):
        share = np.bincount(mask.reshape(-1), minlength=5)[:4] / mask.size
        np.testing.assert_array_equal(row, (share >= 0.1).astype(np.int8))


def test_partly_annotated_patch_has_unknown_labels(tmp_path: Path, tiles: Path) -> None:
    """Half inside a TUM annotation, half unannotated: TUM positive, every other class unknown."""
    ann = tmp_path / "half.geojson"
    write_feature_collection_into(
        ann,
        [
            feature(box(0, 0, 32, 64), "TUM", (200, 0, 0)),  # left half of tile (0, 0)
            feature(box(128, 0, 192, 64), "TUM", (200, 0, 0)),  # all of tile (128, 0) …
            feature(box(128, 0, 136, 64), "STR", (255, 165, 0)),  # … and 1/8 of it STR
        ],
    )
    build_patch_store_from_annotations(
        [tiles], [ann], tmp_path / "s.zarr", BCSS_CLASSES, progress=False
    )
    store = open_patch_store(tmp_path / "s.zarr")
    assert [tuple(c) for c in store.coords[:]] == [(0, 0), (128, 0)]
    np.testing.assert_array_equal(store.label_states(), [[1, -1, -1, -1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(store.positive(), [[1, 0, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(store.known(), [[1, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(store.patch_level0_px(), [64.0])
    assert store.slide_mpp == [0.5]


def test_label_states_follow_tissue_fraction() -> None:
    """Negatives need the annotations to cover ≥ min_annotated_fraction of the patch's tissue."""
    class_fraction = np.array([[0.5, 0.0], [0.5, 0.0], [0.0, 0.05], [0.0, 0.0]])
    annotated = np.array([0.5, 0.5, 0.05, 0.0])
    tissue = np.array([1.0, 0.5, 0.05, 0.0])
    states = label_states(class_fraction, annotated, tissue, 0.1, 0.9)
    np.testing.assert_array_equal(states, [[1, -1], [1, 0], [0, 0], [-1, -1]])


def test_legacy_store_loads(tmp_path: Path) -> None:
    """A ``wsi-lpd-patches/1`` store (uint8 multi-hot, no slide_mpp) reads as all known."""
    import zarr

    group = zarr.open_group(tmp_path / "old.zarr", mode="w")
    group.create_array("images", data=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    group.create_array("labels", data=np.array([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=np.uint8))
    group.create_array("coords", data=np.array([[0, 0], [8, 0]], dtype=np.int64))
    group.create_array("slide_index", data=np.zeros(2, dtype=np.int32))
    group.attrs.update(
        {
            "format": "wsi-lpd-patches/1",
            "classes": BCSS_CLASSES.to_dict(),
            "mpp": 1.0,
            "patch_px": 8,
            "slides": ["old"],
        }
    )
    store = open_patch_store(tmp_path / "old.zarr")
    np.testing.assert_array_equal(store.label_states(), [[1, 0, 0, 1], [0, 0, 0, 0]])
    assert store.known().all() and store.slide_mpp == [None]
    assert np.isnan(store.patch_level0_px()).all()
    np.testing.assert_array_equal(store.slide_indices(), [0, 0])
