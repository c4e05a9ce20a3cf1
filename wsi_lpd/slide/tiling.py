"""Tile grids at a physical resolution with a tissue fraction per tile.

A grid places square patches of ``patch_px`` px at ``mpp`` µm/px with stride ``patch_px −
overlap_px``; positions are level-0 px of the top-left corners. Only full tiles inside the slide are
made. Tissue fractions come from the tissue rasterised at a coarse resolution and summed over each
tile through an integral image (vectorised; no per-tile geometry).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import ConfigError, DatasetError, NoTissueWarning, SlideTooSmallError
from wsi_lpd.slide.geometry import rasterize

log = logging.getLogger(__name__)

FORMAT = "wsi-lpd-tiles/1"
MASK_PX_PER_PATCH = 16
"""The tissue raster has at least this many px along a patch side (fraction resolution 1/16)."""
MAX_MASK_PX = 16_000_000
"""Upper bound on the tissue raster size (px), whatever the slide size."""


@dataclass
class TileGrid:
    """Tiles of one slide: level-0 top-left ``x``, ``y`` (int64) and ``tissue_fraction`` (0–1)."""

    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    mpp: float
    patch_px: int
    overlap_px: int
    slide_id: str
    slide_path: str
    slide_mpp: float
    slide_width: int
    slide_height: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.int64)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.tissue_fraction = np.asarray(self.tissue_fraction, dtype=np.float32)
        if not (len(self.x) == len(self.y) == len(self.tissue_fraction)):
            raise DatasetError("tile grid: x, y and tissue_fraction must have the same length")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def stride_px(self) -> int:
        """Grid step in px at ``mpp``."""
        return self.patch_px - self.overlap_px

    @property
    def patch_level0_px(self) -> float:
        """Patch side in level-0 px."""
        return self.patch_px * self.mpp / self.slide_mpp

    def meta(self) -> dict[str, Any]:
        """Scalars as a JSON-able dict."""
        return {
            "format": FORMAT,
            "mpp": float(self.mpp),
            "patch_px": int(self.patch_px),
            "overlap_px": int(self.overlap_px),
            "stride_px": int(self.stride_px),
            "patch_level0_px": float(self.patch_level0_px),
            "slide_id": self.slide_id,
            "slide_path": self.slide_path,
            "slide_mpp": float(self.slide_mpp),
            "slide_width": int(self.slide_width),
            "slide_height": int(self.slide_height),
            "n_tiles": len(self),
            **({"extra": self.extra} if self.extra else {}),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write an uncompressed npz (``x``, ``y``, ``tissue_fraction``, ``meta`` JSON string)."""
        with open(path, "wb") as fh:
            np.savez(
                fh,
                x=self.x,
                y=self.y,
                tissue_fraction=self.tissue_fraction,
                meta=np.array(json.dumps(self.meta())),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TileGrid:
        """Read a grid written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: tile grid not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in ("x", "y", "tissue_fraction")}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: not a tile grid ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise DatasetError(f"{path}: not a tile grid (format {meta.get('format')!r})")
        return cls(
            **arrays,
            mpp=meta["mpp"],
            patch_px=meta["patch_px"],
            overlap_px=meta["overlap_px"],
            slide_id=meta["slide_id"],
            slide_path=meta["slide_path"],
            slide_mpp=meta["slide_mpp"],
            slide_width=meta["slide_width"],
            slide_height=meta["slide_height"],
            extra=meta.get("extra", {}),
        )


def _positions(size_l0: int, patch_l0: float, stride_l0: float) -> np.ndarray:
    """Level-0 starts of full tiles along one axis."""
    n = math.floor((size_l0 - patch_l0) / stride_l0 + 1e-9) + 1
    return np.round(np.arange(n) * stride_l0).astype(np.int64)


def tissue_fractions(
    tissue: BaseGeometry,
    x: np.ndarray,
    y: np.ndarray,
    patch_l0: float,
    slide_width: int,
    slide_height: int,
) -> np.ndarray:
    """Fraction of each tile [x, x+patch) × [y, y+patch) (level-0 px) covered by ``tissue``."""
    area_px = slide_width * slide_height
    s = max(patch_l0 / MASK_PX_PER_PATCH, math.sqrt(area_px / MAX_MASK_PX), 1.0)
    mh, mw = math.ceil(slide_height / s), math.ceil(slide_width / s)
    mask = rasterize(tissue, (mh, mw), s)
    integral = np.zeros((mh + 1, mw + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    cx0 = np.clip(np.round(x / s).astype(np.int64), 0, mw)
    cy0 = np.clip(np.round(y / s).astype(np.int64), 0, mh)
    cx1 = np.clip(np.round((x + patch_l0) / s).astype(np.int64), 0, mw)
    cy1 = np.clip(np.round((y + patch_l0) / s).astype(np.int64), 0, mh)
    count = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    area = np.maximum((cx1 - cx0) * (cy1 - cy0), 1)
    return (count / area).astype(np.float32)


def check_patch_fits(
    slide_width: int, slide_height: int, slide_mpp: float, mpp: float, patch_px: int, where: str
) -> None:
    """Raise ``SlideTooSmallError`` (naming ``where``) unless one ``patch_px`` tile at ``mpp``
    µm/px fits in the slide (level-0 px at ``slide_mpp`` µm/px)."""
    if mpp <= 0 or slide_mpp <= 0:
        raise ConfigError(f"{where}: mpp and slide_mpp must be positive, got {mpp}, {slide_mpp}")
    patch_l0 = patch_px * mpp / slide_mpp
    if slide_width < patch_l0 - 1e-6 or slide_height < patch_l0 - 1e-6:
        raise SlideTooSmallError(
            f"{where}: slide {slide_width}x{slide_height} px at {slide_mpp} µm/px "
            f"is smaller than one {patch_px} px patch at {mpp} µm/px ({patch_l0:.0f} level-0 px)"
        )


def make_tile_grid(
    slide_width: int,
    slide_height: int,
    slide_mpp: float,
    tissue: BaseGeometry | None,
    mpp: float,
    patch_px: int,
    overlap_px: int = 0,
    min_tissue: float = 0.5,
    slide_id: str = "",
    slide_path: str = "",
) -> TileGrid:
    """Regular grid of full tiles at ``mpp`` µm/px keeping those with tissue fraction ≥
    ``min_tissue``. ``tissue`` (level-0 px) None means the whole slide is tissue."""
    if patch_px <= 0 or not 0 <= overlap_px < patch_px:
        raise ConfigError(
            f"tile: need patch_px > 0 and 0 ≤ overlap < patch_px, got {patch_px}, {overlap_px} px"
        )
    check_patch_fits(slide_width, slide_height, slide_mpp, mpp, patch_px, slide_path or slide_id)
    factor = mpp / slide_mpp
    patch_l0, stride_l0 = patch_px * factor, (patch_px - overlap_px) * factor
    grid = dict(
        mpp=float(mpp),
        patch_px=int(patch_px),
        overlap_px=int(overlap_px),
        slide_id=slide_id,
        slide_path=str(slide_path),
        slide_mpp=float(slide_mpp),
        slide_width=int(slide_width),
        slide_height=int(slide_height),
    )
    empty = np.zeros(0, dtype=np.int64)
    if tissue is not None and tissue.is_empty:
        warnings.warn(
            f"{slide_path or slide_id}: no tissue detected; the tile grid is empty",
            NoTissueWarning,
            stacklevel=2,
        )
        return TileGrid(empty, empty, np.zeros(0, np.float32), **grid)
    xs = _positions(slide_width, patch_l0, stride_l0)
    ys = _positions(slide_height, patch_l0, stride_l0)
    yy, xx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    if tissue is None:
        frac = np.ones(xx.shape, dtype=np.float32)
    else:
        frac = tissue_fractions(tissue, xx, yy, patch_l0, slide_width, slide_height)
    keep = frac >= min_tissue
    log.debug(
        "grid %dx%d = %d tiles, %d with tissue ≥ %.2f",
        len(xs),
        len(ys),
        xx.size,
        int(keep.sum()),
        min_tissue,
    )
    if not keep.any():
        warnings.warn(
            f"{slide_path or slide_id}: no tile has tissue fraction ≥ {min_tissue}; "
            "the tile grid is empty",
            NoTissueWarning,
            stacklevel=2,
        )
    return TileGrid(xx[keep], yy[keep], frac[keep], **grid)
