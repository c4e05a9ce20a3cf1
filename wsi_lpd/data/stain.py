"""Stain colour in H&E images: shifts in HED space and Reinhard normalisation to a reference.

``shift_stain`` scales the haematoxylin and eosin concentrations of an RGB image (colour
deconvolution of Ruifrok & Johnston, ``skimage.color.rgb2hed``), which is how a slide stained in
another lab differs (stronger or weaker H and E). ``reinhard_stats`` / ``reinhard_normalise`` map
an image's CIELAB mean and spread over tissue to a reference (Reinhard et al. 2001), the classic
stain normalisation at inference. ``StainTransform`` applies Reinhard or Macenko (2009)
normalisation to window batches in torch, with statistics from ``stain_statistics``.
"""

from __future__ import annotations

from typing import Any

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


# --- stain normalisation at inference ---------------------------------------------------------
# Statistics are plain dicts (stored in model.pt as the ``stain_reference`` entry):
#   {"reinhard": {"mean": [L, a, b], "std": [L, a, b]},
#    "macenko": {"stains": [[r, g, b] (H), [r, g, b] (E)], "max_conc": [h, e]}, "pixels": n}
# A transform is a per-pixel function of the RGB value once the slide's source statistics are
# fixed, so windows normalised one by one join without seams.

STAIN_METHODS = ("none", "reinhard", "macenko")
MACENKO_OD_MIN = 0.15  # optical density below which a pixel is glass (Macenko et al. 2009)
MACENKO_ANGLE_PERCENTILE = 1.0  # robust extremes of the stain angles (%)
MACENKO_MAX_PERCENTILE = 99.0  # robust maximum of the stain concentrations (%)
MAX_STAT_PIXELS = 1_000_000  # pixels sampled for statistics (bounds memory and time)
STAT_WINDOWS = 64  # windows read per slide for its statistics
STAT_WINDOW_PX = 256  # their side, at the model's µm/px


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density (Beer-Lambert, I0 = 255) of uint8 RGB (N, 3) -> float64 (N, 3)."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def _sample(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most MAX_STAT_PIXELS pixels (N, 3) of an RGB array, a fixed random subset."""
    flat = rgb.reshape(-1, 3)
    if len(flat) <= MAX_STAT_PIXELS:
        return flat
    idx = np.random.default_rng(seed).choice(len(flat), MAX_STAT_PIXELS, replace=False)
    return flat[np.sort(idx)]


def macenko_stats(rgb: np.ndarray) -> dict[str, list[Any]]:
    """Macenko et al. 2009: H and E optical-density vectors (unit, H first) and the 99th
    percentile concentration of each over the tissue pixels of an RGB uint8 image."""
    od = _od(_sample(rgb))
    tissue = od[np.all(od > MACENKO_OD_MIN, axis=1)]
    if len(tissue) < 16:
        raise ValueError("too few stained pixels to estimate stain vectors (blank image?)")
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    plane = plane * np.where(plane.sum(0) < 0, -1.0, 1.0)  # positive OD directions
    proj = tissue @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [MACENKO_ANGLE_PERCENTILE, 100 - MACENKO_ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1])  # H absorbs more red than E
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, tissue.T, rcond=None)[0]
    max_conc = np.percentile(conc, MACENKO_MAX_PERCENTILE, axis=1)
    if not np.all(np.isfinite(stains)) or not np.all(max_conc > 0):
        raise ValueError("degenerate stain estimate (one stain only?)")
    return {"stains": stains.tolist(), "max_conc": max_conc.tolist()}


def stain_statistics(rgb: np.ndarray) -> dict[str, Any]:
    """Reinhard and Macenko statistics of the tissue in an RGB uint8 array (any shape (..., 3));
    Macenko is left out (None) when no two stains can be told apart."""
    pixels = _sample(np.asarray(rgb, dtype=np.uint8))
    lab = reinhard_stats(pixels)
    try:
        macenko: dict[str, list[Any]] | None = macenko_stats(pixels)
    except ValueError:
        macenko = None
    return {
        "reinhard": {"mean": lab[0].tolist(), "std": lab[1].tolist()},
        "macenko": macenko,
        "pixels": len(pixels),
    }


def check_stain_statistics(stats: Any, where: str) -> dict[str, Any]:
    """The statistics dict checked for shape and finiteness; ValueError naming ``where``."""
    try:
        mean = np.asarray(stats["reinhard"]["mean"], dtype=np.float64)
        std = np.asarray(stats["reinhard"]["std"], dtype=np.float64)
        ok = bool(mean.shape == (3,) and std.shape == (3,) and np.all(std > 0))
        if stats.get("macenko") is not None:
            m = stats["macenko"]
            ok = ok and np.asarray(m["stains"], dtype=np.float64).shape == (2, 3)
            ok = ok and bool(np.all(np.asarray(m["max_conc"], dtype=np.float64) > 0))
        ok = ok and bool(np.all(np.isfinite(mean)) and np.all(np.isfinite(std)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed stain statistics ({exc})") from exc
    if not ok:
        raise ValueError(f"{where}: malformed stain statistics")
    return dict(stats)


# sRGB (D65) <-> CIELAB in torch, matching skimage.color.rgb2lab / lab2rgb.
_RGB2XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _rgb_to_lab(rgb: Any) -> Any:
    """float (N, 3) sRGB in [0, 1] -> CIELAB (torch)."""
    import torch

    m = torch.tensor(_RGB2XYZ, dtype=rgb.dtype, device=rgb.device)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ m.T / torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1
    )


def _lab_to_rgb(lab: Any) -> Any:
    """CIELAB (N, 3) -> sRGB in [0, 1] (torch, clipped)."""
    import torch

    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1).clamp_min(0)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787)
    xyz = xyz * torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device)
    m_inv = torch.linalg.inv(torch.tensor(_RGB2XYZ, dtype=lab.dtype, device=lab.device))
    lin = (xyz @ m_inv.T).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)


class StainTransform:
    """Per-pixel stain normalisation of uint8 batches (B, 3, H, W) from a slide's ``source``
    statistics to ``reference`` (both :func:`stain_statistics` dicts), on any torch device.

    ``reinhard``: tissue pixels (CIELAB L < TISSUE_MAX_LIGHTNESS) get the reference LAB mean
    and spread; glass is left as it is. ``macenko``: H and E concentrations against the source's
    stain vectors, rescaled to the reference's maxima and recombined with its vectors.
    """

    def __init__(self, method: str, source: dict[str, Any], reference: dict[str, Any]) -> None:
        if method not in ("reinhard", "macenko"):
            raise ValueError(f"stain_normalise: expected reinhard or macenko, got {method!r}")
        unknown = source.get("macenko") is None or reference.get("macenko") is None
        if method == "macenko" and unknown:
            raise ValueError("macenko: the stain vectors of the slide or the reference are unknown")
        self.method, self.source, self.reference = method, source, reference

    def __call__(self, images_u8: Any) -> Any:
        import torch

        b, _, h, w = images_u8.shape
        x = images_u8.permute(0, 2, 3, 1).reshape(-1, 3).to(torch.float32)
        out = self._reinhard(x) if self.method == "reinhard" else self._macenko(x)
        out = out.round().clamp(0, 255).to(torch.uint8)
        return out.reshape(b, h, w, 3).permute(0, 3, 1, 2).contiguous()

    def _reinhard(self, x: Any) -> Any:
        import torch

        def t(v: Any) -> Any:
            return torch.tensor(v, dtype=torch.float32, device=x.device)

        src, ref = self.source["reinhard"], self.reference["reinhard"]
        lab = _rgb_to_lab(x / 255.0)
        mapped = (lab - t(src["mean"])) / t(src["std"]) * t(ref["std"]) + t(ref["mean"])
        mapped[:, 0] = mapped[:, 0].clamp(0.0, 100.0)
        rgb = _lab_to_rgb(mapped) * 255.0
        tissue = (lab[:, 0] < TISSUE_MAX_LIGHTNESS)[:, None]
        return torch.where(tissue, rgb, x)

    def _macenko(self, x: Any) -> Any:
        import torch

        def t(v: Any) -> Any:
            return torch.tensor(v, dtype=torch.float32, device=x.device)

        src, ref = self.source["macenko"], self.reference["macenko"]
        od = -torch.log((x + 1.0) / 256.0)
        conc = od @ torch.linalg.pinv(t(src["stains"]))  # (N, 2)
        conc = conc * (t(ref["max_conc"]) / t(src["max_conc"]))
        return 256.0 * torch.exp(-(conc @ t(ref["stains"]))) - 1.0


def read_stain_thumbnail(slide: Any, max_side_px: int = 2048, min_mpp: float = 8.0) -> np.ndarray:
    """The whole slide read once at low resolution: at least ``min_mpp`` µm/px and at most
    ``max_side_px`` px on the long side (bounded memory whatever the slide size)."""
    width0, height0 = (int(v) for v in slide.dimensions)
    mpp = max(min_mpp, slide.mpp * max(width0, height0) / max_side_px)
    s = mpp / slide.mpp
    size = (max(1, int(width0 / s)), max(1, int(height0 / s)))
    region: np.ndarray = slide.read_region((0, 0), size, mpp)
    return region


def slide_stain_statistics(
    slide: Any, mpp: float, windows: int = STAT_WINDOWS, window_px: int = STAT_WINDOW_PX
) -> dict[str, Any]:
    """:func:`stain_statistics` of a slide at ``mpp`` µm/px (the model's, as the training
    patches' reference): ``windows`` windows of ``window_px`` px centred on tissue pixels of one
    low-resolution read (:func:`read_stain_thumbnail`), drawn with a fixed seed. Statistics of
    the low-resolution read itself would not do: averaging pixels narrows the colour spread and
    lowers the stain maxima. Memory: the read plus the windows, whatever the slide size."""
    from skimage.color import rgb2lab

    thumb = read_stain_thumbnail(slide)
    lightness = rgb2lab(thumb)[..., 0]
    ys, xs = np.nonzero(lightness < TISSUE_MAX_LIGHTNESS)
    if len(ys) == 0:
        return stain_statistics(thumb)
    pick = np.random.default_rng(0).choice(len(ys), min(windows, len(ys)), replace=False)
    width0, height0 = (int(v) for v in slide.dimensions)
    per_px = (width0 / thumb.shape[1], height0 / thumb.shape[0])  # level-0 px per read px
    half0 = 0.5 * window_px * mpp / slide.mpp
    reads = []
    for i in np.sort(pick):
        x = round((xs[i] + 0.5) * per_px[0] - half0)
        y = round((ys[i] + 0.5) * per_px[1] - half0)
        reads.append(slide.read_region((x, y), (window_px, window_px), mpp).reshape(-1, 3))
    return stain_statistics(np.concatenate(reads))


def _raw_patches(dataset: Any) -> list[tuple[Any, list[int]]]:
    """(reader, item indices) pairs giving the raw RGB uint8 patches of a training dataset:
    a PatchDataset (its store's images), a BCSS-WSSS folder (its PNGs) or a ConcatDataset."""
    if hasattr(dataset, "datasets"):  # torch ConcatDataset
        return [pair for d in dataset.datasets for pair in _raw_patches(d)]
    if hasattr(dataset, "store_path") and hasattr(dataset, "indices"):
        from wsi_lpd.formats.patch_store import open_patch_store

        store = open_patch_store(dataset.store_path)
        return [(lambda j, s=store: np.asarray(s.images[j]), [int(j) for j in dataset.indices])]
    if isinstance(getattr(dataset, "images", None), list):
        from wsi_lpd.data.datasets import read_png_rgb

        return [(lambda j, d=dataset: read_png_rgb(d.images[j]), list(range(len(dataset.images))))]
    return []


def training_stain_statistics(dataset: Any, max_patches: int = 256) -> dict[str, Any] | None:
    """:func:`stain_statistics` of up to ``max_patches`` training patches (evenly spaced over
    the dataset) -> the reference stored in model.pt; None when the dataset exposes no raw
    patches or holds no tissue."""
    sources = _raw_patches(dataset)
    total = sum(len(idx) for _, idx in sources)
    if total == 0:
        return None
    keep = set(np.linspace(0, total - 1, min(total, max_patches)).round().astype(int).tolist())
    pixels, n = [], 0
    for read, idx in sources:
        for j in idx:
            if n in keep:
                pixels.append(read(j).reshape(-1, 3))
            n += 1
    stats = stain_statistics(np.concatenate(pixels))
    return stats if stats["pixels"] > 0 else None
