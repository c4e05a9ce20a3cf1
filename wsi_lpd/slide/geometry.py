"""Raster geometry in level-0 px: masks traced into polygons and polygons rasterised.

:func:`polygonize` traces each 4-connected piece of a boolean mask into a polygon (marching squares
over the whole mask with array operations, holes as interior rings); :func:`rasterize` fills
polygons into a mask by scanline ring crossings. Used by tissue detection, tile grids, inference's
region of interest and the metrics' ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import AnnotationError


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
    return as_multipolygon(p for g in polys for p in polygon_parts(g))


def polygon_parts(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in polygon_parts(g)]


def as_multipolygon(parts: Iterable[Polygon]) -> MultiPolygon:
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        return MultiPolygon()
    disjoint = MultiPolygon(parts)
    if disjoint.is_valid:  # parts meet at points at most: nothing to merge
        return disjoint
    merged = shapely.union_all(parts)
    return MultiPolygon(polygon_parts(merged))


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
    for poly in polygon_parts(geometry):
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
