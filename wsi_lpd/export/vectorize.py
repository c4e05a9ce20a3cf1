"""Label raster → QuPath polygons per class, block by block, in level-0 px.

How it works (all geometry is exact until the simplification step):

1. The label raster (``Y×X`` class indices, background = C) is read in square blocks
   (``block_px``, default 2048). In each block the edges between pixels of different labels
   (background and outside-the-block count as one "nothing" label) are collected as axis-aligned
   segments on the pixel grid, noded at every vertex where another edge meets them, and split into
   unit segments along the block border. ``shapely.polygonize`` turns them into faces; each face
   has one label (looked up at its interior point). Foreground faces are pixel-edge-exact
   polygons, holes are interior rings.
2. Faces of one class from all blocks form a coverage whose shared seam edges match vertex for
   vertex (unit segments on both sides), so ``shapely.coverage_union_all`` merges them exactly:
   no slivers, no gaps. Only faces touching a block border take part in that merge; a face inside
   its block is already a complete component. Only these per-class polygons are kept in memory,
   plus one small record per connected component and block (a pixel centre inside it, pixel
   count, probability and margin sums).
3. Components below ``min_area_um2`` are removed and holes below it filled; components fully
   inside a block and below the area are dropped while reading, so noise never accumulates.
4. All classes are simplified together with ``shapely.coverage_simplify`` (tolerance in µm,
   default one mosaic pixel), so neighbouring classes stay aligned; then ``make_valid``, scaling
   to level-0 px (× ``level0_per_px``), clipping to the slide and an optional offset (OpenSlide
   bounds, which QuPath crops to).

Confidence per component: while a block is read, its pixels of class k are labelled into
4-connected components (``scipy.ndimage.label``) and, per component (``np.bincount``), the class's
own probability ``probs[k]`` and the margin to the runner-up ``probs[k] − max_{j≠k} probs[j]``
(background included) are summed; only (point, count, sums) per component leaves the block. At the
end every record is assigned to the merged component containing its point, so both means are exact
over the component's pixels while memory stays bounded by one block of labels and probabilities.
A component whose mean class probability is below ``min_probability[class]`` is dropped.

Parallelism: blocks are independent until the seam merge; with ``workers`` > 1 (and a raster of at
least ``PARALLEL_MIN_PX``) each block is one task in dask worker processes (it reads its own block
from the zarr store and returns only polygons and records), so memory stays bounded by ``workers``
blocks plus the polygons. The serial rest is the seam merge, simplification and measuring.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import shapely
from scipy import ndimage
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.formats.geojson import feature
from wsi_lpd.progress import progress as progress_bar

log = logging.getLogger(__name__)

BLOCK_PX = 2048
MIN_AREA_UM2 = 1000.0
AREA_KEY = "Area µm^2"
PROBABILITY_KEY = "Class probability (mean)"
MARGIN_KEY = "Margin to runner-up (mean)"
PARALLEL_MIN_PX = 1 << 22  # smaller rasters are vectorised in-process (spawning costs more)
SCHEDULER = "processes"  # dask scheduler for workers > 1 ("threads" holds the GIL too often)


class MosaicLike(Protocol):
    """What :func:`vectorize_mosaic` needs from ``wsi_lpd.formats.mosaic.Mosaic``."""

    labels: Any
    probs: Any
    attrs: dict[str, Any]
    classes: ClassList


@dataclass
class ClassPolygons:
    """One foreground class: its connected components in level-0 px and their measurements."""

    index: int
    name: str
    color: tuple[int, int, int]
    components: list[BaseGeometry] = field(default_factory=list)
    area_um2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pixel_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mean_margin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dropped_low_probability: int = 0

    @property
    def geometry(self) -> BaseGeometry:
        """All components as one (Multi)Polygon (empty MultiPolygon when none)."""
        parts = [p for c in self.components for p in shapely.get_parts(c)]
        if not parts:
            return MultiPolygon()
        return parts[0] if len(parts) == 1 else MultiPolygon(parts)

    @property
    def total_area_um2(self) -> float:
        """Summed area of all components in µm²."""
        return float(self.area_um2.sum())

    def _pixel_mean(self, values: np.ndarray) -> float:
        n = self.pixel_count.sum()
        if n == 0 or len(values) != len(self.pixel_count) or not np.isfinite(values).all():
            return float("nan")
        return float((values * self.pixel_count).sum() / n)

    @property
    def class_mean_probability(self) -> float:
        """Pixel-weighted mean of the class's own probability over all components (NaN if
        unknown)."""
        return self._pixel_mean(self.mean_probability)

    @property
    def class_mean_margin(self) -> float:
        """Pixel-weighted mean margin to the runner-up over all components (NaN if unknown)."""
        return self._pixel_mean(self.mean_margin)

    @property
    def num_vertices(self) -> int:
        """Coordinates over all components (closing points included)."""
        return int(shapely.get_num_coordinates(np.asarray(self.components, dtype=object)).sum())


# --------------------------------------------------------------------------- block polygons


def _runs(edges: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Maximal runs of True along axis 1 of ``edges``, cut where ``breaks`` (vertex grid) is set.

    ``edges`` is (L, N): unit edge n on line l spans vertices n..n+1; ``breaks`` is (L, N+1).
    Returns (line, first edge, last edge) of every run.
    """
    prev = np.zeros_like(edges)
    prev[:, 1:] = edges[:, :-1]
    nxt = np.zeros_like(edges)
    nxt[:, :-1] = edges[:, 1:]
    start = edges & (~prev | breaks[:, :-1])
    end = edges & (~nxt | breaks[:, 1:])
    line, first = np.nonzero(start)
    _, last = np.nonzero(end)
    return line, first, last


def boundary_segments(block: np.ndarray, nothing: int) -> np.ndarray:
    """Noded label-boundary segments of a block, ``(n, 2, 2)`` float (x, y) in block px.

    An edge lies between two pixels of different labels, ``nothing`` (background) and the
    outside of the block being the same label. Runs are split wherever another edge meets them
    and into unit segments along the block border (so neighbouring blocks' edges match).
    """
    h, w = block.shape
    padded = np.full((h + 2, w + 2), nothing, dtype=block.dtype)
    padded[1:-1, 1:-1] = block
    horizontal = padded[:-1, 1:-1] != padded[1:, 1:-1]  # (h+1, w): line y, pixel column x
    vertical = padded[1:-1, :-1] != padded[1:-1, 1:]  # (h, w+1): pixel row y, line x
    # vertex (y, x) grids: does a vertical / horizontal edge touch it?
    v_touch = np.zeros((h + 1, w + 1), dtype=bool)
    v_touch[:-1] |= vertical
    v_touch[1:] |= vertical
    h_touch = np.zeros((h + 1, w + 1), dtype=bool)
    h_touch[:, :-1] |= horizontal
    h_touch[:, 1:] |= horizontal
    v_touch[[0, -1], :] = True  # unit segments along the top and bottom borders
    h_touch[:, [0, -1]] = True  # ... and along the left and right borders
    y, x0, x1 = _runs(horizontal, v_touch)
    hseg = np.stack([np.stack([x0, y], 1), np.stack([x1 + 1, y], 1)], 1)
    x, y0, y1 = _runs(vertical.T, h_touch.T)
    vseg = np.stack([np.stack([x, y0], 1), np.stack([x, y1 + 1], 1)], 1)
    return np.concatenate([hseg, vseg]).astype(np.float64)


def polygonize_block(block: np.ndarray, nothing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-edge-exact faces of a label block, in block px coordinates.

    Returns (polygons, label of each, (row, col) of a pixel inside each). Faces labelled
    ``nothing`` are left out. Each face is a 4-connected set of pixels of one label; holes are
    interior rings.
    """
    segments = boundary_segments(block, nothing)
    if len(segments) == 0:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=object), block.ravel()[:0], np.stack([empty, empty], 1)
    faces = shapely.get_parts(shapely.polygonize(shapely.linestrings(segments)))
    # the pixel at floor(interior point) belongs to the face (faces are unions of pixels)
    xy = shapely.get_coordinates(shapely.point_on_surface(faces))
    cols = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, block.shape[1] - 1)
    rows = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, block.shape[0] - 1)
    values = block[rows, cols]
    keep = values != nothing
    return faces[keep], values[keep], np.stack([rows[keep], cols[keep]], 1)


# --------------------------------------------------------------------------- reading blocks


def _read(array: Any, index: tuple[slice | int, ...]) -> np.ndarray:
    """A numpy block from a numpy, zarr or dask array."""
    block = array[index]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)


@dataclass
class _Records:
    """Per-component records of one class: interior points (mosaic px), pixel counts, sums of
    the class probability and of the margin to the runner-up (0-255 units)."""

    points: list[np.ndarray] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)
    sums: list[np.ndarray] = field(default_factory=list)
    margins: list[np.ndarray] = field(default_factory=list)

    def add(
        self, points: np.ndarray, counts: np.ndarray, sums: np.ndarray, margins: np.ndarray
    ) -> None:
        self.points.append(points)
        self.counts.append(counts)
        self.sums.append(sums)
        self.margins.append(margins)

    def extend(self, other: _Records) -> None:
        for name in ("points", "counts", "sums", "margins"):
            getattr(self, name).extend(getattr(other, name))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.points:
            return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        return (
            np.concatenate(self.points),
            np.concatenate(self.counts),
            np.concatenate(self.sums),
            np.concatenate(self.margins),
        )


def _top_two(prob_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest value over the channels of ``(C, h, w)`` uint8."""
    top1 = prob_block[0].copy()
    top2 = np.zeros_like(top1)
    for c in range(1, prob_block.shape[0]):
        p = prob_block[c]
        np.maximum(top2, np.minimum(top1, p), out=top2)
        np.maximum(top1, p, out=top1)
    return top1, top2


def _block_components(
    block: np.ndarray, prob_block: np.ndarray | None, nothing: int, min_area_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components of every class in a block, numbered jointly (0 = none).

    ``prob_block`` holds all ``C+1`` channels. Returns (component raster int32, pixel count per
    id, class-probability sum per id, runner-up margin sum per id — NaN without probabilities).
    Components below ``min_area_px`` that do not touch the block border are set to ``nothing`` in
    ``block`` (in place): they can't grow into larger ones across a seam. One ``bincount`` per
    measure over the whole block (not one per class).
    """
    ids = np.zeros(block.shape, dtype=np.int32)
    own = None if prob_block is None else np.zeros(block.shape, dtype=prob_block.dtype)
    offset = 0
    for k in np.unique(block):
        if k == nothing:
            continue
        mask = block == k
        comp, n = ndimage.label(mask)
        comp += offset
        np.copyto(ids, comp, where=mask)
        if own is not None:
            np.copyto(own, prob_block[k], where=mask)
        del comp
        offset += n
    flat = ids.ravel()
    count = np.bincount(flat, minlength=offset + 1)
    if prob_block is not None and own is not None:
        top1, top2 = _top_two(prob_block)
        other = np.where(own == top1, top2, top1)
        margin = own.astype(np.int16) - other.astype(np.int16)
        total = np.bincount(flat, weights=own.ravel(), minlength=offset + 1)
        margin_total = np.bincount(flat, weights=margin.ravel(), minlength=offset + 1)
    else:
        total = np.full(offset + 1, np.nan)
        margin_total = np.full(offset + 1, np.nan)
    if min_area_px > 0 and offset:
        touching = np.zeros(offset + 1, dtype=bool)
        for edge in (ids[0], ids[-1], ids[:, 0], ids[:, -1]):
            touching[edge] = True
        drop = (count < min_area_px) & ~touching
        drop[0] = False
        if drop.any():
            block[drop[ids]] = nothing
    return ids, count, total, margin_total


@dataclass
class _ClassPieces:
    """One class's faces from one or more blocks: complete components (inside a block, no seam
    to merge across) and faces touching a block border (merged by coverage union), mosaic px."""

    inner: list[np.ndarray] = field(default_factory=list)
    seam: list[np.ndarray] = field(default_factory=list)
    records: _Records = field(default_factory=_Records)

    def extend(self, other: _ClassPieces) -> None:
        self.inner.extend(other.inner)
        self.seam.extend(other.seam)
        self.records.extend(other.records)


def _process_block(
    block: np.ndarray,
    prob_block: np.ndarray | None,
    nothing: int,
    min_area_px: float,
    origin: tuple[int, int],
) -> dict[int, _ClassPieces]:
    """Polygonise one block: per class, its faces split into complete and seam ones, and the
    component records."""
    y0, x0 = origin
    h, w = block.shape
    block = block.copy()
    ids, counts, sums, margins = _block_components(block, prob_block, nothing, min_area_px)
    faces, values, pixels = polygonize_block(block, nothing)
    if len(faces) == 0:
        return {}
    rows, cols = pixels[:, 0], pixels[:, 1]
    face_ids = ids[rows, cols]
    del ids
    bounds = shapely.bounds(faces)
    on_seam = (bounds[:, 0] <= 0) | (bounds[:, 1] <= 0) | (bounds[:, 2] >= w) | (bounds[:, 3] >= h)
    origin_xy = np.array([x0, y0], dtype=np.float64)
    faces = shapely.transform(faces, lambda c: c + origin_xy)
    points = np.stack([cols, rows], 1) + origin_xy + 0.5  # pixel centres, mosaic px
    out: dict[int, _ClassPieces] = {}
    for k in np.unique(values):
        sel = values == k
        fid = face_ids[sel]
        pieces = out[int(k)] = _ClassPieces([faces[sel & ~on_seam]], [faces[sel & on_seam]])
        pieces.records.add(points[sel], counts[fid], sums[fid], margins[fid])
    return out


def _scan_block(
    labels: Any, probs: Any, nothing: int, min_area_px: float, block_px: int, y0: int, x0: int
) -> dict[int, _ClassPieces]:
    """Read and polygonise the block at mosaic px ``(y0, x0)`` (one task of the parallel scan)."""
    height, width = labels.shape
    ys = slice(y0, min(y0 + block_px, height))
    xs = slice(x0, min(x0 + block_px, width))
    block = _read(labels, (ys, xs))
    if not (block != nothing).any():
        return {}
    prob = _read(probs, (slice(None), ys, xs)) if probs is not None else None
    return _process_block(block, prob, nothing, min_area_px, (y0, x0))


# --------------------------------------------------------------------------- merging, cleaning


def _drop_small_holes(polygon: Polygon, min_area_px: float) -> Polygon:
    """The polygon without its holes smaller than ``min_area_px`` (mosaic px²)."""
    holes = [r for r in polygon.interiors if Polygon(r).area >= min_area_px]
    if len(holes) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, holes)


def _component_stats(
    parts: np.ndarray, records: _Records | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel count, probability sum and margin sum per merged component, from the records."""
    counts = np.zeros(len(parts), dtype=np.int64)
    sums = np.zeros(len(parts))
    margins = np.zeros(len(parts))
    if records is None or len(parts) == 0:
        return counts, sums, margins
    points, rec_counts, rec_sums, rec_margins = records.arrays()
    tree = shapely.STRtree(parts)
    rec_idx, part_idx = tree.query(shapely.points(points), predicate="intersects")
    rec_idx, first = np.unique(rec_idx, return_index=True)  # defensive: one part per record
    part_idx = part_idx[first]
    np.add.at(counts, part_idx, rec_counts[rec_idx])
    np.add.at(sums, part_idx, rec_sums[rec_idx])
    np.add.at(margins, part_idx, rec_margins[rec_idx])
    return counts, sums, margins


def _simplify(parts: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Coverage simplification of all classes together (shared edges stay shared).

    Falls back to per-polygon topology-preserving simplification if GEOS rejects the coverage.
    """
    try:
        return shapely.coverage_simplify(parts, tolerance_px)
    except GEOSException as exc:
        log.warning("coverage simplification failed (%s); simplifying polygons one by one", exc)
        return shapely.simplify(parts, tolerance_px, preserve_topology=True)


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid can add lines or points)."""
    if geom.is_empty or isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon | MultiPolygon)]
    return shapely.union_all(parts) if parts else Polygon()


def _scan(
    labels: Any,
    probs: Any,
    nothing: int,
    min_area_px: float,
    block_px: int,
    progress: bool,
    workers: int = 1,
) -> dict[int, _ClassPieces]:
    """Polygonise the raster block by block (blocks in ``workers`` dask processes when > 1);
    per class, the complete and the seam faces of all blocks and the component records.

    Only polygons and per-component records cross processes; each task reads its own block.
    """
    height, width = labels.shape
    origins = [(y0, x0) for y0 in range(0, height, block_px) for x0 in range(0, width, block_px)]
    if workers > 1 and len(origins) > 1 and height * width >= PARALLEL_MIN_PX:
        import dask

        tasks = [
            dask.delayed(_scan_block)(labels, probs, nothing, min_area_px, block_px, y0, x0)
            for y0, x0 in origins
        ]
        log.info("vectorising %d blocks in %d processes", len(origins), workers)
        blocks = dask.compute(*tasks, scheduler=SCHEDULER, num_workers=workers)
    else:
        blocks = (
            _scan_block(labels, probs, nothing, min_area_px, block_px, y0, x0)
            for y0, x0 in progress_bar(
                origins, desc="vectorize", unit="block", disable=not progress
            )
        )
    pieces: dict[int, _ClassPieces] = {}
    for found in blocks:
        for k, p in found.items():
            pieces.setdefault(k, _ClassPieces()).extend(p)
    return pieces


def _merge_class(
    pieces: _ClassPieces, min_area_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One class: merge its seam faces, measure, drop small parts, fill small holes.

    Returns (polygons, pixel count, probability sum, margin sum) per connected component.
    """
    seam = np.concatenate(pieces.seam)
    merged = shapely.get_parts(shapely.coverage_union_all(seam)) if len(seam) else seam
    parts = np.concatenate([*pieces.inner, merged])
    counts, sums, margins = _component_stats(parts, pieces.records)
    keep = shapely.area(parts) >= min_area_px
    parts = np.array([_drop_small_holes(p, min_area_px) for p in parts[keep]], dtype=object)
    return parts, counts[keep], sums[keep], margins[keep]


def vectorize_labels(
    labels: Any,
    classes: ClassList,
    *,
    mpp: float,
    level0_per_px: float,
    probs: Any = None,
    min_area_um2: float = MIN_AREA_UM2,
    simplify_um: float | None = None,
    block_px: int = BLOCK_PX,
    offset_px: tuple[float, float] = (0.0, 0.0),
    clip_box_px: tuple[float, float, float, float] | None = None,
    progress: bool = False,
    min_probability: Mapping[str, float] | None = None,
    workers: int = 1,
) -> list[ClassPolygons]:
    """Vectorise a ``Y×X`` label raster (numpy, zarr or dask) into polygons per foreground class.

    ``mpp``: mosaic µm/px; ``level0_per_px``: level-0 slide px per mosaic px; ``probs``: optional
    ``(C+1)×Y×X`` uint8 (0-255) probabilities for the mean probability per component;
    ``min_area_um2``: smaller components are removed and smaller holes filled; ``simplify_um``:
    coverage-simplification tolerance (None → one mosaic pixel, 0 → none); ``offset_px``:
    subtracted from the level-0 output coordinates (x, y), e.g. the OpenSlide bounds;
    ``clip_box_px``: level-0 (x0, y0, x1, y1) the output is clipped to (before the offset);
    ``min_probability``: per class name, components whose mean class probability (0-1) is lower
    are dropped; ``workers``: block rows vectorised in parallel processes (dask).
    Memory: ``workers`` blocks of labels and probabilities plus the merged polygons.
    """
    if mpp <= 0 or level0_per_px <= 0:
        raise ValueError(f"mpp and level0_per_px must be positive, got {mpp}, {level0_per_px}")
    if block_px < 2:
        raise ValueError(f"block_px must be at least 2, got {block_px}")
    nothing = classes.background_index
    thresholds = dict(min_probability or {})
    unknown = sorted(set(thresholds) - set(classes.foreground_names))
    if unknown:
        raise ConfigError(
            f"min_probability: unknown class(es) {', '.join(unknown)} (the mosaic has "
            f"{', '.join(classes.foreground_names)})"
        )
    if thresholds and probs is None:
        raise ConfigError("min_probability: needs the mosaic's probabilities")
    min_area_px = max(0.0, float(min_area_um2)) / mpp**2
    tolerance_px = 1.0 if simplify_um is None else max(0.0, float(simplify_um)) / mpp
    pieces = _scan(labels, probs, nothing, min_area_px, block_px, progress, workers)
    merged = [(k, *_merge_class(pieces.pop(k), min_area_px)) for k in sorted(pieces)]

    all_parts = np.concatenate([m[1] for m in merged]) if merged else np.empty(0, dtype=object)
    if tolerance_px > 0 and len(all_parts):
        all_parts = _simplify(all_parts, tolerance_px)
    all_parts = shapely.make_valid(all_parts)

    scale = float(level0_per_px)
    shift = np.asarray(offset_px, dtype=np.float64)
    clip = None if clip_box_px is None else shapely.box(*clip_box_px)
    results = []
    start = 0
    for k, parts, counts, sums, margins in merged:
        mine = all_parts[start : start + len(parts)]
        start += len(parts)
        threshold = float(thresholds.get(classes.all[k].name, 0.0))
        results.append(
            _finish_class(
                classes,
                k,
                mine,
                (counts, sums, margins),
                scale,
                shift,
                clip,
                mpp / scale,
                threshold,
            )
        )
    by_index = {r.index: r for r in results}
    return [
        by_index.get(k) or ClassPolygons(k, c.name, c.color)
        for k, c in enumerate(classes.foreground)
    ]


def _finish_class(
    classes: ClassList,
    k: int,
    parts: np.ndarray,
    stats: tuple[np.ndarray, np.ndarray, np.ndarray],
    scale: float,
    shift: np.ndarray,
    clip: BaseGeometry | None,
    slide_mpp: float,
    min_probability: float = 0.0,
) -> ClassPolygons:
    """Scale one class's components to level-0 px, clip, offset and measure them; drop those
    whose mean class probability is below ``min_probability``."""
    components, areas, means, pixels, margins = [], [], [], [], []
    dropped = 0
    for geom, n, s, m in zip(parts, *stats, strict=True):
        mean = s / n / 255.0 if n > 0 else float("nan")
        if min_probability > 0 and not mean >= min_probability:
            dropped += 1
            continue
        geom = _polygonal(geom)
        if geom.is_empty:
            continue
        geom = shapely.transform(geom, lambda c: c * scale)
        if clip is not None and not clip.contains(geom):
            geom = _polygonal(shapely.make_valid(geom.intersection(clip)))
            if geom.is_empty:
                continue
        areas.append(geom.area * slide_mpp**2)
        if shift.any():
            geom = shapely.transform(geom, lambda c: c - shift)
        components.append(geom)
        means.append(mean)
        margins.append(m / n / 255.0 if n > 0 else float("nan"))
        pixels.append(n)
    tissue = classes.all[k]
    if dropped:
        log.info(
            "%s: %d component(s) below min_probability %g dropped",
            tissue.name,
            dropped,
            min_probability,
        )
    return ClassPolygons(
        k,
        tissue.name,
        tissue.color,
        components,
        np.asarray(areas, dtype=np.float64),
        np.asarray(means, dtype=np.float64),
        np.asarray(pixels, dtype=np.int64),
        np.asarray(margins, dtype=np.float64),
        dropped,
    )


def vectorize_mosaic(
    mosaic: MosaicLike,
    *,
    min_area_um2: float = MIN_AREA_UM2,
    simplify_um: float | None = None,
    subtract_bounds: bool = False,
    block_px: int = BLOCK_PX,
    progress: bool = False,
    min_probability: Mapping[str, float] | None = None,
    workers: int = 1,
) -> list[ClassPolygons]:
    """Vectorise an opened mosaic (``wsi_lpd.formats.mosaic.open_mosaic``); see
    :func:`vectorize_labels`.

    Output is clipped to the slide (level-0 size). ``subtract_bounds`` clips to the OpenSlide
    bounds (``attrs["bounds"]``, x, y, w, h) and shifts by their origin, matching QuPath's view
    of MRXS-like slides that it crops to those bounds.
    """
    attrs = mosaic.attrs
    width, height = int(attrs["level0_width"]), int(attrs["level0_height"])
    bx, by, bw, bh = (int(v) for v in (attrs.get("bounds") or (0, 0, width, height)))
    offset = (float(bx), float(by)) if subtract_bounds else (0.0, 0.0)
    clip = (bx, by, bx + bw, by + bh) if subtract_bounds else (0, 0, width, height)
    return vectorize_labels(
        mosaic.labels,
        mosaic.classes,
        mpp=float(attrs["mpp"]),
        level0_per_px=float(attrs["level0_per_px"]),
        probs=mosaic.probs,
        min_area_um2=min_area_um2,
        simplify_um=simplify_um,
        block_px=block_px,
        offset_px=offset,
        clip_box_px=clip,
        progress=progress,
        min_probability=min_probability,
        workers=workers,
    )


def _measurements(area_um2: float, mean_probability: float, margin: float) -> dict[str, float]:
    out = {AREA_KEY: float(area_um2)}
    if np.isfinite(mean_probability):
        out[PROBABILITY_KEY] = float(mean_probability)
    if np.isfinite(margin):
        out[MARGIN_KEY] = float(margin)
    return out


def class_features(
    results: Sequence[ClassPolygons], object_type: str = "annotation", per_class: bool = False
) -> Iterator[dict[str, Any]]:
    """QuPath features: one per class and component, or one (Multi)Polygon per class."""
    for res in results:
        if not res.components:
            continue
        if per_class:
            yield feature(
                res.geometry,
                res.name,
                res.color,
                object_type=object_type,
                measurements=_measurements(
                    res.total_area_um2, res.class_mean_probability, res.class_mean_margin
                ),
            )
            continue
        margins = res.mean_margin if len(res.mean_margin) else np.full(len(res.components), np.nan)
        for geom, area, mean, margin in zip(
            res.components, res.area_um2, res.mean_probability, margins, strict=True
        ):
            yield feature(
                geom,
                res.name,
                res.color,
                object_type=object_type,
                measurements=_measurements(area, mean, margin),
            )
