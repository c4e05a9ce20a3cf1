"""OME-Zarr (NGFF 0.5, zarr v3) mosaics of class probabilities and labels, with a pyramid.

Layout of ``{slide}.ome.zarr/``:

- ``0, 1, 2, …``: class probabilities, ``(C+1, Y, X)`` uint8 (0-255 ≙ 0-1), axes ``c, y, x``
  (``y, x`` in micrometer), chunks ``(C+1, 512, 512)``; each level halves ``y, x`` down to ≤ 512 px.
- ``labels/classes/0, 1, …``: argmax label ``(Y, X)`` uint8, chunks 512×512, with 0 = background
  and foreground class ``k`` of ``classes.all`` stored as ``k + 1`` (OME-NGFF/napari practice: label
  0 is transparent). Format ``wsi-lpd-mosaic/1`` stored the in-memory index (background = C);
  :attr:`Mosaic.labels` reads both layouts as in-memory class indices (background last).
- root attrs ``ome`` (multiscales + omero channels) and ``wsi_lpd`` (format, classes, mpp,
  slide_mpp, level0_width, level0_height, level0_per_px, slide_id, slide_path (absolute), bounds,
  model_sha256, parameters, chunk_px, label_background, manifest).
- ``manifest.json``, written last: every file of the store (chunks and metadata) with its size in
  bytes and CRC-32. :func:`open_mosaic` refuses a store whose recorded files are missing or have
  another size (and, with ``verify="checksums"``, another CRC-32), naming the store and the chunk.

Mosaic pixel (i, j) of level 0 covers level-0 slide px [j·s, (j+1)·s) × [i·s, (i+1)·s),
s = ``level0_per_px``; level k pixels cover 2^k times as much.

The writer fills level 0 in full-width row bands (each band a whole number of chunk rows, so every
chunk is written exactly once), then builds each coarser level chunk by chunk from the previous one:
memory is bounded by the band and chunk sizes, never by the slide size (the pyramid's chunks run in
parallel threads with dask, ``workers``). Everything is written into a temporary store beside the
final path (:func:`wsi_lpd.io.atomic_dir`) and renamed into place by ``close()``: the final path
holds a finished mosaic or nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError, DatasetError, MosaicIntegrityError
from wsi_lpd.io import atomic_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "wsi-lpd-mosaic/2"
FORMATS_READ = ("wsi-lpd-mosaic/1", FORMAT)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "wsi-lpd-manifest/1"
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


def _stored_labels(classes: ClassList) -> list[tuple[int, Any]]:
    """``(stored label value, class)``: background 0 first, then foreground classes 1…C."""
    return [(0, classes.all[classes.background_index])] + [
        (k + 1, c) for k, c in enumerate(classes.foreground)
    ]


def to_stored_labels(labels: np.ndarray, background_index: int) -> np.ndarray:
    """In-memory class indices (background = ``background_index``) → stored (0 = background)."""
    lut = np.arange(1, 257, dtype=np.uint16).astype(np.uint8)
    lut[background_index] = 0
    return lut[labels]


def from_stored_labels(background_index: int) -> np.ndarray:
    """256-entry lookup: stored label (0 = background) → in-memory class index (background last)."""
    lut = np.full(256, background_index, dtype=np.uint8)
    lut[1 : background_index + 1] = np.arange(background_index, dtype=np.uint8)
    return lut


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
                {"label-value": label, "rgba": [*c.color, 0 if label == 0 else 255]}
                for label, c in _stored_labels(classes)
            ],
            "properties": [
                {"label-value": label, "name": c.name} for label, c in _stored_labels(classes)
            ],
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


def _store_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(key, path)`` of every file under a store, keys relative with ``/``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            key = path.relative_to(root).as_posix()
            if key != MANIFEST:
                yield key, path


def _crc32(path: Path) -> int:
    return zlib.crc32(path.read_bytes())


def write_manifest(root: Path) -> dict[str, Any]:
    """Record size (bytes) and CRC-32 of every file of the store ``root`` in ``manifest.json``."""
    files = {key: [p.stat().st_size, _crc32(p)] for key, p in _store_files(root)}
    manifest = {"format": MANIFEST_FORMAT, "hash": "crc32", "files": files}
    write_json(root / MANIFEST, manifest)
    return manifest


def verify_manifest(root: Path, checksums: bool = False) -> int:
    """Check every file the manifest records (size; CRC-32 too with ``checksums``).

    Returns the number of files checked; ``MosaicIntegrityError`` naming the store and the first
    missing or altered chunk.
    """
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MosaicIntegrityError(f"{root}: {MANIFEST} missing or unreadable ({exc})") from exc
    for key, (size, crc) in files.items():
        path = root / key
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise MosaicIntegrityError(
                f"{root}: chunk {key} is missing (the store is incomplete; rerun infer)"
            ) from None
        if actual != size:
            raise MosaicIntegrityError(
                f"{root}: chunk {key} was altered ({actual} bytes, {size} written)"
            )
        if checksums and _crc32(path) != crc:
            raise MosaicIntegrityError(f"{root}: chunk {key} was altered (CRC-32 differs)")
    return len(files)


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
    workers: int = 1

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.height_px < 1 or self.width_px < 1:
            raise ConfigError(
                f"{self.path}: mosaic size must be positive, got "
                f"{self.height_px}x{self.width_px} px"
            )
        if self.mpp <= 0 or self.slide_mpp <= 0:
            raise ConfigError(f"{self.path}: mpp and slide_mpp must be positive")
        self._stack = contextlib.ExitStack()
        self.tmp_path = self._stack.enter_context(atomic_dir(self.path))
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
                    0,
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
        stored = to_stored_labels(
            labels.astype(np.uint8, copy=False), self.classes.background_index
        )
        self._labels[0][y0_px : y0_px + h, :] = stored
        self._rows_done = y0_px + h

    def _build_chunk(self, k: int, y: int, x: int) -> None:
        """Output chunk at ``(y, x)`` of level ``k`` from level ``k-1``."""
        src, dst, dst_labels = self._probs[k - 1], self._probs[k], self._labels[k]
        h, w = self.shapes[k]
        c = self.chunk_px
        block = src[:, 2 * y : 2 * min(y + c, h), 2 * x : 2 * min(x + c, w)]
        small = downsample_probs(np.asarray(block))[:, : min(c, h - y), : min(c, w - x)]
        dst[:, y : y + small.shape[1], x : x + small.shape[2]] = small
        labels = to_stored_labels(argmax_channels(small), self.classes.background_index)
        dst_labels[y : y + small.shape[1], x : x + small.shape[2]] = labels

    def _build_level(self, k: int) -> None:
        """Fill level ``k`` from level ``k-1`` chunk by chunk (dask threads if ``workers`` > 1)."""
        h, w = self.shapes[k]
        c = self.chunk_px
        origins = [(y, x) for y in range(0, h, c) for x in range(0, w, c)]
        if self.workers <= 1 or len(origins) == 1:
            for y, x in origins:
                self._build_chunk(k, y, x)
            return
        import dask

        tasks = [dask.delayed(self._build_chunk)(k, y, x) for y, x in origins]
        dask.compute(*tasks, scheduler="threads", num_workers=self.workers)

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
            "label_background": 0,
            "manifest": MANIFEST,
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
        manifest = write_manifest(self.tmp_path)
        self._closed = True
        self._stack.close()
        final = Path(self.path)
        log.info(
            "wrote mosaic %s (%d levels, level 0 %dx%d px at %.3g µm/px, %d files in %s)",
            final,
            n,
            self.shapes[0][1],
            self.shapes[0][0],
            self.mpp,
            len(manifest["files"]),
            MANIFEST,
        )
        return final

    def abort(self) -> None:
        """Remove the temporary store; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        aborted = RuntimeError(f"{self.path}: mosaic writing aborted")
        self._stack.__exit__(RuntimeError, aborted, None)

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


class LabelView:
    """Lazy, sliceable ``(Y, X)`` in-memory class indices (background last) of a stored label array.

    Slicing reads only the chunks asked for and maps stored labels (0 = background, classes 1…C;
    or, for format ``wsi-lpd-mosaic/1``, the in-memory indices themselves) to class indices.
    """

    def __init__(self, array: zarr.Array, lut: np.ndarray | None) -> None:
        self.array = array
        self.lut = lut

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: Any) -> np.ndarray:
        stored = np.asarray(self.array[index])
        return stored if self.lut is None else self.lut[stored]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class MosaicLevel:
    """One pyramid level: arrays and the level-0 px per mosaic px at this level.

    ``labels`` gives in-memory class indices (background last); ``stored_labels`` the raw array.
    """

    probs: zarr.Array
    labels: LabelView
    level0_per_px: float

    @property
    def stored_labels(self) -> zarr.Array:
        return self.labels.array


@dataclass
class Mosaic:
    """An opened mosaic: level-0 ``probs`` ``(C+1, Y, X)`` zarr array and ``labels`` ``(Y, X)``
    in-memory class indices (:class:`LabelView`, background last, whatever the stored layout)."""

    path: Path
    group: zarr.Group
    probs: zarr.Array
    labels: LabelView
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
        stored = self.group["labels"][LABELS_NAME][str(i)]
        labels = LabelView(stored, self.labels.lut)  # type: ignore[arg-type]
        return MosaicLevel(self.group[str(i)], labels, self.level0_per_px * 2**i)  # type: ignore[arg-type]


def open_mosaic(path: str | os.PathLike, verify: str = "sizes") -> Mosaic:
    """Open a finished mosaic read-only; ``DatasetError`` naming the path when it is not one.

    ``verify``: ``sizes`` (default: every chunk the writer recorded exists with its size, a
    ``stat`` per file), ``checksums`` (also reads each file and compares its CRC-32) or ``none``.
    A missing or altered chunk raises ``MosaicIntegrityError`` naming the store and the chunk.
    Stores of format ``wsi-lpd-mosaic/1`` carry no manifest and open with a warning.
    """
    if verify not in ("sizes", "checksums", "none"):
        raise ConfigError(f"verify: expected sizes, checksums or none, got {verify!r}")
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{p}: mosaic not found")
    try:
        group = zarr.open_group(store=str(p), mode="r")
        attrs = dict(group.attrs.get("wsi_lpd") or {})
        ome = group.attrs.get("ome") or {}
        n = len(ome["multiscales"][0]["datasets"])
        probs = group["0"]
        stored = group["labels"][LABELS_NAME]["0"]
    except (KeyError, IndexError, TypeError, ValueError, FileNotFoundError) as exc:
        raise DatasetError(f"{p}: not a wsi-lpd OME-Zarr mosaic ({exc!r})") from exc
    fmt = attrs.get("format")
    if fmt not in FORMATS_READ:
        raise DatasetError(f"{p}: root attrs carry no wsi_lpd mosaic metadata")
    classes = ClassList.from_dict(attrs["classes"])
    if fmt == FORMAT:
        if verify != "none":
            verify_manifest(p, checksums=verify == "checksums")
        lut: np.ndarray | None = from_stored_labels(classes.background_index)
    else:
        log.warning("%s: format %s records no chunk manifest; integrity not checked", p, fmt)
        lut = None
    labels = LabelView(stored, lut)  # type: ignore[arg-type]
    return Mosaic(p, group, probs, labels, attrs, classes, n)  # type: ignore[arg-type]
