"""Stain, brightness/contrast and blur augmentation: determinism, value ranges, settings dicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed

from wsi_lpd.data.augment import STAIN_PRESET, Augment, color_jitter, gaussian_blur, hed_jitter
from wsi_lpd.errors import ConfigError

NO_GEOMETRY = {"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0}


def _he_image(seed: int = 0) -> np.ndarray:
    """A 32×32 H&E-like image: pink stroma, purple nuclei, some noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((32, 32, 3), dtype=np.float32)
    image[:] = (215, 140, 190)
    image[8:20, 6:18] = (110, 70, 160)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_same_seed_same_sequence_other_seed_differs() -> None:
    image = _he_image()
    a, b, c = (Augment(stain_strength=1.0, blur_p=0.5, seed=s) for s in (3, 3, 4))
    outs_a = [a(image)[0] for _ in range(6)]
    outs_b = [b(image)[0] for _ in range(6)]
    outs_c = [c(image)[0] for _ in range(6)]
    for x, y in zip(outs_a, outs_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(outs_a, outs_c, strict=True))
    assert len({o.tobytes() for o in outs_a}) == 6  # every call draws new factors
    for out in outs_a:
        assert out.dtype == np.uint8 and out.shape in {(32, 32, 3)}


def test_hed_jitter_matches_skimage_and_scales_stains_within_sigma() -> None:
    image = _he_image()
    draws = np.random.default_rng(1)
    alpha, beta = draws.uniform(0.6, 1.4, 3), draws.uniform(-0.02, 0.02, 3)
    reference = np.clip(np.rint(hed2rgb(rgb2hed(image) * alpha + beta) * 255), 0, 255)
    out = hed_jitter(image, 0.4, np.random.default_rng(1), shift=0.02)
    assert np.abs(out.astype(int) - reference).max() <= 1
    h0 = rgb2hed(image)[..., :2].mean(axis=(0, 1))
    for seed in range(8):
        scaled = rgb2hed(hed_jitter(image, 0.4, np.random.default_rng(seed), shift=0.0))
        ratio = scaled[..., :2].mean(axis=(0, 1)) / h0  # haematoxylin, eosin
        assert ((ratio > 0.6 - 0.05) & (ratio < 1.4 + 0.05)).all(), ratio


def test_brightness_and_contrast_stay_within_their_factors() -> None:
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    image[:4] = 60
    rng = np.random.default_rng(0)
    for _ in range(20):
        bright = color_jitter(image, (0.2, 0.0, 0.0), rng).astype(float)
        ratio = bright / image
        assert ratio.min() > 0.8 - 0.01 and ratio.max() < 1.2 + 0.01
        assert np.ptp(ratio) < 0.02  # one factor for the whole patch
        contrast = color_jitter(image, (0.0, 0.3, 0.0), rng).astype(float)
        assert abs(contrast.mean() - image.mean()) <= 1  # about the mean grey
        spread = (contrast[0, 0, 0] - contrast[-1, 0, 0]) / (60 - 100)
        assert 0.7 - 0.03 < spread < 1.3 + 0.03


def test_blur_smooths_and_keeps_flat_images() -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    blurred = gaussian_blur(noisy, 1.0)
    assert blurred.dtype == np.uint8 and blurred.shape == noisy.shape
    assert blurred.astype(float).std() < 0.6 * noisy.astype(float).std()
    flat = np.full((9, 9, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, 0.8), flat)
    always = Augment(**NO_GEOMETRY, blur_p=1.0, blur_sigma_px=1.0, seed=0)
    assert always(noisy)[0].astype(float).std() < noisy.astype(float).std()


def test_off_by_default_and_preset_scaling() -> None:
    image = _he_image()
    np.testing.assert_array_equal(Augment(**NO_GEOMETRY, seed=0)(image)[0], image)
    half = Augment(stain_strength=0.5)
    for key, full in STAIN_PRESET.items():
        assert getattr(half, key) == pytest.approx(0.5 * full), key
    explicit = Augment(stain_strength=0.5, hed_jitter=0.1, blur_p=0.0)
    assert explicit.hed_jitter == 0.1 and explicit.blur_p == 0.0  # explicit keys win
    assert explicit.brightness == pytest.approx(0.5 * STAIN_PRESET["brightness"])
    tellez = Augment(hed_jitter=0.05)
    assert tellez.hed_shift == 0.05  # without a preset the shift follows σ
    legacy = Augment(color_jitter=0.1)
    assert legacy.brightness == legacy.contrast == legacy.saturation == 0.1


def test_settings_round_trip_through_json() -> None:
    aug = Augment(stain_strength=0.3, contrast=0.05, rot90_p=0.0, seed=9)
    settings = aug.to_dict()
    assert "seed" not in settings and settings["stain_strength"] == 0.3
    again = Augment.from_dict(json.loads(json.dumps(settings)), seed=9)
    assert again.to_dict() == settings
    image = _he_image()
    np.testing.assert_array_equal(aug(image)[0], again(image)[0])
    from_strings = Augment.from_dict({"hed_jitter": "5e-2", "color_jitter": 0.1})
    assert from_strings.hed_jitter == 0.05 and from_strings.saturation == 0.1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hed_jiter": 0.1}, r"augment\.hed_jiter: unknown key"),
        ({"brightness": "strong"}, r"augment\.brightness: .*valid number"),
        ({"blur_p": 1.5}, r"augment\.blur_p: .*less than or equal to 1"),
        ({"hed_jitter": 1.0}, r"augment\.hed_jitter: .*less than 1"),
        ({"stain_strength": 2}, r"augment\.stain_strength: .*less than or equal to 1"),
        ({"blur_sigma_px": 0}, r"augment\.blur_sigma_px: .*greater than 0"),
        ({"contrast": True}, r"augment\.contrast: .*not true/false"),
    ],
)
def test_bad_settings_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Augment.from_dict(data)
