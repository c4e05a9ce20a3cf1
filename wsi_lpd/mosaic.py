"""OME-Zarr (NGFF 0.5, zarr v3) mosaics of class probabilities and labels, with a pyramid.

Layout of ``{slide}.ome.zarr/``:

- ``0, 1, 2, …``: class probabilities, ``(C+1, Y, X)`` uint8 (0-255 ≙ 0-1), axes ``c, y, x``
  (``y, x`` in micrometer), chunks ``(C+1, 512, 512)``; each level halves ``y, x`` down to ≤ 512 px.
- ``labels/classes/0, 1, …``: argmax class index ``(Y, X)`` uint8 (background = C), chunks 512×512.
- root attrs ``ome`` (multiscales + omero channels) and ``wsi_lpd`` (format, classes, mpp,
  slide_mpp, level0_width, level0_height, level0_per_px, slide_id, slide_path, bounds,
  model_sha256, parameters, chunk_px).

Mosaic pixel (i, j) of level 0 covers level-0 slide px [j·s, (j+1)·s) × [i·s, (i+1)·s),
s = ``level0_per_px``; level k pixels cover 2^k times as much.

The writer fills level 0 in full-width row bands (each band a whole number of chunk rows, so every
chunk is written exactly once), then builds each coarser level chunk by chunk from the previous one:
memory is bounded by the band and chunk sizes, never by the slide size. Everything is written into a
temporary store beside the final path and renamed into place by ``close()``: the final path holds a
finished mosaic or nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FORMAT = "wsi-lpd-mosaic/1"
NGFF_VERSION = "0.5"
CHUNK_PX = 512
MIN_LEVEL_PX = 512
LABELS_NAME = "classes"


def level_shapes(
    height_px: int, width_px: int, min_level_px: int = MIN_LEVEL_PX
) -> list[tuple[int, int]]:
    """Pyramid ``(height, width)`` per level: halve (ceil) until max side ≤ ``min_level_px``."""
    shapes = [(int(height_px), int(width_px))]
    while max(shapes[-1]) > min_level_px:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _hex(color: tuple[int, int, int]) -> str:
    return "".join(f"{int(v):02X}" for v in color)


def _datasets(num_levels: int, mpp: float, channel_axis: bool) -> list[dict[str, Any]]:
    """NGFF datasets: scale (µm/px) and the half-pixel translation of coarser levels."""
    out = []
    for k in range(num_levels):
        f = float(2**k)
        scale = [mpp * f, mpp * f]
        shift = [(f - 1.0) / 2.0 * mpp] * 2
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": ([1.0] if channel_axis else []) + scale}
        ]
        if k > 0:
            transforms.append(
                {"type": "translation", "translation": ([0.0] if channel_axis else []) + shift}
            )
        out.append({"path": str(k), "coordinateTransformations": transforms})
    return out


def _space_axes() -> list[dict[str, str]]:
    return [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]


def image_ome_attrs(classes: ClassList, num_levels: int, mpp: float, name: str) -> dict[str, Any]:
    """``ome`` attrs of the probability image: multiscales (c, y, x) and omero channels."""
    channels = [
        {
            "label": c.name,
            "color": _hex(c.color),
            "active": i < classes.background_index,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"start": 0, "end": 255, "min": 0, "max": 255},
        }
        for i, c in enumerate(classes.all)
    ]
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, *_space_axes()],
                "datasets": _datasets(num_levels, mpp, channel_axis=True),
                "type": "mean (2x2 block average)",
            }
        ],
        "omero": {"name": name, "channels": channels, "rdefs": {"model": "color"}},
    }


def label_ome_attrs(classes: ClassList, num_levels: int, mpp: float) -> dict[str, Any]:
    """``ome`` attrs of ``labels/classes``: multiscales (y, x) and image-label colours/names."""
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": LABELS_NAME,
                "axes": _space_axes(),
                "datasets": _datasets(num_levels, mpp, channel_axis=False),
                "type": "argmax of the 2x2 mean probabilities",
            }
        ],
        "image-label": {
            "colors": [
                {"label-value": i, "rgba": [*c.color, 255]} for i, c in enumerate(classes.all)
            ],
            "properties": [{"label-value": i, "name": c.name} for i, c in enumerate(classes.all)],
            "source": {"image": "../../"},
        },
    }


def downsample_probs(block: np.ndarray) -> np.ndarray:
    """2×2 rounded mean of a ``(C, h, w)`` uint8 block (odd edges replicated), ceil-halved."""
    _, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    b = block.astype(np.uint16)
    total = b[:, 0::2, 0::2] + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def argmax_channels(probs: np.ndarray) -> np.ndarray:
    """uint8 index of the largest of ``(C, h, w)`` along C (first wins ties, like ``argmax``)."""
    best = probs[0].copy()
    index = np.zeros(probs.shape[1:], dtype=np.uint8)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        index[better] = c
        np.maximum(best, probs[c], out=best)
    return index


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")


def _create_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dims: tuple[str, ...],
    fill: int,
) -> zarr.Array:
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype="uint8", fill_value=fill, dimension_names=dims
    )


@dataclass
class MosaicWriter:
    """Write one mosaic: level-0 row bands in, pyramid and metadata on ``close()``.

    ``height_px``/``width_px`` are the level-0 mosaic size at ``mpp`` (µm/px); ``level0_width``/
    ``level0_height`` the slide's level-0 size in px at ``slide_mpp``. Use as a context manager: an
    exception aborts (removes the temporary store) and leaves ``path`` untouched.
    """

    path: str | os.PathLike
    classes: ClassList
    height_px: int
    width_px: int
    mpp: float
    slide_mpp: float
    level0_width: int
    level0_height: int
    slide_id: str
    slide_path: str = ""
    bounds: tuple[int, int, int, int] | None = None
    model_sha256: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    chunk_px: int = CHUNK_PX
    min_level_px: int = MIN_LEVEL_PX

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.height_px < 1 or self.width_px < 1:
            raise ConfigError(
                f"{self.path}: mosaic size must be positive, got "
                f"{self.height_px}x{self.width_px} px"
            )
        if self.mpp <= 0 or self.slide_mpp <= 0:
            raise ConfigError(f"{self.path}: mpp and slide_mpp must be positive")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = _temporary_sibling(self.path)
        self.shapes = level_shapes(self.height_px, self.width_px, self.min_level_px)
        self.num_channels = len(self.classes.all)
        self._rows_done = 0
        self._closed = False
        self._root = zarr.open_group(store=str(self.tmp_path), mode="w", zarr_format=3)
        self._labels_group = self._root.create_group("labels").create_group(LABELS_NAME)
        self._probs: list[zarr.Array] = []
        self._labels: list[zarr.Array] = []
        c = self.chunk_px
        for k, (h, w) in enumerate(self.shapes):
            self._probs.append(
                _create_array(
                    self._root,
                    str(k),
                    (self.num_channels, h, w),
                    (self.num_channels, c, c),
                    ("c", "y", "x"),
                    0,
                )
            )
            self._labels.append(
                _create_array(
                    self._labels_group,
                    str(k),
                    (h, w),
                    (c, c),
                    ("y", "x"),
                    self.classes.background_index,
                )
            )
        log.debug(
            "mosaic %s: %d levels %s, temporary store %s",
            self.path,
            len(self.shapes),
            self.shapes,
            self.tmp_path,
        )

    @property
    def level0_per_px(self) -> float:
        """Level-0 slide px per mosaic px (= mpp / slide_mpp)."""
        return self.mpp / self.slide_mpp

    @property
    def rows_written(self) -> int:
        """Level-0 mosaic rows written so far (bands are written top to bottom)."""
        return self._rows_done

    def write_band(self, y0_px: int, probs: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Write rows ``[y0_px, y0_px + h)`` of level 0: ``probs`` ``(C+1, h, X)`` uint8.

        Bands come top to bottom; ``y0_px`` and ``h`` are whole chunk rows (the last band may be
        shorter). ``labels`` ``(h, X)`` uint8 defaults to the argmax of ``probs``.
        """
        h_total, w_total = self.shapes[0]
        h = probs.shape[1]
        if self._closed:
            raise RuntimeError(f"{self.path}: mosaic writer is closed")
        if probs.shape != (self.num_channels, h, w_total) or probs.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: band must be uint8 {(self.num_channels, h, w_total)}, "
                f"got {probs.dtype} {probs.shape}"
            )
        if y0_px != self._rows_done:
            raise ValueError(f"{self.path}: band starts at row {y0_px}, expected {self._rows_done}")
        if h % self.chunk_px and y0_px + h != h_total:
            raise ValueError(f"{self.path}: band height {h} is not a multiple of {self.chunk_px}")
        if y0_px + h > h_total:
            raise ValueError(f"{self.path}: band rows {y0_px}-{y0_px + h} exceed height {h_total}")
        if labels is None:
            labels = argmax_channels(probs)
        elif labels.shape != (h, w_total):
            raise ValueError(f"{self.path}: labels band must be {(h, w_total)}, got {labels.shape}")
        self._probs[0][:, y0_px : y0_px + h, :] = probs
        self._labels[0][y0_px : y0_px + h, :] = labels.astype(np.uint8, copy=False)
        self._rows_done = y0_px + h

    def _build_level(self, k: int) -> None:
        """Fill level ``k`` from level ``k-1``, one output chunk at a time."""
        src, dst, dst_labels = self._probs[k - 1], self._probs[k], self._labels[k]
        h, w = self.shapes[k]
        c = self.chunk_px
        for y in range(0, h, c):
            for x in range(0, w, c):
                block = src[:, 2 * y : 2 * min(y + c, h), 2 * x : 2 * min(x + c, w)]
                small = downsample_probs(np.asarray(block))[:, : min(c, h - y), : min(c, w - x)]
                dst[:, y : y + small.shape[1], x : x + small.shape[2]] = small
                dst_labels[y : y + small.shape[1], x : x + small.shape[2]] = argmax_channels(small)

    def attrs(self) -> dict[str, Any]:
        """The ``wsi_lpd`` root attrs (see the module docstring)."""
        bounds = self.bounds or (0, 0, self.level0_width, self.level0_height)
        return {
            "format": FORMAT,
            "classes": self.classes.to_dict(),
            "mpp": float(self.mpp),
            "slide_mpp": float(self.slide_mpp),
            "level0_width": int(self.level0_width),
            "level0_height": int(self.level0_height),
            "level0_per_px": float(self.level0_per_px),
            "slide_id": self.slide_id,
            "slide_path": str(self.slide_path),
            "bounds": [int(v) for v in bounds],
            "model_sha256": self.model_sha256,
            "parameters": dict(self.parameters),
            "chunk_px": self.chunk_px,
        }

    def close(self) -> Path:
        """Build the pyramid, write metadata and rename the store to ``path``; return ``path``."""
        if self._closed:
            return Path(self.path)
        if self._rows_done != self.shapes[0][0]:
            raise ValueError(
                f"{self.path}: only {self._rows_done} of {self.shapes[0][0]} rows were written"
            )
        for k in range(1, len(self.shapes)):
            self._build_level(k)
        n = len(self.shapes)
        self._root.attrs.update(
            {
                "ome": image_ome_attrs(self.classes, n, self.mpp, self.slide_id),
                "wsi_lpd": self.attrs(),
            }
        )
        self._root["labels"].attrs.update(
            {"ome": {"version": NGFF_VERSION, "labels": [LABELS_NAME]}}
        )
        self._labels_group.attrs.update({"ome": label_ome_attrs(self.classes, n, self.mpp)})
        final = Path(self.path)
        if final.exists():
            old = _temporary_sibling(final)
            final.rename(old)
            self.tmp_path.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp_path.rename(final)
        self._closed = True
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            log.info("removing stale partial mosaic %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        log.info(
            "wrote mosaic %s (%d levels, level 0 %dx%d px at %.3g µm/px)",
            final,
            n,
            self.shapes[0][1],
            self.shapes[0][0],
            self.mpp,
        )
        return final

    def abort(self) -> None:
        """Remove the temporary store; ``path`` is left as it was."""
        self._closed = True
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> MosaicWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def write_mosaic(path: str | os.PathLike, probs: np.ndarray, **meta: Any) -> Path:
    """Write a small in-memory ``(C+1, Y, X)`` uint8 probability array as a mosaic (tests, demos).

    ``meta`` are the :class:`MosaicWriter` fields other than ``path``/``height_px``/``width_px``.
    """
    _, h, w = probs.shape
    with MosaicWriter(path, height_px=h, width_px=w, **meta) as writer:
        step = writer.chunk_px * 4
        for y0 in range(0, h, step):
            writer.write_band(y0, np.ascontiguousarray(probs[:, y0 : y0 + step]))
    return Path(path)


@dataclass(frozen=True)
class MosaicLevel:
    """One pyramid level: arrays and the level-0 px per mosaic px at this level."""

    probs: zarr.Array
    labels: zarr.Array
    level0_per_px: float


@dataclass
class Mosaic:
    """An opened mosaic: level-0 ``probs`` ``(C+1, Y, X)`` / ``labels`` ``(Y, X)`` zarr arrays."""

    path: Path
    group: zarr.Group
    probs: zarr.Array
    labels: zarr.Array
    attrs: dict[str, Any]
    classes: ClassList
    num_levels: int

    @property
    def mpp(self) -> float:
        """Level-0 mosaic resolution in µm/px."""
        return float(self.attrs["mpp"])

    @property
    def level0_per_px(self) -> float:
        """Level-0 slide px per level-0 mosaic px."""
        return float(self.attrs["level0_per_px"])

    @property
    def slide_id(self) -> str:
        return str(self.attrs["slide_id"])

    def level(self, i: int) -> MosaicLevel:
        """Pyramid level ``i`` (0 = full resolution); each level halves the size."""
        if not 0 <= i < self.num_levels:
            raise IndexError(f"{self.path}: level {i} out of range 0-{self.num_levels - 1}")
        labels = self.group["labels"][LABELS_NAME][str(i)]
        return MosaicLevel(self.group[str(i)], labels, self.level0_per_px * 2**i)  # type: ignore[arg-type]


def open_mosaic(path: str | os.PathLike) -> Mosaic:
    """Open a finished mosaic read-only; ``DatasetError`` naming the path when it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{p}: mosaic not found")
    try:
        group = zarr.open_group(store=str(p), mode="r")
        attrs = dict(group.attrs.get("wsi_lpd") or {})
        ome = group.attrs.get("ome") or {}
        n = len(ome["multiscales"][0]["datasets"])
        probs = group["0"]
        labels = group["labels"][LABELS_NAME]["0"]
    except (KeyError, IndexError, TypeError, ValueError, FileNotFoundError) as exc:
        raise DatasetError(f"{p}: not a wsi-lpd OME-Zarr mosaic ({exc!r})") from exc
    if attrs.get("format") != FORMAT:
        raise DatasetError(f"{p}: root attrs carry no wsi_lpd mosaic metadata")
    classes = ClassList.from_dict(attrs["classes"])
    return Mosaic(p, group, probs, labels, attrs, classes, n)  # type: ignore[arg-type]
