"""Training augmentations in numpy: flips, 90° rotations, stain, brightness/contrast and blur.

Geometric transforms are applied identically to the image and its mask; colour transforms touch
the image only. The LPD recipe (docs/lpd-method.md §1.6) is the default: horizontal and vertical
flip with p 0.5 each and a random multiple of 90° with p 0.5; stain and colour jitter are off.

Stain robustness: ``stain_strength`` s (0-1) sets every stain/colour key at once to s times its
value in :data:`STAIN_PRESET` (at s = 1 haematoxylin and eosin are scaled by U(0.5, 1.5), the
shift other labs' staining gives); keys given explicitly win over the preset. The settings are a
plain dict (:meth:`Augment.to_dict` / :meth:`Augment.from_dict`) so a checkpoint can record them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, fields
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, Field

from wsi_lpd.settings import Section, parse_section

STAIN_PRESET: dict[str, float] = {
    "hed_jitter": 0.5,
    "hed_shift": 0.01,
    "brightness": 0.25,
    "contrast": 0.25,
    "saturation": 0.1,
    "blur_p": 0.25,
}
"""Stain/colour settings at ``stain_strength`` 1; each scales linearly with the strength."""

_PROBABILITIES = ("hflip_p", "vflip_p", "rot90_p", "blur_p")
_STRENGTHS = ("hed_jitter", "hed_shift", "brightness", "contrast", "saturation")


def _not_bool(value: Any) -> Any:
    """A number, not a YAML boolean (pydantic would read ``true`` as 1.0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


_Number = Annotated[float, BeforeValidator(_not_bool)]
_Probability = Annotated[_Number, Field(ge=0.0, le=1.0)]
_Strength = Annotated[_Number, Field(ge=0.0, lt=1.0)]


class AugmentConfig(Section):
    """``train.augment`` of a training config: what :class:`Augment` is built from (None: off,
    or from the ``stain_strength`` preset)."""

    hflip_p: _Probability = 0.5
    vflip_p: _Probability = 0.5
    rot90_p: _Probability = 0.5
    stain_strength: _Probability | None = None
    hed_jitter: _Strength | None = None
    hed_shift: _Strength | None = None
    brightness: _Strength | None = None
    contrast: _Strength | None = None
    saturation: _Strength | None = None
    blur_p: _Probability | None = None
    blur_sigma_px: Annotated[_Number, Field(gt=0.0)] = 1.0
    color_jitter: _Strength | None = None


@dataclass
class Augment:
    """Random augmentation of a ``(H, W, 3)`` uint8 RGB image and an optional ``(H, W)`` mask.

    - ``hed_jitter``: σ of the HED stain jitter (Tellez et al. 2018): each haematoxylin, eosin
      and DAB channel of ``skimage.color.rgb2hed`` is scaled by U(1-σ, 1+σ) and shifted by
      U(-δ, δ), δ = ``hed_shift`` (None: δ = σ, Tellez's recipe). 0 = off. The shift is in
      skimage's HED units, where stroma's haematoxylin is ≈ 0.015 and a nucleus's ≈ 0.09: a
      shift of 0.01 is already visible, Tellez's 0.05 is strong.
    - ``brightness``, ``contrast``, ``saturation``: strength s of factors from U(1-s, 1+s), applied
      in random order (contrast and saturation about the mean grey). ``color_jitter`` s (init only)
      sets all three to s where they are not given.
    - ``blur_p``: probability of a Gaussian blur with σ from U(0.1, ``blur_sigma_px``) px.
    - ``stain_strength``: preset for the keys above (see the module docstring); None = no preset.

    ``seed`` makes the sequence reproducible; :meth:`reseed` gives each data-loader worker its own
    stream.
    """

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90_p: float = 0.5
    stain_strength: float | None = None
    hed_jitter: float | None = None
    hed_shift: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    blur_p: float | None = None
    blur_sigma_px: float = 1.0
    seed: int | None = None
    color_jitter: InitVar[float | None] = None
    rng: np.random.Generator = field(init=False, repr=False)
    _stream_key: object = field(default=None, init=False, repr=False)

    def __post_init__(self, color_jitter: float | None) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name != "seed"}
        parse_section(AugmentConfig, {**given, "color_jitter": color_jitter}, None, "augment")
        strength = self.stain_strength
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) is None and color_jitter is not None:
                setattr(self, name, color_jitter)
        for name, full in STAIN_PRESET.items():
            if getattr(self, name) is None and strength is not None:
                setattr(self, name, full * strength)
        if self.hed_shift is None:
            self.hed_shift = self.hed_jitter
        for name in (*_PROBABILITIES, *_STRENGTHS):
            setattr(self, name, float(getattr(self, name) or 0.0))
        self.rng = np.random.default_rng(self.seed)

    # -- settings --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (resolved values; the seed is left out)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.init and f.name != "seed" and not f.name.startswith("_")
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, seed: int | None = None) -> Augment:
        """Build from a settings dict (``to_dict`` output or a config's ``augment`` section),
        validated by :class:`AugmentConfig` (one ``ConfigError`` line naming ``augment.<key>``)."""
        settings = parse_section(AugmentConfig, data, None, "augment")
        return cls(**settings.model_dump(exclude_none=True), seed=seed)

    def reseed(self, seed: int, key: object = None) -> None:
        """Restart the random stream from ``seed`` (e.g. a DataLoader worker's seed).

        With ``key``, only when it differs from the key of the last reseed, so several datasets
        sharing this object in one worker reseed it once.
        """
        if key is not None and key == self._stream_key:
            return
        self.rng = np.random.default_rng(seed)
        self._stream_key = key

    # -- application -----------------------------------------------------------------------------

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the augmented (image, mask); inputs are not modified."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
        rng = self.rng
        if rng.random() < self.hflip_p:
            image, mask = image[:, ::-1], None if mask is None else mask[:, ::-1]
        if rng.random() < self.vflip_p:
            image, mask = image[::-1], None if mask is None else mask[::-1]
        if rng.random() < self.rot90_p:
            k = int(rng.integers(1, 4))
            image = np.rot90(image, k, axes=(0, 1))
            mask = None if mask is None else np.rot90(mask, k, axes=(0, 1))
        sigma, shift = self.hed_jitter or 0.0, self.hed_shift or 0.0
        if sigma > 0 or shift > 0:
            image = hed_jitter(image, sigma, rng, shift)
        strengths = (self.brightness or 0.0, self.contrast or 0.0, self.saturation or 0.0)
        if any(strengths):
            image = color_jitter(image, strengths, rng)
        if self.blur_p and rng.random() < self.blur_p:
            image = gaussian_blur(image, float(rng.uniform(0.1, max(self.blur_sigma_px, 0.1))))
        image = np.ascontiguousarray(image)
        return image, None if mask is None else np.ascontiguousarray(mask)


_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def color_jitter(
    image: np.ndarray, strength: float | tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Brightness, contrast and saturation factors from U(1-s, 1+s) each, in random order.

    ``strength`` is one s for all three or (brightness, contrast, saturation); 0 leaves one out.
    """
    strengths = (strength,) * 3 if isinstance(strength, int | float) else tuple(strength)
    img = image.astype(np.float32)
    for op in rng.permutation(3):
        s = float(strengths[op])
        if s <= 0:
            continue
        factor = float(rng.uniform(1.0 - s, 1.0 + s))
        if op == 0:
            img = img * factor
        elif op == 1:
            mean = float(np.mean(img @ _GREY))
            img = (img - mean) * factor + mean
        else:
            grey = (img @ _GREY)[..., None]
            img = (img - grey) * factor + grey
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _hed_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """skimage's Ruifrok-Johnston HED matrices (float32) and the uint8 → optical-density LUT."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / _LOG_ADJUST
    return od.astype(np.float32), hed_from_rgb.astype(np.float32), rgb_from_hed.astype(np.float32)


_LOG_ADJUST = float(np.log(1e-6))
_HED: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def hed_jitter(
    image: np.ndarray, sigma: float, rng: np.random.Generator, shift: float | None = None
) -> np.ndarray:
    """Scale each HED channel by U(1-σ, 1+σ) and shift it by U(-δ, δ) (δ = ``shift``, default σ),
    back to RGB uint8.

    The same colour deconvolution as ``skimage.color.rgb2hed`` / ``hed2rgb`` (identical output),
    in float32 with an optical-density lookup table.
    """
    global _HED
    if _HED is None:
        _HED = _hed_matrices()
    lut, hed_from_rgb, rgb_from_hed = _HED
    delta = sigma if shift is None else shift
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=3).astype(np.float32)
    beta = rng.uniform(-delta, delta, size=3).astype(np.float32)
    hed = np.maximum(lut[image] @ hed_from_rgb, 0.0) * alpha + beta
    rgb = np.exp((hed * np.float32(_LOG_ADJUST)) @ rgb_from_hed)
    out: np.ndarray = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of an (H, W, 3) uint8 image, σ ``sigma_px`` px, edges mirrored."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(
        image.astype(np.float32), sigma=(sigma_px, sigma_px, 0), mode="mirror", truncate=3.0
    )
    result: np.ndarray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result
