"""Stain shift in HED space and Reinhard normalisation (wsi_lpd.data.stain)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed

from wsi_lpd.data.stain import reinhard_normalise, reinhard_stats, shift_stain


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
