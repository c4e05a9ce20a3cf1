"""Stain colour in H&E images: shifts in HED space and Reinhard normalisation to a reference.

``shift_stain`` scales the haematoxylin and eosin concentrations of an RGB image (colour
deconvolution of Ruifrok & Johnston, ``skimage.color.rgb2hed``), which is how a slide stained in
another lab differs (stronger or weaker H and E). ``reinhard_stats`` / ``reinhard_normalise`` map
an image's CIELAB mean and spread over tissue to a reference (Reinhard et al. 2001), the classic
stain normalisation at inference.
"""

from __future__ import annotations

import numpy as np

TISSUE_MAX_LIGHTNESS = 88.0  # CIELAB L above this counts as glass background (not tissue)


def shift_stain(rgb: np.ndarray, h_scale: float, e_scale: float) -> np.ndarray:
    """RGB ``(..., 3)`` uint8 with haematoxylin × ``h_scale`` and eosin × ``e_scale`` -> uint8.

    Scales of 1 leave the image unchanged up to rounding; white glass stays white (zero stain).
    """
    from skimage.color import hed2rgb, rgb2hed

    if not (h_scale > 0 and e_scale > 0):
        raise ValueError(f"stain scales must be positive, got h={h_scale} e={e_scale}")
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (..., 3) uint8, got {rgb.dtype} {rgb.shape}")
    hed = rgb2hed(rgb)
    hed[..., 0] *= h_scale
    hed[..., 1] *= e_scale
    out = hed2rgb(hed)
    shifted: np.ndarray = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    return shifted


def reinhard_stats(rgb: np.ndarray) -> np.ndarray:
    """CIELAB mean and std over the tissue pixels of an RGB uint8 image -> (2, 3) float64.

    Tissue is every pixel darker than ``TISSUE_MAX_LIGHTNESS``; without any, all pixels count.
    """
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb.reshape(-1, 1, 3)).reshape(-1, 3)
    tissue = lab[lab[:, 0] < TISSUE_MAX_LIGHTNESS]
    if len(tissue) < 16:
        tissue = lab
    return np.stack([tissue.mean(0), tissue.std(0) + 1e-6])


def reinhard_normalise(rgb: np.ndarray, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map ``rgb`` (uint8) whose tissue has LAB stats ``source`` onto ``reference`` -> uint8.

    Background (glass, L above ``TISSUE_MAX_LIGHTNESS``) is left unchanged so tissue detection
    sees the same slide.
    """
    from skimage.color import lab2rgb, rgb2lab

    shape = rgb.shape
    lab = rgb2lab(rgb.reshape(-1, 1, 3)).reshape(-1, 3)
    tissue = lab[:, 0] < TISSUE_MAX_LIGHTNESS
    mapped = (lab - source[0]) / source[1] * reference[1] + reference[0]
    mapped[:, 0] = np.clip(mapped[:, 0], 0.0, 100.0)
    rgb_new = lab2rgb(mapped.reshape(-1, 1, 3)).reshape(-1, 3)
    out = rgb.reshape(-1, 3).copy()
    out[tissue] = np.clip(np.round(rgb_new[tissue] * 255.0), 0, 255).astype(np.uint8)
    return out.reshape(shape)
