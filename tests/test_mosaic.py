"""OME-Zarr mosaic layout: write, read back, pyramid, atomicity, third-party readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import DatasetError, MosaicIntegrityError
from wsi_lpd.formats.mosaic import (
    MANIFEST,
    MosaicWriter,
    downsample_probs,
    level_shapes,
    open_mosaic,
    write_mosaic,
)

META = dict(
    classes=BCSS_CLASSES,
    mpp=2.0,
    slide_mpp=0.5,
    level0_width=4400,
    level0_height=5200,
    slide_id="s1",
    slide_path="/data/s1.svs",
    model_sha256="ab" * 32,
    parameters={"overlap": 0.25},
)


def _random_probs(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (5, h, w), dtype=np.uint8)


@pytest.fixture(scope="module")
def mosaic_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    probs = _random_probs(1300, 1100)
    path = tmp_path_factory.mktemp("m") / "s1.ome.zarr"
    write_mosaic(path, probs, **META)
    return path, probs


def test_level_shapes_halve_down_to_512() -> None:
    assert level_shapes(1300, 1100) == [(1300, 1100), (650, 550), (325, 275)]
    assert level_shapes(512, 100) == [(512, 100)]
    assert level_shapes(513, 3) == [(513, 3), (257, 2)]


def test_downsample_is_rounded_mean_with_edge_replication() -> None:
    block = np.array([[[0, 1, 10], [3, 4, 20], [100, 200, 255]]], dtype=np.uint8)
    out = downsample_probs(block)
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == 2  # (0+1+3+4)/4 = 2
    assert out[0, 0, 1] == 15  # (10+20+10+20)/4
    assert out[0, 1, 0] == 150  # (100+200)*2/4
    assert out[0, 1, 1] == 255


def test_roundtrip_attrs_and_levels(mosaic_path: tuple[Path, np.ndarray]) -> None:
    path, probs = mosaic_path
    m = open_mosaic(path)
    assert np.array_equal(m.probs[:], probs)
    assert np.array_equal(m.labels[:], probs.argmax(0))
    assert m.classes == BCSS_CLASSES
    assert m.level0_per_px == 4.0 and m.mpp == 2.0
    assert m.attrs["level0_width"] == 4400 and m.attrs["bounds"] == [0, 0, 4400, 5200]
    assert m.attrs["parameters"] == {"overlap": 0.25}
    assert m.probs.chunks == (5, 512, 512) and m.labels.chunks == (512, 512)
    assert m.num_levels == 3
    lvl1 = m.level(1)
    assert lvl1.level0_per_px == 8.0
    assert np.array_equal(lvl1.probs[:], downsample_probs(probs))
    assert np.array_equal(lvl1.labels[:], downsample_probs(probs).argmax(0))
    lvl2 = m.level(2)
    assert np.array_equal(lvl2.probs[:], downsample_probs(downsample_probs(probs)))
    with pytest.raises(IndexError):
        m.level(3)


def test_ngff_metadata(mosaic_path: tuple[Path, np.ndarray]) -> None:
    path, _ = mosaic_path
    g = zarr.open_group(str(path), mode="r")
    ome = g.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 8.0, 8.0]
    assert [c["label"] for c in ome["omero"]["channels"]] == BCSS_CLASSES.names
    assert ome["omero"]["channels"][0]["color"] == "C80000"
    assert g["labels"].attrs["ome"]["labels"] == ["classes"]
    assert g["0"].metadata.dimension_names == ("c", "y", "x")


def test_opens_with_dask_and_ome_zarr_reader(mosaic_path: tuple[Path, np.ndarray]) -> None:
    import dask.array as da
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, probs = mosaic_path
    arr = da.from_zarr(str(path), component="0")
    assert arr.shape == probs.shape
    assert int(arr[2].sum().compute()) == int(probs[2].astype(np.int64).sum())

    nodes = list(Reader(parse_url(str(path)))())
    image = [n for n in nodes if any(type(s).__name__ == "OMERO" for s in n.specs)]
    label = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(image) == 1 and len(label) == 1
    assert [d.shape for d in image[0].data] == [(5, 1300, 1100), (5, 650, 550), (5, 325, 275)]
    assert [d.shape for d in label[0].data] == [(1300, 1100), (650, 550), (325, 275)]
    props = label[0].metadata["properties"]
    assert props[0]["name"] == "BACK" and props[1]["name"] == "TUM" and props[4]["name"] == "NEC"


def test_validates_against_ngff_05_models(mosaic_path: tuple[Path, np.ndarray]) -> None:
    models = pytest.importorskip("ome_zarr_models.v05")
    path, _ = mosaic_path
    g = zarr.open_group(str(path), mode="r")
    models.Image.from_zarr(g)
    label = models.ImageLabel.from_zarr(g["labels"]["classes"])
    assert len(label.attributes.ome.image_label.colors) == 5


def test_exception_leaves_nothing_and_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "s1.ome.zarr"
    writer = MosaicWriter(path, height_px=600, width_px=300, **META)
    with pytest.raises(RuntimeError, match="boom"), writer as w:
        w.write_band(0, np.zeros((5, 512, 300), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    old = _random_probs(100, 80, seed=1)
    write_mosaic(path, old, **META)
    with pytest.raises(RuntimeError), MosaicWriter(path, height_px=100, width_px=80, **META):
        raise RuntimeError("boom")
    assert np.array_equal(open_mosaic(path).probs[:], old)
    assert [p.name for p in tmp_path.iterdir()] == ["s1.ome.zarr"]

    new = _random_probs(100, 80, seed=2)
    write_mosaic(path, new, **META)  # a rerun replaces the finished mosaic
    assert np.array_equal(open_mosaic(path).probs[:], new)
    assert [p.name for p in tmp_path.iterdir()] == ["s1.ome.zarr"]


def test_band_checks(tmp_path: Path) -> None:
    w = MosaicWriter(tmp_path / "x.ome.zarr", height_px=1100, width_px=64, **META)
    with pytest.raises(ValueError, match="multiple of 512"):
        w.write_band(0, np.zeros((5, 100, 64), np.uint8))
    with pytest.raises(ValueError, match="expected 0"):
        w.write_band(512, np.zeros((5, 512, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        w.write_band(0, np.zeros((4, 512, 64), np.uint8))
    w.write_band(0, np.zeros((5, 512, 64), np.uint8))
    with pytest.raises(ValueError, match="rows were written"):
        w.close()
    w.abort()
    assert not (tmp_path / "x.ome.zarr").exists()


def test_custom_classes_and_not_a_mosaic(tmp_path: Path) -> None:
    classes = ClassList.from_names(["A", "B"], background="BG")
    meta = {**META, "classes": classes}
    probs = np.zeros((3, 40, 50), np.uint8)
    probs[1] = 255
    path = write_mosaic(tmp_path / "c.ome.zarr", probs, **meta)
    m = open_mosaic(path)
    assert m.classes.names == ["A", "B", "BG"]
    assert (m.labels[:] == 1).all() and m.num_levels == 1
    with pytest.raises(DatasetError, match="not found"):
        open_mosaic(tmp_path / "missing.ome.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(DatasetError, match=r"plain\.zarr"):
        open_mosaic(tmp_path / "plain.zarr")


def test_labels_stored_with_zero_background_read_as_class_indices(
    mosaic_path: tuple[Path, np.ndarray],
) -> None:
    path, probs = mosaic_path
    m = open_mosaic(path)
    argmax = probs.argmax(0)
    stored = zarr.open_group(str(path), mode="r")["labels"]["classes"]["0"][:]
    assert np.array_equal(stored, (argmax + 1) % 5)  # BACK (4) → 0, TUM (0) → 1, …
    assert np.array_equal(m.labels[100:300, 7:9], argmax[100:300, 7:9])
    assert np.array_equal(np.asarray(m.level(1).labels), downsample_probs(probs).argmax(0))
    colors = zarr.open_group(str(path), mode="r")["labels"]["classes"].attrs["ome"]
    values = {c["label-value"]: c["rgba"][3] for c in colors["image-label"]["colors"]}
    assert values == {0: 0, 1: 255, 2: 255, 3: 255, 4: 255}  # every class visible in napari


def test_old_layout_still_reads(tmp_path: Path) -> None:
    probs = _random_probs(64, 48, seed=3)
    path = write_mosaic(tmp_path / "old.ome.zarr", probs, **META)
    g = zarr.open_group(str(path), mode="r+")
    g["labels"]["classes"]["0"][:] = probs.argmax(0).astype(np.uint8)  # v1: background = 4
    g.attrs["wsi_lpd"] = {**g.attrs["wsi_lpd"], "format": "wsi-lpd-mosaic/1"}
    (path / MANIFEST).unlink()
    m = open_mosaic(path)
    assert np.array_equal(m.labels[:], probs.argmax(0))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_or_altered_chunk_is_refused_by_name(
    mosaic_path: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    src, _ = mosaic_path
    assert open_mosaic(src).num_levels == 3  # untouched: opens
    data = _copy(src, tmp_path / "data.ome.zarr")
    (data / "0" / "c" / "0" / "1" / "1").unlink()
    with pytest.raises(MosaicIntegrityError, match=r"data\.ome\.zarr: chunk 0/c/0/1/1 is missing"):
        open_mosaic(data)
    label = _copy(src, tmp_path / "label.ome.zarr")
    (label / "labels/classes/1/c/0/1").unlink()
    with pytest.raises(MosaicIntegrityError, match="chunk labels/classes/1/c/0/1"):
        open_mosaic(label)
    altered = _copy(src, tmp_path / "altered.ome.zarr")
    chunk = altered / "0" / "c" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert open_mosaic(altered).num_levels == 3  # same size: the cheap check passes
    with pytest.raises(MosaicIntegrityError, match="0/c/0/0/0 was altered"):
        open_mosaic(altered, verify="checksums")
    chunk.write_bytes(bytes(raw[:-1]))
    with pytest.raises(MosaicIntegrityError, match="was altered"):
        open_mosaic(altered)
    (altered / MANIFEST).unlink()
    with pytest.raises(MosaicIntegrityError, match=r"manifest\.json missing"):
        open_mosaic(altered)


def test_parallel_pyramid_equals_serial(tmp_path: Path) -> None:
    probs = _random_probs(1100, 1300, seed=4)
    a = write_mosaic(tmp_path / "a.ome.zarr", probs, **META)
    b = write_mosaic(tmp_path / "b.ome.zarr", probs, workers=2, **META)
    for k in (1, 2):
        assert np.array_equal(open_mosaic(a).level(k).probs[:], open_mosaic(b).level(k).probs[:])
        assert np.array_equal(open_mosaic(a).level(k).labels[:], open_mosaic(b).level(k).labels[:])
