"""Slides: metadata of a real Aperio slide, reads at a physical resolution, backends, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

import wsi_lpd.slide.reader as slide_module
from wsi_lpd.errors import (
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
    WsiLpdError,
)
from wsi_lpd.slide.reader import Slide, open_slide

MPP = 0.5  # level-0 µm/px of the synthetic fixtures


def reference(
    image: np.ndarray,
    location: tuple[float, float],
    size: tuple[int, int],
    mpp: float,
    slide_mpp: float = MPP,
) -> np.ndarray:
    """Exact area average of the level-0 image over each output pixel of the region.

    Independent of the code under test: the summed-area table of a piecewise-constant image is
    bilinear inside each pixel cell, so interpolating it bilinearly at the (fractional) output
    pixel corners gives each output pixel's exact integral.
    """
    f = mpp / slide_mpp
    x, y = location
    w, h = size
    table = np.zeros((image.shape[0] + 1, image.shape[1] + 1, image.shape[2]))
    table[1:, 1:] = image.astype(np.float64).cumsum(0).cumsum(1)

    def interpolate(values: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
        i0 = np.clip(np.floor(at).astype(int), 0, values.shape[axis] - 2)
        t = np.clip(at - i0, 0.0, 1.0)
        shape = [1, 1, 1]
        shape[axis] = -1
        t = t.reshape(shape)
        return np.take(values, i0, axis) * (1 - t) + np.take(values, i0 + 1, axis) * t

    corners = interpolate(table, y + np.arange(h + 1) * f, 0)
    corners = interpolate(corners, x + np.arange(w + 1) * f, 1)
    sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    return np.clip(np.rint(sums / (f * f)), 0, 255).astype(np.uint8)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------------------------------
# the real slide


def test_real_aperio_slide_metadata(cmu_slide_path: Path) -> None:
    with open_slide(cmu_slide_path) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499, abs=1e-3)
        assert slide.dimensions == (2220, 2967)
        assert slide.objective_power == 20
        assert slide.level_count == 1
        assert slide.level_downsamples == (1.0,)
        assert slide.bounds == (0, 0, 2220, 2967)
        assert slide.size_at_mpp(1.0) == (round(2220 * 0.499), round(2967 * 0.499))


def test_real_slide_read_matches_openslide(cmu_slide_path: Path) -> None:
    """A 224 px read at 1 µm/px is the area-average of OpenSlide's own level-0 pixels."""
    location, size, mpp = (700, 1500), (224, 224), 1.0
    with open_slide(cmu_slide_path) as slide:
        got = slide.read_region(location, size, mpp)
        f = mpp / slide.mpp
    osr = openslide.OpenSlide(str(cmu_slide_path))
    n = int(np.ceil(224 * f)) + 1
    raw = np.asarray(osr.read_region(location, 0, (n, n)).convert("RGB"))
    osr.close()
    want = reference(raw, (0, 0), size, mpp, slide_mpp=mpp / f)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    assert got.std() > 10  # tissue, not background
    assert mae(got, want) < 1.0


# --------------------------------------------------------------------------------------------------
# synthetic pyramids: reads at an mpp


def tissue_location(f: float, size: tuple[int, int], offset: tuple[int, int]) -> tuple[int, int]:
    """Level-0 top-left of a region of ``size`` output px at ``f`` level-0 px per output px,
    centred on the tissue of the default fixture, on the level-1 grid (4 px) plus ``offset``."""
    x = 4 * round((600 - size[0] / 2 * f) / 4)
    y = 4 * round((430 - size[1] / 2 * f) / 4)
    return x + offset[0], y + offset[1]


@pytest.mark.parametrize("layout", ["pages", "subifd", "ome", "untiled"])
def test_read_region_matches_downsample(make_tiff, layout: str) -> None:
    path, image = make_tiff(layout=layout)
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(MPP)
    assert slide.dimensions == (1024, 768)
    size = (100, 70)
    for mpp in (0.5, 1.0, 2.0, 3.3):
        f = mpp / MPP
        for offset in ((0, 0), (1, 3)):  # on / off the level-1 pixel grid
            location = tissue_location(f, size, offset)
            got = slide.read_region(location, size, mpp)
            assert got.shape == (70, 100, 3) and got.dtype == np.uint8
            want = reference(image, location, size, mpp)
            assert want.std() > 20  # the region holds tissue and structure
            err = mae(got, want)
            # one output px to the right: the read must be much closer to the right answer
            shifted = reference(image, (location[0] + f, location[1]), size, mpp)
            assert err < 1.5 and err < 0.5 * mae(got, shifted), (layout, mpp, location, err)


def test_read_region_half_pixel_offset_on_reduced_level(make_tiff) -> None:
    """At scale 1 on a reduced level, a location off the level grid is read at sub-pixel
    precision (area weights), not snapped to the nearest level px."""
    path, image = make_tiff()
    slide = open_slide(path)
    location = tissue_location(4.0, (100, 70), (2, 2))  # (100.5, 72.5) on level 1
    got = slide.read_region(location, (100, 70), 2.0)
    assert mae(got, reference(image, location, (100, 70), 2.0)) < 1.5


def test_pyramid_levels_and_backends(make_tiff) -> None:
    """OpenSlide reads top-level page pyramids; tifffile takes SubIFD pyramids, OME, untiled."""
    expected = {
        "pages": "openslide",
        "subifd": "tifffile",
        "ome": "tifffile",
        "untiled": "tifffile",
    }
    for layout, backend in expected.items():
        slide = open_slide(make_tiff(layout=layout)[0])
        assert slide.backend == backend, layout
        if layout == "untiled":
            assert slide.level_dimensions == ((1024, 768),)
            continue
        assert slide.level_dimensions == ((1024, 768), (256, 192), (64, 48)), layout
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0)), layout
        assert slide.bounds == (0, 0, 1024, 768)
        assert [slide.best_level_for_mpp(m) for m in (0.5, 1.0, 1.97, 2.0, 2.01, 7.9, 8.0, 50)] == [
            0,
            0,
            0,
            1,
            1,
            1,
            2,
            2,
        ]
    assert open_slide(make_tiff(layout="ome")[0]).vendor == "ome-tiff"


def test_ome_pixel_size_units(tmp_path: Path) -> None:
    """OME PhysicalSizeX in nm is converted to µm/px."""
    path = tmp_path / "nm.ome.tif"
    image = np.full((256, 256, 3), 200, np.uint8)
    tifffile.imwrite(
        path,
        image,
        ome=True,
        photometric="rgb",
        tile=(128, 128),
        compression="zlib",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 250.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250.0,
            "PhysicalSizeYUnit": "nm",
        },
    )
    slide = open_slide(path)
    assert slide.backend == "tifffile"
    assert slide.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("layout", ["pages", "untiled"])
def test_region_outside_slide_is_white(make_tiff, layout: str) -> None:
    path, image = make_tiff(layout=layout)
    slide = open_slide(path)
    w, h = slide.dimensions
    # top-left corner outside: 40 px left, 30 px above
    got = slide.read_region((-40, -30), (200, 150), 0.5)
    assert (got[:30] == 255).all() and (got[:, :40] == 255).all()
    np.testing.assert_array_equal(got[30:, 40:], image[:120, :160])
    # bottom-right corner outside at 1 µm/px (level 0) and 2 µm/px (level 1)
    for mpp in (1.0, 2.0):
        f = int(mpp / MPP)
        got = slide.read_region((w - 25 * f, h - 10 * f), (60, 40), mpp)
        assert (got[:, 25:] == 255).all() and (got[10:] == 255).all()
        want = reference(image, (w - 25 * f, h - 10 * f), (25, 10), mpp)
        assert mae(got[:10, :25], want) < 1.5
    # entirely outside
    assert (slide.read_region((w + 10, 0), (16, 16), 1.0) == 255).all()
    assert (slide.read_region((-500, -500), (16, 16), 2.0) == 255).all()


def test_thumbnail_shape_and_chunks(make_tiff, monkeypatch: pytest.MonkeyPatch) -> None:
    path, image = make_tiff()
    slide = open_slide(path)
    for mpp in (0.5, 3.3, 8.0, 1000.0):
        thumb = slide.thumbnail(mpp)
        w, h = slide.size_at_mpp(mpp)
        assert thumb.shape == (h, w, 3) and thumb.dtype == np.uint8
        assert (w, h) == (max(1, round(1024 * MPP / mpp)), max(1, round(768 * MPP / mpp)))
    # many small chunks give the same picture as one read
    whole = slide.read_region((0, 0), slide.size_at_mpp(3.3), 3.3)
    monkeypatch.setattr(slide_module, "MAX_CHUNK_LEVEL_PX", 40)
    chunked = slide.thumbnail(3.3)
    assert mae(chunked, whole) < 0.2
    assert mae(chunked, reference(image, (0, 0), slide.size_at_mpp(3.3), 3.3)) < 1.0


# --------------------------------------------------------------------------------------------------
# mpp


def test_mpp_override_and_missing_mpp(make_tiff) -> None:
    path, image = make_tiff(resolution=False)
    with pytest.raises(MissingMppError) as info:
        open_slide(path)
    assert str(path) in str(info.value)
    slide = open_slide(path, mpp=0.25)
    assert slide.mpp == 0.25
    assert slide.size_at_mpp(1.0) == (256, 192)
    # at 1 µm/px one output px covers 4 level-0 px under the override
    got = slide.read_region((100, 60), (50, 40), 1.0)
    assert mae(got, reference(image, (100, 60), (50, 40), 1.0, slide_mpp=0.25)) < 1.0
    # an override beats the file's own resolution tags
    tagged, _ = make_tiff()
    assert open_slide(tagged).mpp == pytest.approx(MPP)
    assert open_slide(tagged, mpp=0.3).mpp == 0.3
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            open_slide(tagged, mpp=bad)


def test_ome_without_pixel_size_needs_override(make_tiff) -> None:
    path, _ = make_tiff(layout="ome", mpp=None)
    with pytest.raises(MissingMppError):
        open_slide(path)
    assert open_slide(path, mpp=0.5).backend == "tifffile"


# --------------------------------------------------------------------------------------------------
# errors


def _open_and_read(path: Path) -> None:
    slide = open_slide(path)
    slide.thumbnail(0.5)


@pytest.mark.parametrize("keep", [4, 6, 100, 0.5])
def test_truncated_tiff_raises_typed_error(make_tiff, keep: float) -> None:
    path, _ = make_tiff()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with pytest.raises((SlideReadError, UnsupportedFormatError)) as info:
        _open_and_read(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    if keep in (4, 6, 0.5):  # a cut header or cut tile data: the file is a TIFF, unreadable
        assert isinstance(info.value, SlideReadError)


def test_not_a_slide_and_missing_path(tmp_path: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("this is a text file, not a slide\n" * 20)
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(text)
    assert str(text) in str(info.value)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedFormatError):
        open_slide(empty)
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError) as info2:
        open_slide(missing)
    assert str(missing) in str(info2.value)
    assert isinstance(info2.value, FileNotFoundError) and isinstance(info2.value, WsiLpdError)
    with pytest.raises(UnsupportedFormatError):
        open_slide(tmp_path)  # a directory


def test_invalid_region_arguments(make_tiff) -> None:
    slide = open_slide(make_tiff()[0])
    with pytest.raises(ValueError):
        slide.read_region((0, 0), (0, 10), 1.0)
    with pytest.raises(ValueError):
        slide.read_region((0, 0), (10, 10), 0.0)


# --------------------------------------------------------------------------------------------------
# pickling, closing


@pytest.mark.parametrize("layout", ["pages", "subifd"])
def test_pickled_slide_reads_same_pixels(make_tiff, layout: str) -> None:
    path, _ = make_tiff(layout=layout, resolution=False)
    slide = open_slide(path, mpp=0.4)
    before = slide.read_region((333, 222), (100, 80), 1.7)
    clone = pickle.loads(pickle.dumps(slide))
    assert isinstance(clone, Slide)
    assert clone.mpp == 0.4 and clone.backend == slide.backend
    assert clone.level_dimensions == slide.level_dimensions
    np.testing.assert_array_equal(clone.read_region((333, 222), (100, 80), 1.7), before)
    # closing releases the handle; the next read reopens it
    slide.close()
    np.testing.assert_array_equal(slide.read_region((333, 222), (100, 80), 1.7), before)
    slide.close()
    clone.close()
