"""Artefacts on a slide: pen marks, out-of-focus regions, tissue folds / dark debris, bubbles.

All rules run on the tissue step's thumbnail (``tissue_mpp`` µm/px, one mask pixel per thumbnail
pixel) except sharpness, which needs a finer read (``blur_mpp``) done in chunks whose results
are reduced to the thumbnail grid at once (memory: one chunk plus a few thumbnail-sized maps).

- **pen**: ink is saturated with hues H&E never has (green/cyan/blue 60–215°; 215–260° only
  where red < 0.4 × blue: H&E's haematoxylin sits at ≥ 240° with red ≥ 0.47 × blue, eosin at
  290–350°), red ink is saturated beyond eosin near 345–25°, black ink is darker than any
  tissue (brightest channel ≤ ``pen_black_max_value``).
- **blur**: sharpness = √(fine-band energy / coarser-band energy) of the green channel at
  ``blur_mpp`` (differences of Gaussians σ = 0 → 1 px vs 1 → 2 px, summed over 3×3 cells):
  contrast-free, so pale stroma and dense tumour score alike while a blur drops the fine band
  first. A cell is out of focus below ``blur_sharpness_ratio`` × the slide's own 75th percentile.
- **fold**: optical density (sum over RGB, averaged over ~12 µm) above ``fold_od_ratio`` × the
  slide's own tissue median *and* above ``fold_local_ratio`` × the surrounding tissue's mean
  (σ = 160 µm): a doubled layer is darker than the slide and than its neighbourhood, a dense
  single-layer region (tumour, lymphocytes) only than the slide.
- **bubble**: thin dark outlines (below ``bubble_rim_ratio`` × a 7-px local median) that
  enclose a round region (compactness ≥ 0.6); the enclosed region is the artefact.

Each class: a boolean mask, small pieces dropped (``artefact_min_area_um2``), grown by
``artefact_margin_um``; classes are kept apart by precedence pen > fold > bubble > blur.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import ConfigError
from wsi_lpd.formats.geojson import feature, write_feature_collection_into
from wsi_lpd.slide.geometry import as_multipolygon, polygon_parts, polygonize, rasterize
from wsi_lpd.slide.options import ArtefactOptions
from wsi_lpd.slide.reader import Slide
from wsi_lpd.slide.tissue import (
    _fill_small_holes,
    _remove_small,
    dilate_disk,
    erode_disk,
    saturation,
    smooth3,
)

log = logging.getLogger(__name__)

ARTEFACT_CLASSES = ("pen", "fold", "bubble", "blur")  # precedence order
# least mean squared coarser-band response (grey levels², σ 1 → 2 px) for sharpness to be judged:
# clean tissue ≥ 15, blurred tissue 2–7, flat colour 0
MIN_COARSE_ENERGY = 0.5
DEFAULTS = ArtefactOptions()
ARTEFACT_COLORS = {
    "pen": (230, 0, 230),
    "blur": (255, 200, 0),
    "fold": (255, 90, 0),
    "bubble": (0, 190, 255),
}


def artefact_class_name(kind: str) -> str:
    """QuPath classification of an artefact class: ``Artefact: pen`` …"""
    return f"Artefact: {kind}"


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of an (h, w, 3) uint8 image (grey: 0), float32."""
    c = rgb.astype(np.float32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    d = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, (g - b) / d, np.where(mx == g, 2 + (b - r) / d, 4 + (r - g) / d))
    return np.mod(hue * 60.0, 360.0).astype(np.float32)


def _smooth_rgb(rgb: np.ndarray) -> np.ndarray:
    return np.stack([smooth3(rgb[..., c]) for c in range(3)], axis=-1)


def pen_mask(
    rgb: np.ndarray, s: ArtefactOptions = DEFAULTS, rows_per_strip: int = 512
) -> np.ndarray:
    """Ink pixels of a thumbnail (before clean-up): coloured or black ink. The colour rules run
    on strips of ``rows_per_strip`` rows (float work bounded by the strip, not the slide)."""
    rgb = _smooth_rgb(rgb)
    out = np.empty(rgb.shape[:2], bool)
    for r0 in range(0, rgb.shape[0], rows_per_strip):
        out[r0 : r0 + rows_per_strip] = _ink(rgb[r0 : r0 + rows_per_strip], s)
    return out


def _ink(rgb: np.ndarray, s: ArtefactOptions) -> np.ndarray:
    sat = saturation(rgb).astype(np.float32) / 255
    value = rgb.max(axis=-1).astype(np.float32) / 255
    hue = hue_degrees(rgb)
    coloured = (sat >= s.pen_min_saturation) & (value >= 0.08)
    r, b = rgb[..., 0].astype(np.float32), rgb[..., 2].astype(np.float32)
    # blue ink over haematoxylin drifts to 240°: there red is below 0.4 × blue (H&E: ≥ 0.47)
    green_blue = ((hue >= 60) & (hue < 215)) | ((hue >= 215) & (hue < 260) & (r <= 0.4 * b))
    red = ((hue >= 345) | (hue < 25)) & (sat >= s.pen_red_min_saturation)
    return (coloured & (green_blue | red)) | (value <= s.pen_black_max_value)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Sum over RGB of −log10(I/255) per pixel (0 on white glass), float32."""
    lut = -np.log10(np.maximum(np.arange(256, dtype=np.float32), 1.0) / 255.0)
    return lut[rgb].sum(axis=-1, dtype=np.float32)


def fold_mask(
    rgb: np.ndarray, tissue: np.ndarray, mpp: float, s: ArtefactOptions = DEFAULTS
) -> np.ndarray:
    """Doubled tissue / dark debris of a thumbnail at ``mpp`` µm/px within ``tissue``: optical
    density averaged over ~12 µm above ``fold_od_ratio`` × the slide's tissue median *and*
    above ``fold_local_ratio`` × the tissue's mean over the surroundings (σ = 160 µm), so a
    dense but single-layer region (tumour, lymphocytes) is not taken for two layers."""
    if not tissue.any():
        return np.zeros(tissue.shape, bool)
    od = optical_density(rgb)

    def tissue_mean(sigma_um: float) -> np.ndarray:
        sigma = max(0.5, sigma_um / mpp)
        weight = ndimage.gaussian_filter(tissue.astype(np.float32), sigma)
        total = ndimage.gaussian_filter(np.where(tissue, od, np.float32(0)), sigma)
        return total / np.maximum(weight, 1e-3)

    near = tissue_mean(12.0)
    median = float(np.median(near[tissue]))
    log.debug("fold: tissue OD median %.3f", median)
    return (
        tissue
        & (near > s.fold_od_ratio * median)
        & (near > s.fold_local_ratio * tissue_mean(160.0))
    )


def sharpness_map(
    slide: Slide,
    shape_hw: tuple[int, int],
    tissue: np.ndarray,
    thumb_mpp: float,
    blur_mpp: float,
    chunk_cells: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Sharpness (√ fine / coarse band energy) per thumbnail pixel of ``shape_hw`` (NaN outside
    ``tissue`` and where the coarse band is flat: below ``MIN_COARSE_ENERGY``), from reads at
    ``thumb_mpp / k`` µm/px (k = round(thumb_mpp / blur_mpp) ≥ 1) in chunks of
    ``chunk_cells``² thumbnail pixels (plus an 8 px margin)."""
    h, w = shape_hw
    k = max(1, round(thumb_mpp / blur_mpp))
    read_mpp = thumb_mpp / k
    w0, h0 = slide.dimensions
    sx, sy = w0 / w, h0 / h  # level-0 px per thumbnail px
    margin = 8
    fine = np.zeros((h, w), np.float32)
    coarse = np.zeros((h, w), np.float32)
    cells = [
        (cx, cy)
        for cy in range(0, h, chunk_cells)
        for cx in range(0, w, chunk_cells)
        if tissue[cy : cy + chunk_cells, cx : cx + chunk_cells].any()
    ]
    from wsi_lpd.progress import progress as reporter

    level0_per_read_px = read_mpp / slide.mpp
    for cx, cy in reporter(cells, desc="sharpness", unit="chunk", disable=not progress):
        cw, ch = min(chunk_cells, w - cx), min(chunk_cells, h - cy)
        x0 = cx * sx - margin * level0_per_read_px
        y0 = cy * sy - margin * level0_per_read_px
        size = (cw * k + 2 * margin, ch * k + 2 * margin)
        rgb = slide.read_region((x0, y0), size, read_mpp)
        green = rgb[..., 1].astype(np.float32)
        g1 = ndimage.gaussian_filter(green, 1.0)
        g2 = ndimage.gaussian_filter(green, 2.0)
        crop = (slice(margin, margin + ch * k), slice(margin, margin + cw * k))
        e1 = ((green - g1)[crop] ** 2).reshape(ch, k, cw, k).sum(axis=(1, 3))
        e2 = ((g1 - g2)[crop] ** 2).reshape(ch, k, cw, k).sum(axis=(1, 3))
        fine[cy : cy + ch, cx : cx + cw] = e1
        coarse[cy : cy + ch, cx : cx + cw] = e2
    fine = ndimage.uniform_filter(fine, 3)
    coarse = ndimage.uniform_filter(coarse, 3)
    out = np.sqrt(np.maximum(fine, 0) / np.maximum(coarse, 1e-3))
    # no structure at the coarser scale either (flat colour, empty lumen): nothing to judge by
    out[~tissue | (coarse < MIN_COARSE_ENERGY * k * k)] = np.nan
    return out


def blur_mask(
    sharpness: np.ndarray, tissue: np.ndarray, s: ArtefactOptions = DEFAULTS
) -> np.ndarray:
    """Out-of-focus tissue: sharpness below ``blur_sharpness_ratio`` × the 75th percentile of
    the slide's tissue."""
    values = sharpness[tissue & np.isfinite(sharpness)]
    if values.size == 0:
        return np.zeros(tissue.shape, bool)
    reference = float(np.percentile(values, 75))
    log.debug(
        "blur: sharpness p75 %.3f, threshold %.3f", reference, s.blur_sharpness_ratio * reference
    )
    return tissue & np.isfinite(sharpness) & (sharpness < s.blur_sharpness_ratio * reference)


def bubble_mask(
    rgb: np.ndarray,
    mpp: float,
    s: ArtefactOptions = DEFAULTS,
    ink: np.ndarray | None = None,
) -> np.ndarray:
    """Round regions enclosed by thin dark outlines (bubble rims): pixels below
    ``bubble_rim_ratio`` × their 7-px median, grown by 1 px to close gaps; enclosed pieces of at
    least ``artefact_min_area_um2`` whose compactness 4πA/P² is ≥ 0.6 are bubbles, unless over
    a third of their rim is ``ink`` (a pen circle is no bubble). A coverslip edge that does not
    close on itself encloses nothing and is not found."""
    from skimage.measure import regionprops

    gray = rgb.astype(np.float32).mean(axis=-1)
    dark = gray < s.bubble_rim_ratio * ndimage.median_filter(gray, size=7)
    filled = erode_disk(ndimage.binary_fill_holes(dilate_disk(dark, 1)), 1)
    inside = dilate_disk(erode_disk(filled & ~dark, 1), 1)
    labels, n = ndimage.label(inside)
    if n == 0:
        return inside
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = np.flatnonzero(sizes >= s.artefact_min_area_um2 / (mpp * mpp))
    out = np.zeros(inside.shape, bool)
    boxes = ndimage.find_objects(labels)
    for i in big[big > 0].tolist():
        box_ = tuple(slice(max(0, d.start - 3), d.stop + 3) for d in boxes[i - 1])
        piece = labels[box_] == i
        perimeter = regionprops(piece.astype(np.uint8))[0].perimeter
        if 4 * np.pi * piece.sum() / max(perimeter, 1.0) ** 2 < 0.6:
            continue
        if ink is not None:
            rim = dilate_disk(piece, 3) & ~piece
            if ink[box_][rim].mean() > 1 / 3:
                continue
        out[box_] |= piece
    return out


def _clean(mask: np.ndarray, mpp: float, s: ArtefactOptions) -> np.ndarray:
    """Drop pieces below ``artefact_min_area_um2``, fill small holes, grow by the margin."""
    px_um2 = mpp * mpp
    mask = dilate_disk(erode_disk(mask, 1), 1) if mask.any() else mask
    mask = _remove_small(mask, s.artefact_min_area_um2 / px_um2)
    mask = _fill_small_holes(mask, s.artefact_min_area_um2 / px_um2)
    return dilate_disk(mask, s.artefact_margin_um / mpp)


def artefact_masks(
    rgb: np.ndarray,
    tissue: np.ndarray,
    mpp: float,
    s: ArtefactOptions = DEFAULTS,
    sharpness: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One boolean mask per enabled class on a thumbnail at ``mpp`` µm/px, mutually exclusive
    (precedence pen > fold > bubble > blur). ``tissue``: the tissue mask on the same grid (pen
    on glass counts; the others only within tissue); ``sharpness``: :func:`sharpness_map`
    (needed for blur)."""
    taken = np.zeros(tissue.shape, bool)
    out: dict[str, np.ndarray] = {}
    if s.artefact_pen:
        out["pen"] = _clean(pen_mask(rgb, s), mpp, s)
        taken |= out["pen"]
    # ink's anti-aliased rim is dark too: keep the density rules a margin away from it
    clean = tissue & ~dilate_disk(taken, max(1.0, s.artefact_margin_um / mpp))
    if s.artefact_fold:
        out["fold"] = _clean(fold_mask(rgb, clean, mpp, s), mpp, s) & tissue & ~taken
        taken |= out["fold"]
    if s.artefact_bubble:
        found = bubble_mask(rgb, mpp, s, ink=out.get("pen"))
        out["bubble"] = _clean(found, mpp, s) & ~taken
        taken |= out["bubble"]
    if s.artefact_blur:
        if sharpness is None and tissue.any():
            raise ValueError("blur detection needs the sharpness map")
        found = (
            np.zeros_like(tissue) if sharpness is None else blur_mask(sharpness, tissue & ~taken, s)
        )
        out["blur"] = _clean(found, mpp, s) & tissue & ~taken
    return out


@dataclass
class Artefacts:
    """Detected artefacts: per class a MultiPolygon in level-0 px and its area in mm²."""

    polygons: dict[str, MultiPolygon]
    area_mm2: dict[str, float]

    @property
    def union(self) -> MultiPolygon:
        parts = [p for g in self.polygons.values() for p in polygon_parts(g)]
        import shapely

        return as_multipolygon(polygon_parts(shapely.union_all(parts))) if parts else MultiPolygon()


def detect_artefacts(
    slide: Slide,
    rgb: np.ndarray,
    tissue_px: np.ndarray,
    thumb_mpp: float,
    s: ArtefactOptions = DEFAULTS,
    progress: bool = False,
) -> Artefacts:
    """Artefacts of ``slide`` from its tissue thumbnail ``rgb`` at ``thumb_mpp`` µm/px and the
    tissue mask on that grid; polygons in level-0 px, clipped to the slide."""
    sharp = None
    if s.artefact_blur and tissue_px.any():
        sharp = sharpness_map(
            slide, tissue_px.shape, tissue_px, thumb_mpp, s.blur_mpp, progress=progress
        )
    masks = artefact_masks(rgb, tissue_px, thumb_mpp, s, sharp)
    w0, h0 = slide.dimensions
    h, w = tissue_px.shape
    frame = box(0, 0, w0, h0)
    polygons, area = {}, {}
    for kind, mask in masks.items():
        geom = polygonize(mask, (w0 / w, h0 / h))
        geom = as_multipolygon(polygon_parts(geom.intersection(frame)))
        polygons[kind] = geom
        area[kind] = float(geom.area * slide.mpp**2 / 1e6)
    log.info(
        "%s: artefacts %s",
        slide.path,
        ", ".join(f"{k} {v:.3f} mm²" for k, v in area.items()) or "not detected (all off)",
    )
    return Artefacts(polygons, area)


def write_artefacts_geojson_into(
    path: str | os.PathLike, polygons: Mapping[str, BaseGeometry], slide_mpp: float
) -> int:
    """Artefacts as QuPath annotations, one feature per piece, classified ``Artefact: <class>``
    in the class colour with its area in µm² (level-0 px); returns the feature count."""
    feats = (
        feature(
            p,
            artefact_class_name(kind),
            ARTEFACT_COLORS[kind],
            measurements={"Area µm^2": p.area * slide_mpp**2},
        )
        for kind, geom in polygons.items()
        for p in polygon_parts(geom)
    )
    return write_feature_collection_into(Path(path), feats)


def remove_artefacts(
    slide: Slide,
    tissue: MultiPolygon,
    rgb: np.ndarray,
    thumb_mpp: float,
    settings: ArtefactOptions,
    min_object_um2: float = 0.0,
    progress: bool = False,
) -> tuple[MultiPolygon, Artefacts]:
    """(tissue minus the artefacts, the artefacts) for ``tissue`` (level-0 px) detected on the
    thumbnail ``rgb`` at ``thumb_mpp`` µm/px; tissue pieces left below ``min_object_um2`` are
    dropped. Every class off: the tissue unchanged and no artefacts."""
    if not any(getattr(settings, f"artefact_{k}") for k in ARTEFACT_CLASSES):
        return tissue, Artefacts({}, {})
    w0 = slide.dimensions[0]
    tissue_px = rasterize(tissue, rgb.shape[:2], w0 / rgb.shape[1])
    found = detect_artefacts(slide, rgb, tissue_px, thumb_mpp, settings, progress=progress)
    union = found.union
    if union.is_empty:
        return tissue, found
    um2_per_px = slide.mpp**2
    kept = [
        p for p in polygon_parts(tissue.difference(union)) if p.area * um2_per_px >= min_object_um2
    ]
    return as_multipolygon(kept), found


def artefact_summary(found: Artefacts) -> dict[str, dict[str, object]]:
    """Per class (``pen`` …): QuPath class, display colour, area in mm², piece count — the
    tile stage's ``run.json`` entry ``artefacts``."""
    return {
        kind: {
            "class": artefact_class_name(kind),
            "color": list(ARTEFACT_COLORS[kind]),
            "area_mm2": round(found.area_mm2[kind], 6),
            "pieces": len(polygon_parts(geom)),
        }
        for kind, geom in found.polygons.items()
    }


def qc_layers(found: Artefacts) -> dict[str, tuple[BaseGeometry, tuple[int, int, int], float]]:
    """The artefacts as :func:`wsi_lpd.slide.overlay.write_tile_qc` draws them."""
    return {
        kind: (geom, ARTEFACT_COLORS[kind], found.area_mm2[kind])
        for kind, geom in found.polygons.items()
    }


def read_artefact_features(
    path: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> list[dict[str, object]]:
    """The ``Artefact: …`` annotations of an ``artefacts.geojson`` (:func:`write_artefacts_geojson`)
    as QuPath features again, shifted by −``offset_px`` (level-0 px; QuPath's cropped frame)."""
    from shapely import affinity

    from wsi_lpd.formats.geojson import read_annotations

    out = []
    for a in read_annotations(path):
        if not (a.class_name or "").startswith("Artefact: "):
            continue
        kind = a.class_name.removeprefix("Artefact: ")  # type: ignore[union-attr]
        color = (a.properties.get("classification") or {}).get("color") or ARTEFACT_COLORS.get(
            kind, (128, 128, 128)
        )
        geom = affinity.translate(a.geometry, -offset_px[0], -offset_px[1])
        measurements = a.properties.get("measurements") or None
        out.append(feature(geom, a.class_name, color, measurements=measurements))  # type: ignore[arg-type]
    return out


def tile_artefact_features(
    tiles_dir: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> list[dict[str, object]]:
    """:func:`read_artefact_features` of a tile folder's ``artefacts.geojson``; none (logged)
    when the folder has none (tile output of an earlier version). A missing folder raises
    ``ConfigError`` naming it."""
    folder = Path(tiles_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: tile folder not found")
    path = folder / "artefacts.geojson"
    if not path.is_file():
        log.info("%s: no artefacts.geojson (tile output of an earlier version)", folder)
        return []
    return read_artefact_features(path, offset_px)
