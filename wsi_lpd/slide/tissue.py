"""Tissue detection on a low-resolution read and tissue polygons in level-0 px (GeoJSON in/out).

Method: HSV saturation of a thumbnail (default 8 µm/px), a separable 3×3 median, an Otsu threshold
with a floor (a blank slide finds nothing), near-black pixels excluded (pen, scanner borders),
closing then opening with disks given in µm, small objects and holes removed by area in µm², then
each connected piece traced into a polygon whose holes are interior rings
(:func:`wsi_lpd.slide.geometry.polygonize`). All array work is uint8/bool integer operations
(saturation by a lookup table, Otsu from PIL's histogram), tens of Mpx/s. The defaults are
:class:`wsi_lpd.slide.options.TissueOptions`'s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from scipy import ndimage
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import AnnotationError
from wsi_lpd.formats.geojson import feature, read_annotations, write_feature_collection_into
from wsi_lpd.slide.geometry import as_multipolygon, polygon_parts, polygonize
from wsi_lpd.slide.options import TissueOptions
from wsi_lpd.slide.reader import Slide

log = logging.getLogger(__name__)

TISSUE_CLASS = "Tissue"
TISSUE_COLOR = (0, 200, 0)


_SATURATION_LUT: list[np.ndarray] = []


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an (h, w, 3) uint8 image, as uint8 0–255 (255 = fully saturated):
    ``(max − min)·255 // max``, looked up in a 64 K table indexed by (max, min)."""
    if not _SATURATION_LUT:
        mx, mn = np.divmod(np.arange(1 << 16, dtype=np.int64), 256)
        _SATURATION_LUT.append(
            np.where(mn <= mx, (mx - mn) * 255 // np.maximum(mx, 1), 0).astype(np.uint8)
        )
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    index = np.maximum(np.maximum(r, g), b).astype(np.uint16)
    index <<= 8
    index |= np.minimum(np.minimum(r, g), b)
    return _SATURATION_LUT[0][index]


def _median3(a: np.ndarray, axis: int) -> np.ndarray:
    """Median of each element and its two neighbours along ``axis`` (edges mirrored)."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.moveaxis(np.pad(a, pad, mode="reflect"), axis, 0)
    lo, mid, hi = p[:-2], p[1:-1], p[2:]  # views, no copies
    out = np.minimum(lo, mid)
    np.maximum(out, np.minimum(np.maximum(lo, mid), hi), out=out)
    return np.moveaxis(out, 0, axis)


def smooth3(a: np.ndarray) -> np.ndarray:
    """Separable 3×3 median (median of 3 along rows, then along columns): removes isolated
    specks like a 3×3 median at a fraction of its cost."""
    return _median3(_median3(a, 0), 1)


def _disk(radius_px: float) -> np.ndarray:
    r = round(radius_px)
    if r < 1:
        return np.ones((1, 1), dtype=bool)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + r  # the usual digital disk (includes the axis tips)


def _dilate_rows(mask: np.ndarray, half_width: int) -> np.ndarray:
    """Binary dilation along rows by a segment of ``2·half_width + 1`` px (outside is False)."""
    out = mask.copy()
    for k in range(1, half_width + 1):
        out[:, k:] |= mask[:, :-k]
        out[:, :-k] |= mask[:, k:]
    return out


def dilate_disk(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary dilation by :func:`_disk` (``radius_px``), outside the image False: the disk as
    a union of row segments, each a few shifted ORs (hundreds of Mpx/s, no generic filter)."""
    disk = _disk(radius_px)
    r = disk.shape[0] // 2
    if r == 0:
        return mask.copy()
    h = mask.shape[0]
    by_width: dict[int, np.ndarray] = {}
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        w = int(disk[dy + r].sum()) // 2
        rows = by_width.get(w)
        if rows is None:
            rows = by_width[w] = _dilate_rows(mask, w)
        if dy >= 0:
            out[: h - dy] |= rows[dy:]
        else:
            out[-dy:] |= rows[: h + dy]
    return out


def erode_disk(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary erosion by :func:`_disk`, outside the image False (as ``ndimage.binary_erosion``)."""
    r = _disk(radius_px).shape[0] // 2
    if r == 0:
        return mask.copy()
    padded = np.pad(mask, r)
    return ~dilate_disk(~padded, radius_px)[r:-r, r:-r]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image from its histogram (as ``skimage.filters.threshold_otsu``
    on integers: bins are the integer values between the image's min and max)."""
    from PIL import Image

    flat = np.ascontiguousarray(values, dtype=np.uint8)
    image = Image.fromarray(flat.reshape(flat.shape[0], -1) if flat.ndim > 1 else flat[None])
    counts = np.asarray(image.histogram(), dtype=np.float64)  # PIL's C loop, no int64 copy
    nonzero = np.flatnonzero(counts)
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    if lo == hi:
        return float(lo)
    hist = counts[lo : hi + 1]
    centers = np.arange(lo, hi + 1, dtype=np.float64)
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    mean1 = np.cumsum(hist * centers) / weight1
    mean2 = (np.cumsum((hist * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(variance12))])


def _piece_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each label 0..n, counted in 1 Mpx slices (``np.bincount`` copies its input
    to int64: whole-image copies cost more in page faults than the counting)."""
    flat = labels.ravel()
    sizes = np.zeros(n + 1, dtype=np.int64)
    for i in range(0, flat.size, 1 << 20):
        sizes += np.bincount(flat[i : i + (1 << 20)], minlength=n + 1)
    return sizes


def _set_pieces(mask: np.ndarray, labels: np.ndarray, ids: np.ndarray, value: bool) -> np.ndarray:
    """``mask`` with the pixels of the pieces ``ids`` (labels in ``labels``) set to ``value``:
    inside each piece's bounding box when they are few (one scan of ``labels``), else by a
    lookup over the whole image."""
    if ids.size > 1000:
        chosen = np.zeros(int(labels.max()) + 1, dtype=bool)
        chosen[ids] = True
        hit = np.take(chosen, labels)
        return mask | hit if value else mask & ~hit
    out = mask.copy()
    boxes = ndimage.find_objects(labels, max_label=int(ids.max()))
    for i in ids.tolist():
        box_ = boxes[i - 1]
        out[box_][labels[box_] == i] = value
    return out


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 4-connected foreground pieces smaller than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    small = np.flatnonzero(_piece_sizes(labels, n)[1:] < min_px) + 1
    return _set_pieces(mask, labels, small, False) if small.size else mask


def _fill_small_holes(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Fill background pieces enclosed by tissue (not touching the border) below ``min_px``."""
    if min_px <= 1:
        return mask
    eight = np.ones((3, 3), dtype=bool)  # background is 8-connected when tissue is 4-connected
    labels, n = ndimage.label(~mask, structure=eight)
    if n == 0:
        return mask
    fill = _piece_sizes(labels, n) < min_px
    fill[0] = False
    fill[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    holes = np.flatnonzero(fill)
    return _set_pieces(mask, labels, holes, True) if holes.size else mask


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    options: TissueOptions | None = None,
    *,
    dark_value: float = 0.15,
) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail at ``mpp`` µm/px (``options.tissue_mpp`` is not
    used here: the thumbnail is given).

    ``saturation_floor`` and ``dark_value`` are fractions of full scale: the Otsu threshold on
    saturation is never below the floor; pixels whose brightest channel is below ``dark_value``
    are not tissue when ``exclude_dark``.
    """
    o = options or TissueOptions()
    min_object_um2, min_hole_um2 = o.min_object_um2, o.min_hole_um2
    close_radius_um, open_radius_um = o.close_radius_um, o.open_radius_um
    saturation_floor, exclude_dark = o.saturation_floor, o.exclude_dark
    sat = smooth3(saturation(rgb))
    floor = saturation_floor * 255
    if int(sat.max()) < floor:
        return np.zeros(sat.shape, dtype=bool)
    threshold = max(otsu_threshold(sat), floor)
    mask = sat > threshold
    if exclude_dark:
        brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
        mask &= brightest >= dark_value * 255
    log.debug("tissue threshold: saturation > %.3f", threshold / 255)
    px_um2 = mpp * mpp
    close_px, open_px = close_radius_um / mpp, open_radius_um / mpp
    pad = _disk(close_px).shape[0]  # closing as if the glass went on (no border artefacts)
    mask = erode_disk(dilate_disk(np.pad(mask, pad), close_px), close_px)[pad:-pad, pad:-pad]
    mask = dilate_disk(erode_disk(mask, open_px), open_px)
    mask = _remove_small(mask, min_object_um2 / px_um2)
    return _fill_small_holes(mask, min_hole_um2 / px_um2)


def detect_tissue(
    slide: Slide, options: TissueOptions | None = None, *, progress: bool = False
) -> MultiPolygon:
    """Tissue of ``slide`` as a valid MultiPolygon in level-0 px (empty when none).

    ``options.tissue_mpp`` is the µm/px of the thumbnail the detection runs on (4–16 is sensible);
    None: the defaults of :class:`~wsi_lpd.slide.options.TissueOptions`.
    """
    return detect_tissue_with_thumbnail(slide, options, progress=progress)[0]


def detect_tissue_with_thumbnail(
    slide: Slide, options: TissueOptions | None = None, *, progress: bool = False
) -> tuple[MultiPolygon, np.ndarray]:
    """:func:`detect_tissue` plus the RGB thumbnail at ``options.tissue_mpp`` µm/px it ran on
    (read once from the coarsest pyramid level that serves it; reused e.g. for the QC image)."""
    options = options or TissueOptions()
    mpp = options.tissue_mpp
    rgb = slide.thumbnail(mpp, progress=progress)
    mask = tissue_mask(rgb, mpp, options)
    w0, h0 = slide.dimensions
    h, w = mask.shape
    tissue = polygonize(mask, (w0 / w, h0 / h))
    tissue = as_multipolygon(polygon_parts(tissue.intersection(box(0, 0, w0, h0))))
    log.info(
        "%s: tissue %.3f mm² in %d piece(s) (%.1f %% of the slide)",
        slide.path,
        tissue.area * slide.mpp**2 / 1e6,
        len(tissue.geoms),
        100.0 * tissue.area / (w0 * h0),
    )
    return tissue, rgb


def write_tissue_geojson_into(path: str | os.PathLike, tissue: BaseGeometry) -> int:
    """Write tissue as QuPath annotations (one feature per piece); returns the feature count.

    Not atomic (``_into``): the caller passes a temporary path."""
    feats = (feature(p, TISSUE_CLASS, TISSUE_COLOR) for p in polygon_parts(tissue))
    return write_feature_collection_into(Path(path), feats)


def read_tissue_geojson(
    path: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> MultiPolygon:
    """Union of all polygons of any class in a GeoJSON file, as a MultiPolygon in level-0 px;
    ``offset_px`` (:func:`wsi_lpd.formats.geojson.qupath_offset_px`) is added to every
    coordinate."""
    polygons = (
        p for a in read_annotations(path, offset_px=offset_px) for p in polygon_parts(a.geometry)
    )
    return as_multipolygon(polygons)


def read_roi_geojson(
    path: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> MultiPolygon:
    """The region of interest: union of the polygons of any class in a GeoJSON file, in level-0
    px (``offset_px`` added, :func:`wsi_lpd.formats.geojson.qupath_offset_px` of a cropped slide).
    ``AnnotationError`` naming the file when it holds no polygon."""
    roi = read_tissue_geojson(path, offset_px)
    if roi.is_empty:
        raise AnnotationError(f"{path}: no polygon in the region of interest")
    return roi


def clip_to(tissue: BaseGeometry, region: BaseGeometry) -> MultiPolygon:
    """``tissue`` limited to ``region`` (both level-0 px), as a valid MultiPolygon."""
    return as_multipolygon(polygon_parts(tissue.intersection(region)))
