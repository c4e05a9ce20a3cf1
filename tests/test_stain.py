"""Stain shift in HED space, Reinhard and Macenko normalisation (wsi_lpd.data.stain) and the
per-slide transform of inference (wsi_lpd.infer.stain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2hed

from wsi_lpd.data.stain import (
    StainTransform,
    reinhard_normalise,
    reinhard_stats,
    shift_stain,
    stain_statistics,
)


@pytest.fixture(scope="module")
def he_image() -> np.ndarray:
    """Pink field with purple nuclei and a strip of white glass (uint8 RGB)."""
    rng = np.random.default_rng(0)
    img = np.empty((64, 96, 3), np.uint8)
    img[:] = (225, 150, 200)
    yy, xx = np.mgrid[:64, :96]
    for cy, cx in rng.integers(4, 60, size=(12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12] = (90, 60, 150)
    img[:, 80:] = 255
    return img


def test_unit_scales_leave_the_image_unchanged(he_image) -> None:
    out = shift_stain(he_image, 1.0, 1.0)
    assert np.abs(out.astype(int) - he_image).max() <= 2
    assert (out[:, 80:] >= 253).all()  # glass stays white


def test_scales_move_the_stain_they_name(he_image) -> None:
    tissue = he_image[:, :80]
    h0, e0 = rgb2hed(tissue)[..., 0].mean(), rgb2hed(tissue)[..., 1].mean()
    strong_h = rgb2hed(shift_stain(tissue, 1.4, 1.0))
    weak_e = rgb2hed(shift_stain(tissue, 1.0, 0.6))
    assert strong_h[..., 0].mean() > 1.3 * h0
    assert abs(strong_h[..., 1].mean() - e0) < 0.1 * abs(e0)
    assert weak_e[..., 1].mean() < 0.7 * e0
    assert (shift_stain(tissue, 1.4, 1.0)[..., :2] <= tissue[..., :2].astype(int) + 1).all()


def test_shift_rejects_bad_input(he_image) -> None:
    with pytest.raises(ValueError, match="positive"):
        shift_stain(he_image, 0.0, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        shift_stain(he_image.astype(np.float32), 1.0, 1.0)


def test_reinhard_maps_a_shifted_image_back_towards_the_reference(he_image) -> None:
    ref = reinhard_stats(he_image)
    assert np.abs(reinhard_normalise(he_image, ref, ref).astype(int) - he_image).max() <= 2
    shifted = shift_stain(he_image, 0.6, 1.4)
    before = np.abs(reinhard_stats(shifted)[0] - ref[0]).sum()
    back = reinhard_normalise(shifted, reinhard_stats(shifted), ref)
    after = np.abs(reinhard_stats(back)[0] - ref[0]).sum()
    assert after < 0.2 * before
    assert (back[:, 80:] == 255).all()  # glass untouched


@pytest.fixture(scope="module")
def textured() -> np.ndarray:
    """An H&E-like image from haematoxylin and eosin concentrations varying independently,
    with white glass on the right (uint8 RGB, 96 × 128)."""
    from skimage.color import hed2rgb

    rng = np.random.default_rng(1)
    hed = np.zeros((96, 128, 3))
    hed[..., 0] = rng.uniform(0.0, 0.08, (96, 128))
    hed[..., 1] = rng.uniform(0.0, 0.06, (96, 128))
    rgb = np.clip(np.round(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)
    rgb[:, 112:] = 255
    return rgb


def _apply(transform: StainTransform, rgb: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return transform(batch)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("scales", [(0.5, 0.5), (1.5, 1.5), (0.5, 1.0), (1.0, 1.5)])
def test_reinhard_transform_maps_shifted_statistics_to_the_reference(textured, scales) -> None:
    reference = stain_statistics(textured)
    shifted = shift_stain(textured, *scales)
    out = _apply(StainTransform("reinhard", stain_statistics(shifted), reference), shifted)
    got, want = stain_statistics(out)["reinhard"], reference["reinhard"]
    # Exact in CIELAB before rounding to uint8 (≤ 0.5 per channel, well under 1 LAB unit here)
    # and before clipping to the RGB gamut; 1.5 LAB units leave room for both.
    assert np.abs(np.subtract(got["mean"], want["mean"])).max() < 1.5
    assert np.abs(np.subtract(got["std"], want["std"])).max() < 1.5
    assert (out[:, 112:] == 255).all()  # glass untouched


def test_macenko_transform_moves_a_shifted_image_towards_the_original(textured) -> None:
    reference = stain_statistics(textured)
    assert reference["macenko"] is not None
    stains = np.asarray(reference["macenko"]["stains"])
    assert stains[0, 0] > stains[1, 0]  # H first: it absorbs more red than E
    shifted = shift_stain(textured, 0.5, 1.4)
    out = _apply(StainTransform("macenko", stain_statistics(shifted), reference), shifted)
    tissue = (slice(None), slice(0, 112))
    before = np.abs(shifted[tissue].astype(int) - textured[tissue]).mean()
    after = np.abs(out[tissue].astype(int) - textured[tissue]).mean()
    assert after < 0.5 * before


def test_transform_matches_the_numpy_reinhard(textured) -> None:
    ref, shifted = stain_statistics(textured), shift_stain(textured, 0.7, 1.3)
    src = stain_statistics(shifted)
    expected = reinhard_normalise(
        shifted,
        np.array([src["reinhard"]["mean"], src["reinhard"]["std"]]),
        np.array([ref["reinhard"]["mean"], ref["reinhard"]["std"]]),
    )
    got = _apply(StainTransform("reinhard", src, ref), shifted)
    assert np.abs(got.astype(int) - expected).max() <= 1  # float32 vs float64 rounding


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_slide_transform_gives_overlapping_windows_identical_colour(
    tmp_path, textured, method
) -> None:
    """One transform per slide: the pixels two overlapping windows share come out identical,
    whatever else is in each window's batch (no seams)."""
    import tifffile

    from wsi_lpd.infer.stain import slide_stain_transform
    from wsi_lpd.slide.reader import open_slide

    big = np.tile(shift_stain(textured, 1.3, 0.7), (4, 4, 1))  # 384 × 512
    path = tmp_path / "s.tiff"
    tifffile.imwrite(path, big, tile=(128, 128), photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    slide = open_slide(path)
    contract = {"stain_reference": stain_statistics(textured), "mpp": 0.5}
    transform = slide_stain_transform(slide, method, contract)
    assert slide_stain_transform(slide, "none", contract) is None
    a = slide.read_region((0, 0), (96, 96), 0.5)
    b = slide.read_region((40, 24), (96, 96), 0.5)
    other = slide.read_region((300, 200), (96, 96), 0.5)
    out_a = _apply(transform, a)
    batch = torch.from_numpy(np.stack([other, b])).permute(0, 3, 1, 2)
    out_b = transform(batch)[1].permute(1, 2, 0).numpy()
    assert np.array_equal(out_a[24:, 40:], out_b[:72, :56])
    assert np.abs(out_a.astype(int) - a).mean() > 1  # the transform did change the colours
