"""Patch stores: a zarr v3 group of patches with three-state labels (format ``wsi-lpd-patches/2``).

Layout (see docs/contracts.md): ``images`` (N, H, W, 3) uint8, ``labels`` (N, C) int8 over the
foreground classes — 1 positive, 0 negative, -1 unknown —, ``coords`` (N, 2) int64 level-0 (x, y)
top-left, ``slide_index`` (N,) int32, optional ``masks`` (N, H, W) uint8 ground-truth class
indices. Attributes: ``format``, ``classes`` (ClassList dict), ``mpp`` (µm/px of the stored
pixels), ``patch_px``, ``slides``, ``slide_mpp`` (level-0 µm/px per slide, None when unknown).

Stores of format ``wsi-lpd-patches/1`` (``labels`` uint8 multi-hot, every entry known, no
``slide_mpp``) keep loading: :meth:`PatchStore.label_states` reads them as 1 / 0.

Images and masks are stored one patch per chunk inside shards of ``chunk_patches`` patches, so a
random read decodes one patch while the files stay few. The writer buffers one shard, so its memory
is bounded by ``chunk_patches`` patches whatever the number of patches or the slide size.

Stores are built from slides by the patches stage, :mod:`wsi_lpd.data.patches` (tile grids +
QuPath region annotations, or a patch-label sheet).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import DatasetError

log = logging.getLogger(__name__)

PATCH_STORE_FORMAT = "wsi-lpd-patches/2"
LEGACY_FORMATS = ("wsi-lpd-patches/1",)
"""Older formats :func:`open_patch_store` still reads (uint8 multi-hot labels, all known)."""
POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1
"""The three label states of a (patch, class) entry."""
DEFAULT_CHUNK_PATCHES = 64
_LABEL_CHUNK_ROWS = 4096


class PatchStoreWriter:
    """Append patches to a new patch store in shards of ``chunk_patches`` (bounded memory).

    Use as a context manager; attributes are written and the last partial shard flushed on exit.
    ``path`` is overwritten. Atomicity (temporary name + rename) is the caller's job.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        classes: ClassList,
        mpp: float,
        patch_px: int,
        with_masks: bool = False,
        chunk_patches: int = DEFAULT_CHUNK_PATCHES,
    ) -> None:
        import zarr

        if mpp <= 0 or patch_px <= 0 or chunk_patches <= 0:
            raise ValueError("mpp, patch_px and chunk_patches must be positive")
        self.path = Path(path)
        self.classes = classes
        self.mpp = float(mpp)
        self.patch_px = int(patch_px)
        self.with_masks = with_masks
        self.chunk_patches = int(chunk_patches)
        self.slides: list[str] = []
        self.slide_mpp: list[float | None] = []
        self.count = 0
        self._buffer: dict[str, list[np.ndarray]] = {k: [] for k in self._array_names()}
        self._group = zarr.open_group(self.path, mode="w")
        p, c, n = self.patch_px, classes.num_foreground, self.chunk_patches
        self._group.create_array(
            "images", shape=(0, p, p, 3), dtype="uint8", chunks=(1, p, p, 3), shards=(n, p, p, 3)
        )
        self._group.create_array(
            "labels", shape=(0, c), dtype="int8", chunks=(_LABEL_CHUNK_ROWS, c)
        )
        self._group.create_array(
            "coords", shape=(0, 2), dtype="int64", chunks=(_LABEL_CHUNK_ROWS, 2)
        )
        self._group.create_array(
            "slide_index", shape=(0,), dtype="int32", chunks=(_LABEL_CHUNK_ROWS,)
        )
        if with_masks:
            self._group.create_array(
                "masks", shape=(0, p, p), dtype="uint8", chunks=(1, p, p), shards=(n, p, p)
            )

    def _array_names(self) -> tuple[str, ...]:
        names = ("images", "labels", "coords", "slide_index")
        return (*names, "masks") if self.with_masks else names

    def add_slide(self, slide_id: str, slide_mpp: float | None = None) -> int:
        """Register a slide id (and its level-0 µm/px when known); returns its ``slide_index``."""
        if slide_id in self.slides:
            raise DatasetError(f"{self.path}: slide id {slide_id!r} added twice")
        self.slides.append(slide_id)
        self.slide_mpp.append(None if slide_mpp is None else float(slide_mpp))
        return len(self.slides) - 1

    def append(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        coord_level0: tuple[int, int],
        slide_index: int,
        mask: np.ndarray | None = None,
    ) -> None:
        """Add one patch: image (patch_px, patch_px, 3) uint8, labels (C,) of 1 / 0 / -1.

        Labels are positive (1), negative (0) or unknown (-1) per foreground class; a 0/1
        multi-hot row is a fully known one.
        """
        p = self.patch_px
        if image.shape != (p, p, 3):
            raise ValueError(f"image shape {image.shape} != {(p, p, 3)}")
        if not 0 <= slide_index < len(self.slides):
            raise ValueError(f"slide_index {slide_index} not registered")
        labels = np.asarray(labels).astype(np.int8).reshape(-1)
        if labels.shape != (self.classes.num_foreground,):
            raise ValueError(f"labels shape {labels.shape} != ({self.classes.num_foreground},)")
        if not np.isin(labels, (POSITIVE, NEGATIVE, UNKNOWN)).all():
            raise ValueError(f"labels must be 1, 0 or -1, got {labels.tolist()}")
        if self.with_masks:
            if mask is None or mask.shape != (p, p):
                raise ValueError(f"this store keeps masks: a ({p}, {p}) mask is needed")
            self._buffer["masks"].append(np.asarray(mask, dtype=np.uint8))
        self._buffer["images"].append(np.asarray(image, dtype=np.uint8))
        self._buffer["labels"].append(labels)
        self._buffer["coords"].append(np.asarray(coord_level0, dtype=np.int64))
        self._buffer["slide_index"].append(np.asarray(slide_index, dtype=np.int32))
        if len(self._buffer["images"]) >= self.chunk_patches:
            self.flush()

    def flush(self) -> None:
        """Write the buffered patches to the arrays (one shard when the buffer is full)."""
        n_new = len(self._buffer["images"])
        if n_new == 0:
            return
        start, stop = self.count, self.count + n_new
        for name in self._array_names():
            array = self._group[name]
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = np.stack(self._buffer[name])
            self._buffer[name].clear()
        self.count = stop

    def close(self) -> int:
        """Flush and write the attributes; returns the number of patches."""
        self.flush()
        self._group.attrs.update(
            {
                "format": PATCH_STORE_FORMAT,
                "classes": self.classes.to_dict(),
                "mpp": self.mpp,
                "patch_px": self.patch_px,
                "slides": list(self.slides),
                "slide_mpp": list(self.slide_mpp),
            }
        )
        return self.count

    def __enter__(self) -> PatchStoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()


@dataclass
class PatchStore:
    """An opened patch store: zarr arrays (lazy) and its attributes.

    ``labels`` is the raw zarr array (int8 three-state, or uint8 multi-hot in a legacy store);
    read labels through :meth:`label_states`, :meth:`positive` and :meth:`known`. The eager
    arrays a split needs: :meth:`slide_indices`, :meth:`coords_level0`, :meth:`patch_level0_px`.
    """

    path: Path
    classes: ClassList
    mpp: float
    patch_px: int
    slides: list[str]
    images: Any
    labels: Any
    coords: Any
    slide_index: Any
    masks: Any | None
    slide_mpp: list[float | None]
    format: str = PATCH_STORE_FORMAT

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def label_states(self) -> np.ndarray:
        """(N, C) int8: 1 positive, 0 negative, -1 unknown (a legacy store is all known)."""
        states = np.asarray(self.labels[:])
        if self.format in LEGACY_FORMATS:
            return (states > 0).astype(np.int8)
        return states.astype(np.int8)

    def positive(self) -> np.ndarray:
        """(N, C) uint8 multi-hot: 1 where the class is positive."""
        return (self.label_states() == POSITIVE).astype(np.uint8)

    def known(self) -> np.ndarray:
        """(N, C) uint8: 1 where the label is known (positive or negative)."""
        return (self.label_states() != UNKNOWN).astype(np.uint8)

    def slide_indices(self) -> np.ndarray:
        """(N,) int64 index into ``slides`` of every patch."""
        return np.asarray(self.slide_index[:]).astype(np.int64)

    def coords_level0(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of every patch's top-left corner."""
        return np.asarray(self.coords[:]).astype(np.int64)

    def patch_level0_px(self) -> np.ndarray:
        """(S,) float64 patch side in level-0 px per slide (NaN where its mpp is unknown)."""
        return np.array(
            [np.nan if m is None else self.patch_px * self.mpp / m for m in self.slide_mpp],
            dtype=np.float64,
        )


def open_patch_store(path: str | os.PathLike) -> PatchStore:
    """Open a patch store read-only; ``DatasetError`` when missing or not a wsi-lpd patch store."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: patch store not found")
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: not a zarr group ({exc})") from exc
    attrs = dict(group.attrs)
    fmt = attrs.get("format")
    if fmt != PATCH_STORE_FORMAT and fmt not in LEGACY_FORMATS:
        raise DatasetError(
            f"{path}: not a patch store (format {fmt!r}, expected {PATCH_STORE_FORMAT!r})"
        )
    members = set(group.array_keys())
    missing = {"images", "labels", "coords", "slide_index"} - members
    if missing:
        raise DatasetError(f"{path}: patch store lacks array(s) {', '.join(sorted(missing))}")
    try:
        classes = ClassList.from_dict(attrs["classes"])
    except Exception as exc:
        raise DatasetError(f"{path}: bad 'classes' attribute ({exc})") from exc
    slides = [str(s) for s in attrs.get("slides", [])]
    slide_mpp = attrs.get("slide_mpp") or [None] * len(slides)
    store = PatchStore(
        path=path,
        classes=classes,
        mpp=float(attrs["mpp"]),
        patch_px=int(attrs["patch_px"]),
        slides=slides,
        images=group["images"],
        labels=group["labels"],
        coords=group["coords"],
        slide_index=group["slide_index"],
        masks=group["masks"] if "masks" in members else None,
        slide_mpp=[None if m is None else float(m) for m in slide_mpp],
        format=str(fmt),
    )
    n = len(store)
    for name in ("labels", "coords", "slide_index", "masks"):
        arr = getattr(store, name)
        if arr is not None and arr.shape[0] != n:
            raise DatasetError(f"{path}: array {name!r} has {arr.shape[0]} rows, images has {n}")
    if store.labels.shape[1] != classes.num_foreground:
        raise DatasetError(
            f"{path}: labels have {store.labels.shape[1]} columns for "
            f"{classes.num_foreground} foreground classes"
        )
    return store
