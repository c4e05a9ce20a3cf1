"""The patches stage: labelled patches cut from slides into a patch store.

Labels come from tile grids + QuPath region annotations (three states per class: positive,
negative, unknown), ground-truth label masks, or a patch-label CSV. :func:`build_patch_store` is
the stage's entry point (options: one :class:`~wsi_lpd.data.options.PatchesSection`); it writes
``STORE.zarr`` atomically and ``STORE.run.json`` beside it. The store format is
:mod:`wsi_lpd.formats.patch_store`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from wsi_lpd.classes import ClassList, ClassMapping
from wsi_lpd.data.options import PatchesSection
from wsi_lpd.errors import AnnotationError, ConfigError, DatasetError
from wsi_lpd.formats.patch_store import (
    DEFAULT_CHUNK_PATCHES,
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    PatchStoreWriter,
)
from wsi_lpd.io import atomic_dir
from wsi_lpd.progress import progress as progress_bar
from wsi_lpd.run_metadata import write_run_metadata

log = logging.getLogger(__name__)


def class_coverage(
    geometries: Sequence[Any], x_level0: np.ndarray, y_level0: np.ndarray, size_level0: float
) -> np.ndarray:
    """Fraction (0-1) of each square tile covered by each geometry: (n_tiles, n_geometries) float32.

    Tiles are ``size_level0`` level-0 px squares with top-left corners ``x_level0, y_level0``.
    Exact polygon areas (no rasterisation); only tiles that touch a geometry's boundary are clipped,
    so the cost and memory scale with the tile count, not with the slide size.
    """
    n = len(x_level0)
    out = np.zeros((n, len(geometries)), dtype=np.float32)
    if n == 0:
        return out
    x0 = np.asarray(x_level0, dtype=np.float64)
    y0 = np.asarray(y_level0, dtype=np.float64)
    boxes = shapely.box(x0, y0, x0 + size_level0, y0 + size_level0)
    tree = shapely.STRtree(boxes)
    area = float(size_level0) ** 2
    for k, geom in enumerate(geometries):
        if geom is None or geom.is_empty:
            continue
        shapely.prepare(geom)
        touching = tree.query(geom, predicate="intersects")
        if touching.size == 0:
            continue
        inside = shapely.contains_properly(geom, boxes[touching])
        out[touching[inside], k] = 1.0
        edge = touching[~inside]
        if edge.size:
            out[edge, k] = shapely.area(shapely.intersection(boxes[edge], geom)) / area
    return np.clip(out, 0.0, 1.0)


@dataclass
class SlideAnnotations:
    """One annotation file read for one slide: per-class unions and what was found.

    ``per_class``: union per class (index into ``classes.all``, None when absent); ``annotated``:
    union of every mapped annotation (background included); ``n_polygons``: polygons read
    (mapped or not); ``inside``: whether any polygon touches the slide.
    """

    path: Path
    per_class: list[Any]
    annotated: Any
    n_polygons: int
    inside: bool


def class_geometries(
    annotation_path: Path,
    classes: ClassList,
    mapping: ClassMapping | None = None,
    offset_px: tuple[float, float] = (0.0, 0.0),
) -> list[Any]:
    """Union of the annotations per class (index into ``classes.all``, None when absent).

    Class names go through ``mapping`` (default: model names only, unknown names refused);
    ``offset_px`` (level-0 px, :func:`wsi_lpd.formats.geojson.qupath_offset_px`) shifts every
    polygon.
    """
    return read_slide_annotations(annotation_path, classes, mapping, offset_px).per_class


def read_slide_annotations(
    annotation_path: str | os.PathLike[str],
    classes: ClassList,
    mapping: ClassMapping | None = None,
    offset_px: tuple[float, float] = (0.0, 0.0),
    slide_size_px: tuple[int, int] | None = None,
) -> SlideAnnotations:
    """Read one annotation file as :func:`class_geometries` does, with what was found.

    ``slide_size_px`` (level-0 width, height) sets :attr:`SlideAnnotations.inside`.
    """
    from wsi_lpd.formats.geojson import read_annotations

    mapping = mapping or ClassMapping(classes, unknown_classes="refuse")
    annotations = read_annotations(annotation_path, offset_px=offset_px)
    targets = mapping.indices((a.class_name for a in annotations), annotation_path)
    per_class: list[list[Any]] = [[] for _ in classes.all]
    unclassified = 0
    for ann, target in zip(annotations, targets, strict=True):
        if ann.class_name is None:
            unclassified += 1
        elif target is not None:
            per_class[target].append(ann.geometry)
    if unclassified:
        log.warning("%s: ignored %d unclassified annotation(s)", annotation_path, unclassified)
    unions = [shapely.union_all(g) if g else None for g in per_class]
    mapped = [u for u in unions if u is not None]
    inside = True
    if slide_size_px is not None and annotations:
        frame = shapely.box(0, 0, *slide_size_px)
        inside = any(a.geometry.intersects(frame) for a in annotations)
    return SlideAnnotations(
        path=Path(annotation_path),
        per_class=unions,
        annotated=shapely.union_all(mapped) if mapped else None,
        n_polygons=len(annotations),
        inside=inside,
    )


def label_states(
    class_fraction: np.ndarray,
    annotated_fraction: np.ndarray,
    tissue_fraction: np.ndarray,
    min_class_fraction: float,
    min_annotated_fraction: float,
) -> np.ndarray:
    """Three-state labels (N, C) int8 from per-patch area fractions (all 0-1 of the patch area).

    Positive (1) where ``class_fraction`` ≥ ``min_class_fraction``; otherwise negative (0) where
    the annotated union covers ≥ ``min_annotated_fraction`` of the patch's tissue
    (``annotated_fraction`` ≥ ``min_annotated_fraction`` × ``tissue_fraction``, and > 0);
    otherwise unknown (-1): the unannotated rest of the patch may hold the class.
    """
    positive = class_fraction >= min_class_fraction
    annotated = np.asarray(annotated_fraction)
    complete = (annotated > 0) & (annotated >= min_annotated_fraction * np.asarray(tissue_fraction))
    states = np.where(positive, POSITIVE, np.where(complete[:, None], NEGATIVE, UNKNOWN))
    return states.astype(np.int8)


def _tile_grid_path(tile_dir: Path) -> Path:
    path = tile_dir / "tiles.npz" if tile_dir.is_dir() else tile_dir
    if not path.is_file():
        raise DatasetError(f"{tile_dir}: tile grid not found (expected {path})")
    return path


def _truth_lookup(mask_classes: ClassList, classes: ClassList, path: Path) -> np.ndarray:
    """Map a label mask's class indices onto ``classes`` (by name)."""
    lut = np.full(256, classes.background_index, dtype=np.uint8)
    for i, name in enumerate(mask_classes.names):
        if name not in classes.names:
            raise AnnotationError(
                f"{path}: mask class {name!r} is not in the class list ({', '.join(classes.names)})"
            )
        lut[i] = classes.index(name)
    return lut


def sample_mask_patch(
    mask: np.ndarray,
    mask_level0_per_px: float,
    x_level0: int,
    y_level0: int,
    size_level0: float,
    patch_px: int,
    fill: int,
) -> np.ndarray:
    """Nearest-resample the mask region of one patch to (patch_px, patch_px); outside → ``fill``."""
    centres = (np.arange(patch_px) + 0.5) * (size_level0 / patch_px)
    rows = np.floor((y_level0 + centres) / mask_level0_per_px).astype(np.int64)
    cols = np.floor((x_level0 + centres) / mask_level0_per_px).astype(np.int64)
    h, w = mask.shape
    valid_r = (rows >= 0) & (rows < h)
    valid_c = (cols >= 0) & (cols < w)
    out = mask[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    out = np.where(valid_r[:, None] & valid_c[None, :], out, fill)
    return out.astype(np.uint8)


def _mask_labels(mask: np.ndarray, n_fg: int, min_class_fraction: float) -> np.ndarray:
    """Fully known labels of a patch's truth mask: 1 where a class covers ≥ the fraction."""
    fraction = np.bincount(mask.reshape(-1), minlength=n_fg + 1)[:n_fg] / mask.size
    return (fraction >= min_class_fraction).astype(np.int8)


def build_patch_store_from_annotations(
    tile_dirs: Sequence[str | os.PathLike[str]],
    annotation_paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    classes: ClassList,
    min_class_fraction: float = 0.1,
    truth_masks: Sequence[str | os.PathLike[str]] | None = None,
    chunk_patches: int = DEFAULT_CHUNK_PATCHES,
    progress: bool = True,
    min_annotated_fraction: float = 0.9,
    class_mapping: ClassMapping | None = None,
    qupath_bounds: bool = True,
) -> dict[str, Any]:
    """Cut labelled patches from slides with QuPath region annotations into a store at ``out``.

    Tile dirs (``tiles.npz``), annotation files and optional truth masks pair up by order.
    Annotation class names go through ``class_mapping`` (default: model names only, unknown names
    refused). With ``qupath_bounds``, annotations are shifted by the slide's bounds offset
    (:func:`wsi_lpd.formats.geojson.qupath_offset_px`; QuPath coordinates of a cropped slide are
    relative to its bounds).

    Labels (see :func:`label_states`): a class is positive where its annotations cover ≥
    ``min_class_fraction`` of the patch area, negative only where all annotations together
    (background included) cover ≥ ``min_annotated_fraction`` of the patch's tissue — the tile
    grid's ``tissue_fraction`` —, unknown otherwise. With a truth mask, labels come from the mask
    (a class covering ≥ ``min_class_fraction`` of the patch is positive) and are all known.
    Patches with no known entry are left out. Coverage is exact polygon area (shapely). Pixels
    are read at the grid mpp.

    An annotation file that is not GeoJSON fails; one whose polygons all lie outside the slide,
    or that yields no patch, fails naming the file when no slide yields a patch and is a warning
    otherwise — an empty store is never written. Returns a summary: ``patches``, ``per_class``
    positive counts, ``per_class_unknown``, ``per_slide`` patch counts.
    """
    from wsi_lpd.formats.geojson import qupath_offset_px
    from wsi_lpd.slide.reader import open_slide
    from wsi_lpd.slide.tiling import TileGrid

    if len(tile_dirs) != len(annotation_paths):
        raise DatasetError(
            f"{len(tile_dirs)} tile dir(s) but {len(annotation_paths)} annotation file(s): "
            "they pair up by order"
        )
    if truth_masks is not None and len(truth_masks) != len(tile_dirs):
        raise DatasetError(
            f"{len(tile_dirs)} tile dir(s) but {len(truth_masks)} truth mask(s): "
            "they pair up by order"
        )
    for name, value in (
        ("min_class_fraction", min_class_fraction),
        ("min_annotated_fraction", min_annotated_fraction),
    ):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{name}: must be in (0, 1], got {value}")
    grids = [TileGrid.load(_tile_grid_path(Path(d))) for d in tile_dirs]
    if not grids:
        raise DatasetError("no tile grids given")
    mpp, patch_px = float(grids[0].mpp), int(grids[0].patch_px)
    seen: set[str] = set()
    for d, g in zip(tile_dirs, grids, strict=True):
        if str(g.slide_id) in seen:
            raise DatasetError(f"{d}: slide id {g.slide_id!r} appears in an earlier tile dir too")
        seen.add(str(g.slide_id))
        if not math.isclose(g.mpp, mpp, rel_tol=1e-6) or int(g.patch_px) != patch_px:
            raise DatasetError(
                f"{d}: tile grid at {g.mpp} µm/px, {g.patch_px} px; the first grid is at "
                f"{mpp} µm/px, {patch_px} px (one store holds one resolution and patch size)"
            )
    mapping = class_mapping or ClassMapping(classes, unknown_classes="refuse")
    n_fg = classes.num_foreground
    # Read and check every annotation file before the long pixel loop.
    states: list[np.ndarray] = []
    keep: list[np.ndarray] = []
    problems: list[str] = []
    for grid, ann_path in zip(grids, annotation_paths, strict=True):
        offset = (0, 0)
        if qupath_bounds:
            with open_slide(grid.slide_path, mpp=grid.slide_mpp) as slide:
                offset = qupath_offset_px(slide)
        found = read_slide_annotations(
            ann_path, classes, mapping, offset, (grid.slide_width, grid.slide_height)
        )
        size_level0 = float(grid.patch_level0_px)
        cov = class_coverage(
            [*found.per_class[:n_fg], found.annotated], grid.x, grid.y, size_level0
        )
        slide_states = label_states(
            cov[:, :n_fg],
            cov[:, n_fg],
            grid.tissue_fraction,
            min_class_fraction,
            min_annotated_fraction,
        )
        slide_keep = np.flatnonzero((slide_states != UNKNOWN).any(axis=1))
        states.append(slide_states)
        keep.append(slide_keep)
        if slide_keep.size == 0:
            problems.append(_no_patch_reason(found, grid, offset))
    total = int(sum(k.size for k in keep))
    if total == 0:
        raise AnnotationError("; ".join(problems))
    for problem in problems:
        log.warning("%s (other slides give patches)", problem)
    per_class = np.zeros(n_fg, dtype=np.int64)
    per_class_unknown = np.zeros(n_fg, dtype=np.int64)
    per_slide: dict[str, int] = {}
    with (
        PatchStoreWriter(
            out,
            classes,
            mpp,
            patch_px,
            with_masks=truth_masks is not None,
            chunk_patches=chunk_patches,
        ) as writer,
        progress_bar(total=total, desc="patches", unit="patch", disable=not progress) as bar,
    ):
        for i, grid in enumerate(grids):
            slide_index = writer.add_slide(str(grid.slide_id), float(grid.slide_mpp))
            truth = lut = None
            if truth_masks is not None:
                from wsi_lpd.formats.labelmask import read_label_mask

                truth = read_label_mask(truth_masks[i])
                lut = _truth_lookup(truth.classes, classes, Path(truth_masks[i]))
            size_level0 = float(grid.patch_level0_px)
            with open_slide(grid.slide_path, mpp=grid.slide_mpp) as slide:
                for t in keep[i]:
                    x, y = int(grid.x[t]), int(grid.y[t])
                    image = slide.read_region((x, y), (patch_px, patch_px), mpp)
                    labels, mask = states[i][t], None
                    if truth is not None and lut is not None:
                        raw = sample_mask_patch(
                            truth.mask,
                            truth.mpp / float(grid.slide_mpp),
                            x,
                            y,
                            size_level0,
                            patch_px,
                            fill=len(truth.classes.all) - 1,
                        )
                        mask = lut[raw]
                        labels = _mask_labels(mask, n_fg, min_class_fraction)
                    writer.append(image, labels, (x, y), slide_index, mask)
                    per_class += labels == POSITIVE
                    per_class_unknown += labels == UNKNOWN
                    bar.update(1)
            per_slide[str(grid.slide_id)] = int(keep[i].size)
            log.info("%s: %d of %d tiles labelled", grid.slide_id, keep[i].size, len(grid.x))
        count = writer.close()
    summary = _summary(count, classes, per_class, per_slide)
    summary["per_class_unknown"] = {
        n: int(v) for n, v in zip(classes.foreground_names, per_class_unknown, strict=True)
    }
    return summary


def _no_patch_reason(found: SlideAnnotations, grid: Any, offset: tuple[int, int]) -> str:
    """One line naming the annotation file and why it gave no patch on its slide."""
    where = f"{found.path}: no patch for slide {grid.slide_id!r}"
    if found.n_polygons == 0:
        return f"{where}: the file holds no polygon annotation"
    if not found.inside:
        shift = f", after the bounds offset {offset}" if any(offset) else ""
        return (
            f"{where}: all {found.n_polygons} annotation polygon(s) lie outside the slide "
            f"(0..{grid.slide_width} x 0..{grid.slide_height} level-0 px{shift})"
        )
    if found.annotated is None:
        return f"{where}: none of its {found.n_polygons} annotation(s) has a model class"
    return (
        f"{where}: no tissue tile of {len(grid.x)} is covered enough by its annotations "
        "(min_class_fraction / min_annotated_fraction)"
    )


def _summary(
    count: int, classes: ClassList, per_class: np.ndarray, per_slide: dict[str, int]
) -> dict[str, Any]:
    return {
        "patches": int(count),
        "per_class": {n: int(v) for n, v in zip(classes.foreground_names, per_class, strict=True)},
        "per_slide": per_slide,
    }


CSV_COLUMNS = ("slide_id", "path", "x", "y", "labels")


@dataclass
class _CsvRow:
    slide_id: str
    path: Path
    x: int
    y: int
    labels: np.ndarray


def read_labels_csv(csv_path: str | os.PathLike[str], classes: ClassList) -> list[_CsvRow]:
    """Parse and validate a patch-label CSV (slide_id, path, x, y, labels as ``TUM;STR``).

    Relative slide paths are resolved against the CSV's folder; x, y are level-0 px. A slide id must
    always name the same path. Raises ``DatasetError`` naming the file, line and problem.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: labels CSV not found")
    fg = classes.foreground_names
    rows: list[_CsvRow] = []
    paths: dict[str, Path] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        for line_no, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{csv_path}:{line_no}"
            if not row["slide_id"]:
                raise DatasetError(f"{where}: empty slide_id")
            try:
                x, y = int(row["x"]), int(row["y"])
            except ValueError:
                raise DatasetError(f"{where}: x and y must be integers (level-0 px)") from None
            labels = np.zeros(len(fg), dtype=np.uint8)
            for name in filter(None, (s.strip() for s in row["labels"].split(";"))):
                if name not in fg:
                    raise DatasetError(
                        f"{where}: label {name!r} is not a foreground class ({', '.join(fg)})"
                    )
                labels[fg.index(name)] = 1
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            if paths.setdefault(row["slide_id"], path) != path:
                raise DatasetError(
                    f"{where}: slide id {row['slide_id']!r} names {path}, earlier "
                    f"{paths[row['slide_id']]}"
                )
            rows.append(_CsvRow(row["slide_id"], path, x, y, labels))
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    return rows


def build_patch_store_from_csv(
    csv_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    classes: ClassList,
    mpp: float,
    patch_px: int,
    chunk_patches: int = DEFAULT_CHUNK_PATCHES,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut patches listed in a CSV (see :func:`read_labels_csv`) at ``mpp`` µm/px, ``patch_px`` px.

    CSV labels are fully known (listed classes positive, the others negative). Patches are
    grouped by slide (first-appearance order) so each slide is opened once.
    Returns the same summary as :func:`build_patch_store_from_annotations`.
    """
    from wsi_lpd.slide.reader import open_slide

    rows = read_labels_csv(csv_path, classes)
    for path in {r.path for r in rows}:
        if not path.is_file():
            raise DatasetError(f"{csv_path}: slide {path} not found")
    by_slide: dict[str, list[_CsvRow]] = {}
    for r in rows:
        by_slide.setdefault(r.slide_id, []).append(r)
    per_class = np.zeros(classes.num_foreground, dtype=np.int64)
    per_slide: dict[str, int] = {}
    with (
        PatchStoreWriter(out, classes, mpp, patch_px, chunk_patches=chunk_patches) as writer,
        progress_bar(total=len(rows), desc="patches", unit="patch", disable=not progress) as bar,
    ):
        for slide_id, slide_rows in by_slide.items():
            with open_slide(slide_rows[0].path) as slide:
                slide_index = writer.add_slide(slide_id, slide.mpp)
                for r in slide_rows:
                    image = slide.read_region((r.x, r.y), (patch_px, patch_px), mpp)
                    writer.append(image, r.labels, (r.x, r.y), slide_index)
                    per_class += r.labels
                    bar.update(1)
            per_slide[slide_id] = len(slide_rows)
        count = writer.close()
    return _summary(count, classes, per_class, per_slide)


def run_metadata_path(out: str | os.PathLike[str]) -> Path:
    """``STORE.zarr`` → ``STORE.run.json`` beside it."""
    out = Path(out)
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(f"{stem}.run.json")


def build_patch_store(
    opts: PatchesSection,
    classes: ClassList,
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    on_valid: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The patches stage: ``opts.tiles`` + ``opts.annotations`` (+ ``opts.truth``), or
    ``opts.labels_csv`` with ``opts.mpp`` and ``opts.patch_px``, cut into the store ``out`` (written
    atomically) over ``classes``; ``STORE.run.json`` beside it. Returns the summary.

    ``source`` (the config file) is named in class-mapping errors; ``on_valid`` is called once
    the options are checked."""
    started = time.time()
    if (opts.labels_csv is None) == (not opts.tiles):
        raise ConfigError("patches: give either --tiles with --annotations, or --labels-csv")
    if opts.labels_csv is not None and (opts.mpp is None or opts.patch_px is None):
        raise ConfigError("patches: --labels-csv needs --mpp and --patch-px")
    if opts.tiles and not opts.annotations:
        raise ConfigError("patches: --tiles needs --annotations (one per tile dir)")
    try:
        mapping = ClassMapping(classes, opts.class_map, opts.unknown_classes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if on_valid is not None:
        on_valid()
    out = Path(out)
    with atomic_dir(out) as tmp:
        if opts.labels_csv is not None:
            assert opts.mpp is not None and opts.patch_px is not None
            summary = build_patch_store_from_csv(
                opts.labels_csv, tmp, classes, opts.mpp, opts.patch_px
            )
            inputs: dict[str, Any] = {"labels_csv": str(opts.labels_csv)}
        else:
            assert opts.tiles is not None and opts.annotations is not None
            summary = build_patch_store_from_annotations(
                opts.tiles,
                opts.annotations,
                tmp,
                classes,
                min_class_fraction=opts.min_class_fraction,
                truth_masks=opts.truth or None,
                min_annotated_fraction=opts.min_annotated_fraction,
                class_mapping=mapping,
                qupath_bounds=opts.qupath_bounds,
            )
            inputs = {
                "tiles": [str(p) for p in opts.tiles],
                "annotations": [str(p) for p in opts.annotations],
                "truth": [str(p) for p in opts.truth or []],
            }
    counts = ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())
    log.info("wrote %s: %d patches; positive labels: %s", out, summary["patches"], counts)
    parameters = {
        "out": str(out),
        **opts.model_dump(mode="json", exclude={"tiles", "annotations", "truth", "labels_csv"}),
        "classes": classes.to_dict(),
    }
    write_run_metadata(
        run_metadata_path(out), "patches", parameters, inputs, started, summary=summary
    )
    return summary
