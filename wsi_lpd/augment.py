"""Training augmentations in numpy: flips, 90° rotations, colour and HED stain jitter.

Geometric transforms are applied identically to the image and its mask; colour transforms touch
the image only. The LPD recipe (docs/lpd-method.md §1.6) is the default: horizontal and vertical
flip with p 0.5 each and a random multiple of 90° with p 0.5; colour and stain jitter are off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Augment:
    """Random augmentation of a ``(H, W, 3)`` uint8 RGB image and an optional ``(H, W)`` mask.

    ``color_jitter``: strength s of brightness/contrast/saturation factors drawn from [1-s, 1+s]
    (0 = off). ``hed_jitter``: σ of the HED stain jitter (Tellez et al. 2018): each of the
    haematoxylin, eosin and DAB channels of ``skimage.color.rgb2hed`` is scaled by U(1-σ, 1+σ) and
    shifted by U(-σ, σ) (0 = off; 0.05 is a mild setting). ``seed`` makes the sequence reproducible;
    :meth:`reseed` gives each data-loader worker its own stream.
    """

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90_p: float = 0.5
    color_jitter: float = 0.0
    hed_jitter: float = 0.0
    seed: int | None = None
    rng: np.random.Generator = field(init=False, repr=False)
    _stream_key: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("hflip_p", "vflip_p", "rot90_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.color_jitter < 1.0 or not 0.0 <= self.hed_jitter < 1.0:
            raise ValueError("color_jitter and hed_jitter must be in [0, 1)")
        self.rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int, key: object = None) -> None:
        """Restart the random stream from ``seed`` (e.g. a DataLoader worker's seed).

        With ``key``, only when it differs from the key of the last reseed, so several datasets
        sharing this object in one worker reseed it once.
        """
        if key is not None and key == self._stream_key:
            return
        self.rng = np.random.default_rng(seed)
        self._stream_key = key

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
        if self.color_jitter > 0:
            image = color_jitter(image, self.color_jitter, rng)
        if self.hed_jitter > 0:
            image = hed_jitter(image, self.hed_jitter, rng)
        image = np.ascontiguousarray(image)
        return image, None if mask is None else np.ascontiguousarray(mask)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors each from U(1-s, 1+s), in random order."""
    img = image.astype(np.float32)
    for op in rng.permutation(3):
        factor = float(rng.uniform(1.0 - strength, 1.0 + strength))
        if op == 0:
            img = img * factor
        elif op == 1:
            mean = float(np.mean(img @ np.array([0.299, 0.587, 0.114], np.float32)))
            img = (img - mean) * factor + mean
        else:
            grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            img = (img - grey) * factor + grey
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def hed_jitter(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Scale each HED channel by U(1-σ, 1+σ) and shift it by U(-σ, σ), back to RGB uint8."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=3)
    beta = rng.uniform(-sigma, sigma, size=3)
    rgb = hed2rgb(hed * alpha + beta)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
