"""Tissue detection on a low-resolution read, tissue polygons in level-0 px, and rasterising them.

Method: HSV saturation of a thumbnail (default 8 µm/px), a separable 3×3 median, an Otsu threshold
with a floor (a blank slide finds nothing), near-black pixels excluded (pen, scanner borders),
closing then opening with disks given in µm, small objects and holes removed by area in µm², then
each connected piece traced into a polygon whose holes are interior rings (marching squares over
the whole mask with array operations: no per-pixel Python). All array work is uint8/bool integer
operations (saturation by a lookup table, Otsu from PIL's histogram), tens of Mpx/s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import AnnotationError
from wsi_lpd.formats.geojson import feature, read_annotations, write_feature_collection
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


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed unit edges between tissue and background, clockwise around each tissue pixel
    (y down): (start vertex, end vertex, owning pixel). Vertex ids are ``y·(w+1) + x`` on the
    pixel-corner grid; the owner is the tissue pixel's flat index ``r·w + c``."""
    h, w = mask.shape
    p = np.zeros((h + 2, w + 2), dtype=bool)
    p[1:-1, 1:-1] = mask
    # (bg neighbour, start corner (dx, dy), end corner (dx, dy)) for top, right, bottom, left
    sides = (
        (p[:-2, 1:-1], (0, 0), (1, 0)),
        (p[1:-1, 2:], (1, 0), (1, 1)),
        (p[2:, 1:-1], (1, 1), (0, 1)),
        (p[1:-1, :-2], (0, 1), (0, 0)),
    )
    starts, ends, owners = [], [], []
    for neighbour, (sx, sy), (ex, ey) in sides:
        flat = np.flatnonzero(mask & ~neighbour)
        r, c = np.divmod(flat, w)
        starts.append((r + sy) * (w + 1) + c + sx)
        ends.append((r + ey) * (w + 1) + c + ex)
        owners.append(flat)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(owners)


def _cycles(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycles of the permutation ``succ``: (cycle id = smallest index on it, position along the
    cycle from that index), by pointer doubling (log₂ of the longest cycle numpy passes)."""
    n = succ.size
    cycle, jump = np.arange(n), succ.copy()
    while True:  # cycle[i] = min over the next 2^k; stable only once 2^k covers every cycle
        merged = np.minimum(cycle, cycle[jump])
        jump = jump[jump]
        if np.array_equal(merged, cycle):
            break
        cycle = merged
    head = cycle == np.arange(n)
    steps = np.where(head, 0, 1)  # steps to the cycle's head, walking forward
    jump = np.where(head, np.arange(n), succ)
    while True:
        if np.array_equal(jump, jump[jump]):
            break
        steps = steps + steps[jump]
        jump = jump[jump]
    length = np.bincount(cycle, minlength=n)[cycle]
    return cycle, np.where(head, 0, length - steps)


def boundary_rings(mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Marching-squares outlines of a boolean mask at level ½, traced with array operations.

    Returns (rings as closed (n, 2) x, y arrays in pixel-edge units (pixel (i, j) covers
    [j, j+1) × [i, i+1)), the mask pixel (flat index) each ring borders, signed area of each
    (> 0: outer ring, < 0: hole)). Vertices are the midpoints of the boundary pixel edges, as
    ``skimage.measure.find_contours(mask, 0.5)`` with diagonal tissue pixels kept apart
    (4-connected tissue); collinear vertices are dropped."""
    start, end, owner = _boundary_edges(mask)
    if start.size == 0:
        return [], np.zeros(0, np.int64), np.zeros(0)
    order = np.argsort(start, kind="stable")
    lo = np.searchsorted(start[order], end, "left")
    succ = order[lo]
    saddle = np.flatnonzero(np.searchsorted(start[order], end, "right") - lo == 2)
    alt = order[lo[saddle] + 1]  # at a saddle corner keep going round the same pixel
    keep_round = owner[alt] == owner[saddle]
    succ[saddle[keep_round]] = alt[keep_round]
    cycle, position = _cycles(succ)
    walk = np.lexsort((position, cycle))
    w1 = mask.shape[1] + 1
    mid = np.empty((walk.size, 2))
    mid[:, 0] = ((start % w1) + (end % w1))[walk] / 2
    mid[:, 1] = ((start // w1) + (end // w1))[walk] / 2
    first = np.flatnonzero(np.r_[True, cycle[walk][1:] != cycle[walk][:-1]])
    count = np.diff(np.r_[first, walk.size])
    ring_of = np.repeat(np.arange(first.size), count)
    offset = np.arange(walk.size) - first[ring_of]
    prev = first[ring_of] + (offset - 1) % count[ring_of]
    nxt = first[ring_of] + (offset + 1) % count[ring_of]
    d0, d1 = mid - mid[prev], mid[nxt] - mid
    turn = d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]
    corner = turn != 0
    x, y = mid[:, 0], mid[:, 1]
    area = np.bincount(ring_of, weights=x * y[nxt] - x[nxt] * y, minlength=first.size) / 2
    rings = []
    for r0, n, a in zip(first, count, area, strict=True):
        ring, keep = mid[r0 : r0 + n], corner[r0 : r0 + n].copy()
        # start where find_contours starts (its scan ends there), so simplifying gives the same:
        # outer ring at its bottom-most, right-most vertex; hole on its last row's right end
        bottom = ring[:, 1].max() - (0 if a > 0 else 0.5)
        on_row = np.flatnonzero(ring[:, 1] == bottom)
        start = int(on_row[np.argmax(ring[on_row, 0])])
        keep[start] = True
        ring = np.roll(ring[keep], -int(keep[:start].sum()), axis=0)
        rings.append(np.vstack([ring, ring[:1]]))
    return rings, owner[walk[first]], area


def polygonize(
    mask: np.ndarray, level0_per_px: tuple[float, float], simplify_px: float = 0.5
) -> MultiPolygon:
    """Polygons (holes as interior rings) of a boolean mask, scaled to level-0 px.

    Mask pixel (i, j) covers level-0 [j·sx, (j+1)·sx) × [i·sy, (i+1)·sy) with
    (sx, sy) = ``level0_per_px``. Outlines run through the pixel-edge midpoints (marching squares,
    :func:`boundary_rings`) and are simplified by ``simplify_px`` mask pixels; each 4-connected
    piece is one polygon.
    """
    sx, sy = level0_per_px
    rings, _border_px, area = boundary_rings(mask)
    scale = np.array([sx, sy])
    outer = area > 0
    shells = np.array([Polygon(r * scale) for r, o in zip(rings, outer, strict=True) if o])
    if shells.size == 0:
        return MultiPolygon()
    hole_rings = [r * scale for r, o in zip(rings, outer, strict=True) if not o]
    holes: list[list[np.ndarray]] = [[] for _ in shells]
    if hole_rings:  # each hole belongs to the smallest outer ring around it
        inside = shapely.points([h[0] for h in hole_rings])
        hole_idx, shell_idx = shapely.STRtree(shells).query(inside, predicate="within")
        by_area = np.lexsort((shapely.area(shells)[shell_idx], hole_idx))
        hole_idx, shell_idx = hole_idx[by_area], shell_idx[by_area]
        first = np.r_[True, hole_idx[1:] != hole_idx[:-1]]
        for h, k in zip(hole_idx[first].tolist(), shell_idx[first].tolist(), strict=True):
            holes[k].append(hole_rings[h])
    polys = np.array(
        [Polygon(shell.exterior.coords, h) for shell, h in zip(shells, holes, strict=True)]
    )
    if simplify_px > 0:
        polys = shapely.simplify(polys, simplify_px * min(sx, sy), preserve_topology=True)
    invalid = ~shapely.is_valid(polys)
    polys[invalid] = shapely.make_valid(polys[invalid])
    return _as_multipolygon(p for g in polys for p in _polygons(g))


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def _as_multipolygon(parts: Iterable[Polygon]) -> MultiPolygon:
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        return MultiPolygon()
    disjoint = MultiPolygon(parts)
    if disjoint.is_valid:  # parts meet at points at most: nothing to merge
        return disjoint
    merged = shapely.union_all(parts)
    return MultiPolygon(_polygons(merged))


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
    tissue = _as_multipolygon(_polygons(tissue.intersection(box(0, 0, w0, h0))))
    log.info(
        "%s: tissue %.3f mm² in %d piece(s) (%.1f %% of the slide)",
        slide.path,
        tissue.area * slide.mpp**2 / 1e6,
        len(tissue.geoms),
        100.0 * tissue.area / (w0 * h0),
    )
    return tissue, rgb


def _ring_crossings(rings: list[np.ndarray], h: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, x) of every crossing of the rings' edges with the pixel-centre rows y = 0..h-1
    (coordinates already in pixel-centre units)."""
    rows, xs = [], []
    for xy in rings:
        x0, y0, x1, y1 = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.clip(np.ceil(lo), 0, h).astype(np.int64)
        last = np.clip(np.ceil(hi), 0, h).astype(np.int64)  # rows first..last-1: lo <= y < hi
        counts = last - first
        keep = counts > 0
        if not keep.any():
            continue
        edge = np.repeat(np.flatnonzero(keep), counts[keep])
        offsets = np.arange(edge.size) - np.repeat(
            np.cumsum(counts[keep]) - counts[keep], counts[keep]
        )
        row = first[edge] + offsets
        t = (row - y0[edge]) / (y1[edge] - y0[edge])
        rows.append(row)
        xs.append(x0[edge] + t * (x1[edge] - x0[edge]))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(xs)


def rasterize(
    geometry: BaseGeometry, shape_hw: tuple[int, int], level0_per_px: float
) -> np.ndarray:
    """Boolean mask of ``shape_hw`` whose pixel (i, j) is set when its centre, level-0
    ((j + ½)·s, (i + ½)·s) with s = ``level0_per_px``, lies inside ``geometry`` (level-0 px).

    Exact even-odd scanline fill at pixel centres (holes included), vectorised over edges.
    """
    h, w = shape_hw
    mask = np.zeros((h, w), dtype=bool)
    for poly in _polygons(geometry):
        rings = [
            np.asarray(r.coords)[:, :2] / level0_per_px - 0.5
            for r in (poly.exterior, *poly.interiors)
        ]
        row, x = _ring_crossings(rings, h)
        if row.size == 0:
            continue
        order = np.lexsort((x, row))
        row, x = row[order], x[order]
        start, stop = row[0::2], row[1::2]
        if not np.array_equal(start, stop):
            raise AnnotationError("rasterize: ring crossings do not pair up (ring not closed?)")
        col0 = np.clip(np.ceil(x[0::2]), 0, w).astype(np.int64)
        col1 = np.clip(np.ceil(x[1::2]), 0, w).astype(np.int64)
        y0, y1 = int(start.min()), int(start.max()) + 1
        diff = np.zeros((y1 - y0, w + 1), dtype=np.int32)
        np.add.at(diff, (start - y0, col0), 1)
        np.add.at(diff, (start - y0, col1), -1)
        mask[y0:y1] |= np.cumsum(diff, axis=1)[:, :w] > 0
    return mask


def write_tissue_geojson(path: str | os.PathLike, tissue: BaseGeometry) -> int:
    """Write tissue as QuPath annotations (one feature per piece); returns the feature count."""
    feats = (feature(p, TISSUE_CLASS, TISSUE_COLOR) for p in _polygons(tissue))
    return write_feature_collection(Path(path), feats)


def read_tissue_geojson(
    path: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> MultiPolygon:
    """Union of all polygons of any class in a GeoJSON file, as a MultiPolygon in level-0 px;
    ``offset_px`` (:func:`wsi_lpd.formats.geojson.qupath_offset_px`) is added to every
    coordinate."""
    polygons = (
        p for a in read_annotations(path, offset_px=offset_px) for p in _polygons(a.geometry)
    )
    return _as_multipolygon(polygons)


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
    return _as_multipolygon(_polygons(tissue.intersection(region)))
