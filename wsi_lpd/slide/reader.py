"""Whole-slide images at a physical resolution: open any slide, read regions at a given µm/px.

OpenSlide reads SVS, NDPI, MRXS, SCN and generic tiled TIFF. TIFFs it rejects or reads only in
part (OME-TIFF, SubIFD pyramids, untiled TIFF) fall back to tifffile, read level by level through
its zarr store so that a region read decodes only the chunks it touches.

Conventions: ``location`` is the level-0 pixel of a region's top-left corner, ``size`` is (w, h) in
output pixels at the requested ``mpp`` (µm/px). Pixels outside the slide and transparent pixels are
white. Reads pick the nearest pyramid level not coarser than the target (1 % tolerance) and resample
once: an exact area average when downscaling, bilinear when upscaling.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from wsi_lpd.errors import (
    ConfigError,
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
    WsiLpdError,
)

log = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.01
"""A level is used for a target mpp when its µm/px is at most (1 + tolerance) × the target."""

MAX_CHUNK_LEVEL_PX = 4096
"""Largest side (level px) of one read while building a thumbnail: bounds memory to ~64 MB."""

_PLAUSIBLE_MPP = (0.01, 100.0)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _Reader(Protocol):
    """A backend: reads a rectangle of one pyramid level, in that level's pixels."""

    level_dimensions: tuple[tuple[int, int], ...]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of level pixels [x, x+w) × [y, y+h); may lie partly outside."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Meta:
    backend: str
    vendor: str | None
    objective_power: float | None
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    bounds: tuple[int, int, int, int]
    associated_images: tuple[str, ...] = ()


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (non-premultiplied) uint8 → RGB uint8 over a white background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _area_taps(start: float, scale: float, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights (n_out, taps) of an exact area average along one axis: output
    px i covers input [start + i·scale, start + (i+1)·scale), weights are overlaps / scale."""
    lo = start + np.arange(n_out) * scale
    hi = lo + scale
    taps = math.ceil(scale) + 1
    k = np.floor(lo).astype(np.int64)[:, None] + np.arange(taps)
    weight = np.clip(np.minimum(hi[:, None], k + 1) - np.maximum(lo[:, None], k), 0, None)
    return np.clip(k, 0, n_in - 1), (weight / scale).astype(np.float32)


def _area_resample(
    block: np.ndarray, x0: float, y0: float, scale: float, w: int, h: int
) -> np.ndarray:
    """(h, w, 3) uint8 area average of ``block`` from sub-pixel origin (x0, y0), ``scale`` ≥ 1
    input px per output px: exact for any offset and scale (an INTER_AREA-style filter)."""
    ky, wy = _area_taps(y0, scale, h, block.shape[0])
    kx, wx = _area_taps(x0, scale, w, block.shape[1])

    def along_rows(image: np.ndarray, k: np.ndarray, weight: np.ndarray) -> np.ndarray:
        acc = np.zeros((k.shape[0], *image.shape[1:]), dtype=np.float32)
        for t in range(k.shape[1]):
            acc += weight[:, t, None, None] * image[k[:, t]]  # row gathers are contiguous
        return acc

    rows = along_rows(block, ky, wy)  # (h, w_in, c)
    cols = along_rows(np.ascontiguousarray(rows.transpose(1, 0, 2)), kx, wx)  # (w, h, c)
    cols += 0.5  # weights sum to 1, so values stay in [0, 255]: round by truncation
    return np.ascontiguousarray(cols.transpose(1, 0, 2)).astype(np.uint8)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    return mpp if _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1] else None


def _mpp_from_resolution(resolution: float | None, unit: str | int | None) -> float | None:
    """µm/px from a TIFF XResolution (px per unit) and ResolutionUnit (name or TIFF code)."""
    if not resolution or resolution <= 0:
        return None
    name = str(unit).lower() if unit is not None else ""
    if name in ("3", "centimeter", "resunit.centimeter"):
        return _plausible(1e4 / resolution)
    if name in ("2", "inch", "resunit.inch"):
        return _plausible(25400.0 / resolution)
    if name in ("4", "millimeter", "resunit.millimeter"):
        return _plausible(1e3 / resolution)
    if name in ("5", "micrometer", "resunit.micrometer"):
        return _plausible(1.0 / resolution)
    return None


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------------------------------
# OpenSlide backend


class _OpenSlideReader:
    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._osr = handle
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        loc0 = (round(x * ds), round(y * ds))
        try:
            rgba = np.asarray(self._osr.read_region(loc0, level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"{self.path}: cannot read level {level} region ({exc})") from exc
        return _composite_on_white(rgba)

    def close(self) -> None:
        self._osr.close()


def _openslide_meta(path: Path, osr: Any, reader: _OpenSlideReader) -> dict[str, Any]:
    props: Mapping[str, str] = osr.properties
    mpp_x = _plausible(_float(props.get("openslide.mpp-x")))
    mpp_y = _plausible(_float(props.get("openslide.mpp-y")))
    if mpp_x is None:
        mpp_x = _mpp_from_resolution(
            _float(props.get("tiff.XResolution")), props.get("tiff.ResolutionUnit")
        )
        mpp_y = _mpp_from_resolution(
            _float(props.get("tiff.YResolution")), props.get("tiff.ResolutionUnit")
        )
    w, h = reader.level_dimensions[0]
    bounds = (
        int(props.get("openslide.bounds-x", 0)),
        int(props.get("openslide.bounds-y", 0)),
        int(props.get("openslide.bounds-width", w)),
        int(props.get("openslide.bounds-height", h)),
    )
    return {
        "vendor": props.get("openslide.vendor"),
        "objective_power": _float(props.get("openslide.objective-power")),
        "mpp_x": mpp_x,
        "mpp_y": mpp_y,
        "bounds": bounds,
        "associated_images": tuple(osr.associated_images.keys()),
    }


# --------------------------------------------------------------------------------------------------
# tifffile backend


class _TiffReader:
    """Reads one TIFF series level by level through tifffile's zarr store."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            self._levels = []
            for i, level in enumerate(series.levels):
                arr = zarr.open(self._tif.aszarr(series=0, level=i), mode="r")
                self._levels.append((arr, level.axes))
        except tifffile.TiffFileError as exc:
            raise UnsupportedFormatError(f"{path}: not a readable slide ({exc})") from exc
        except (OSError, ValueError, KeyError, IndexError, RuntimeError, struct.error) as exc:
            raise SlideReadError(f"{path}: cannot parse TIFF structure ({exc})") from exc
        self.series = series
        dims = []
        for arr, axes in self._levels:
            if "Y" not in axes or "X" not in axes:
                raise UnsupportedFormatError(f"{path}: TIFF series has no Y/X axes ({axes})")
            dims.append((int(arr.shape[axes.index("X")]), int(arr.shape[axes.index("Y")])))
        self.level_dimensions = tuple(dims)
        w0, h0 = dims[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in dims)

    def _to_rgb(self, block: np.ndarray, axes: str) -> np.ndarray:
        """Reorder a block with TIFF axes to (y, x, channel) RGB uint8."""
        index: list[Any] = []
        kept = []
        for ax, n in zip(axes, block.shape, strict=True):
            if ax in "YX" or (ax in "SC" and n in (3, 4)):
                index.append(slice(None))
                kept.append(ax)
            else:
                index.append(0)  # a singleton-like axis (Z, T, single channel …): first plane
        block = block[tuple(index)]
        order = [kept.index("Y"), kept.index("X")] + [
            i for i, a in enumerate(kept) if a not in "YX"
        ]
        block = np.transpose(block, order)
        if block.ndim == 2:
            block = np.repeat(block[..., None], 3, axis=2)
        if block.dtype != np.uint8:
            if np.issubdtype(block.dtype, np.integer):
                shift = 8 * (block.dtype.itemsize - 1)
                block = (block >> shift).astype(np.uint8)
            else:
                block = np.clip(block * 255.0, 0, 255).astype(np.uint8)
        if block.shape[2] == 4:
            return _composite_on_white(block)
        return np.ascontiguousarray(block[..., :3])

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr, axes = self._levels[level]
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        index = tuple(
            slice(y0, y1) if ax == "Y" else slice(x0, x1) if ax == "X" else slice(None)
            for ax in axes
        )
        try:
            block = np.asarray(arr[index])
        except WsiLpdError:
            raise
        except Exception as exc:  # codec, truncated file, I/O: any failure of the backend
            raise SlideReadError(f"{self.path}: cannot read level {level} region ({exc})") from exc
        out[y0 - y : y1 - y, x0 - x : x1 - x] = self._to_rgb(block, axes)
        return out

    def close(self) -> None:
        self._tif.close()


def _ome_meta(tif: Any) -> dict[str, Any]:
    """Pixel size and objective power from OME-XML (PhysicalSizeX + unit)."""
    import xml.etree.ElementTree as ET

    out: dict[str, Any] = {}
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError):
        return out
    factors = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and "mpp_x" not in out:
            for axis in ("X", "Y"):
                value = _float(el.get(f"PhysicalSize{axis}"))
                unit = el.get(f"PhysicalSize{axis}Unit", "µm")
                if value is not None and unit in factors:
                    out[f"mpp_{axis.lower()}"] = _plausible(value * factors[unit])
        elif tag == "Objective" and "objective_power" not in out:
            out["objective_power"] = _float(el.get("NominalMagnification"))
    return out


def _svs_description(description: str) -> dict[str, str]:
    """Key/value pairs of an Aperio ImageDescription (``Aperio …|AppMag = 20|MPP = 0.499``).

    Parsed here: tifffile's parser is not public in every version (and refuses odd headers)."""
    out: dict[str, str] = {}
    for item in description.replace("\r", "\n").replace("\n", "|").split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _tifffile_meta(reader: _TiffReader) -> dict[str, Any]:
    tif = reader._tif
    page = tif.pages.first
    meta: dict[str, Any] = {"vendor": "generic-tiff", "objective_power": None}
    if tif.is_ome:
        meta["vendor"] = "ome-tiff"
        meta.update(_ome_meta(tif))
    elif tif.is_svs:
        meta["vendor"] = "aperio"
        svs = _svs_description(page.description)
        meta["mpp_x"] = meta["mpp_y"] = _plausible(_float(svs.get("MPP")))
        meta["objective_power"] = _float(svs.get("AppMag"))
    if meta.get("mpp_x") is None:
        tags = page.tags
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
        for axis in ("X", "Y"):
            tag = tags.get(f"{axis}Resolution")
            if tag is not None:
                num, den = tag.value
                res = num / den if den else None
                meta[f"mpp_{axis.lower()}"] = _mpp_from_resolution(res, int(unit) if unit else None)
    w, h = reader.level_dimensions[0]
    meta["bounds"] = (0, 0, w, h)
    meta["associated_images"] = tuple(str(s.name) for s in tif.series[1:] if s.name)
    return meta


MPP_AT_10X = 1.0
"""µm/px of a 10× scan: nominal mpp ≈ 10 / objective power (40× → 0.25, 20× → 0.5)."""

MPP_OBJECTIVE_FACTOR = 1.5
"""mpp and objective power disagree when mpp is off the nominal by more than this factor
(scanners range 0.17-0.27 µm/px at 40×; 40× at 1.0 µm/px is a file error)."""


def _warn_mpp_vs_objective(path: Path, mpp: float, objective_power: float | None) -> None:
    """Log a WARNING when the file's mpp does not fit its objective power (one of them is wrong)."""
    if not objective_power or objective_power <= 0:
        return
    nominal = MPP_AT_10X * 10.0 / objective_power
    if not nominal / MPP_OBJECTIVE_FACTOR <= mpp <= nominal * MPP_OBJECTIVE_FACTOR:
        log.warning(
            "%s: pixel size %.4g µm/px disagrees with objective power %gx (nominal %.3g µm/px); "
            "using %.4g µm/px (override with --slide-mpp if it is wrong)",
            path,
            mpp,
            objective_power,
            nominal,
            mpp,
        )


# --------------------------------------------------------------------------------------------------
# opening


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def _tifffile_is_better(path: Path, openslide_levels: int) -> bool:
    """True when tifffile sees an OME-TIFF or more pyramid levels than OpenSlide (SubIFDs)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome) or len(tif.series[0].levels) > openslide_levels
    except Exception:  # tifffile cannot parse it: keep OpenSlide
        return False


def _check_tiff_complete(path: Path) -> None:
    """``SlideReadError`` when a TIFF's image data runs past the end of the file (truncated copy):
    compares the file size with the last tile/strip of every page (metadata only, no decoding)."""
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            end = max(
                (
                    o + n
                    for p in pages
                    for o, n in zip(p.dataoffsets, p.databytecounts, strict=False)
                ),
                default=0,
            )
    except Exception:  # not parseable by tifffile: the backends below say what is wrong
        return
    if end > size:
        raise SlideReadError(
            f"{path}: truncated TIFF (the file has {size} bytes, its image data runs to {end})"
        )


def _open_reader(path: Path) -> tuple[_Reader, dict[str, Any], str]:
    """Open ``path`` with OpenSlide, or tifffile where that reads the file better."""
    import openslide

    if _is_tiff(path):
        _check_tiff_complete(path)

    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        osr = None
    except openslide.OpenSlideError as exc:
        if not _is_tiff(path):
            raise SlideReadError(f"{path}: OpenSlide cannot read this slide ({exc})") from exc
        osr = None
    if osr is not None:
        os_reader = _OpenSlideReader(path, osr)
        vendor = osr.properties.get("openslide.vendor")
        if vendor != "generic-tiff" or not _tifffile_is_better(
            path, len(os_reader.level_dimensions)
        ):
            return os_reader, _openslide_meta(path, osr, os_reader), "openslide"
        osr.close()
    if not _is_tiff(path):
        raise UnsupportedFormatError(f"{path}: not a slide format OpenSlide or tifffile can read")
    reader = _TiffReader(path)
    try:
        return reader, _tifffile_meta(reader), "tifffile"
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        reader.close()
        raise SlideReadError(f"{path}: cannot read the TIFF metadata ({exc})") from exc


class Slide:
    """A whole-slide image read at physical resolutions. Picklable; a context manager."""

    def __init__(self, path: str | os.PathLike, mpp: float | None = None) -> None:
        self.path = Path(path)
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise MissingMppError(f"{self.path}: mpp override must be a positive number, got {mpp}")
        self._mpp_override = mpp
        self._reader: _Reader | None = None
        self._pid = -1
        self._meta: _Meta | None = None
        self._ensure_open()

    # -- lifecycle -----------------------------------------------------------------------------

    def _ensure_open(self) -> _Reader:
        if self._reader is not None and self._pid == os.getpid():
            return self._reader
        if not self.path.exists():
            raise SlideNotFoundError(f"{self.path}: slide not found")
        if not self.path.is_file():
            raise UnsupportedFormatError(f"{self.path}: not a file")
        reader, raw, backend = _open_reader(self.path)
        self._reader, self._pid = reader, os.getpid()
        if self._meta is None:
            self._meta = self._build_meta(reader, raw, backend)
        return reader

    def _build_meta(self, reader: _Reader, raw: dict[str, Any], backend: str) -> _Meta:
        mpp_x, mpp_y = raw.get("mpp_x"), raw.get("mpp_y")
        if self._mpp_override is not None:
            mpp = float(self._mpp_override)
        elif mpp_x is not None:
            mpp = float(mpp_x)
            if mpp_y is not None and abs(mpp_y - mpp_x) > 0.01 * mpp_x:
                log.warning(
                    "%s: anisotropic pixels (%.4f x %.4f µm); using x", self.path, mpp_x, mpp_y
                )
        else:
            raise MissingMppError(
                f"{self.path}: no pixel size (mpp) in the file; pass it explicitly (--slide-mpp)"
            )
        if self._mpp_override is None:
            _warn_mpp_vs_objective(self.path, mpp, raw.get("objective_power"))
        dims = reader.level_dimensions
        w0, h0 = dims[0]
        downsamples = tuple(
            getattr(reader, "level_downsamples", None) or ((w0 / w + h0 / h) / 2 for w, h in dims)
        )
        log.debug(
            "%s: %s backend, %dx%d px, %.4f µm/px, %d levels",
            self.path,
            backend,
            w0,
            h0,
            mpp,
            len(dims),
        )
        return _Meta(
            backend,
            raw.get("vendor"),
            raw.get("objective_power"),
            mpp,
            dims,
            downsamples,
            tuple(int(v) for v in raw["bounds"]),
            tuple(raw.get("associated_images", ())),
        )  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the file handle (reopened on the next read)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mpp_override": self._mpp_override}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._mpp_override = state["mpp_override"]
        self._reader, self._pid, self._meta = None, -1, None

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, mpp={self._mpp_override!r})"

    # -- metadata ------------------------------------------------------------------------------

    @property
    def _m(self) -> _Meta:
        if self._meta is None:
            self._ensure_open()
        assert self._meta is not None
        return self._meta

    @property
    def backend(self) -> str:
        """``"openslide"`` or ``"tifffile"``."""
        return self._m.backend

    @property
    def vendor(self) -> str | None:
        return self._m.vendor

    @property
    def objective_power(self) -> float | None:
        return self._m.objective_power

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (the override when one was given)."""
        return self._m.mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) px."""
        return self._m.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._m.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._m.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._m.level_downsamples

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """OpenSlide bounds (x, y, w, h) in level-0 px; the whole slide when the file has none."""
        return self._m.bounds

    @property
    def associated_images(self) -> tuple[str, ...]:
        """Names of the associated images (label, macro, thumbnail …) the file holds."""
        return self._m.associated_images

    def size_at_mpp(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide in px at ``mpp`` µm/px (rounded, at least 1)."""
        w, h = self.dimensions
        f = self.mpp / mpp
        return max(1, round(w * f)), max(1, round(h * f))

    def best_level_for_mpp(self, mpp: float) -> int:
        """Index of the coarsest level whose µm/px is ≤ ``mpp`` (1 % tolerance); 0 if none."""
        factor = mpp / self.mpp * (1 + LEVEL_TOLERANCE)
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= factor and ds > self.level_downsamples[best]:
                best = i
        return best

    # -- pixels --------------------------------------------------------------------------------

    def read_region(
        self, location: tuple[int, int], size: tuple[int, int], mpp: float
    ) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the region whose top-left is ``location`` (level-0 px) and whose
        size is ``size`` = (w, h) output px at ``mpp`` µm/px."""
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ConfigError(f"{self.path}: region size must be positive, got {size}")
        if mpp <= 0:
            raise ConfigError(f"{self.path}: mpp must be positive, got {mpp}")
        return self._read(float(location[0]), float(location[1]), w, h, mpp)

    def _read(self, x0: float, y0: float, w: int, h: int, mpp: float) -> np.ndarray:
        reader = self._ensure_open()
        level = self.best_level_for_mpp(mpp)
        ds = self.level_downsamples[level]
        scale = mpp / self.mpp / ds  # level px per output px
        lx0, ly0 = x0 / ds, y0 / ds
        lx1, ly1 = lx0 + w * scale, ly0 + h * scale
        if abs(scale - 1.0) < 1e-9 and lx0.is_integer() and ly0.is_integer():
            return reader.read(level, int(lx0), int(ly0), w, h)
        margin = 2 if scale < 1 else 0  # upsampling filters reach past the box
        rx0, ry0 = math.floor(lx0) - margin, math.floor(ly0) - margin
        rx1, ry1 = math.ceil(lx1) + margin, math.ceil(ly1) + margin
        block = reader.read(level, rx0, ry0, rx1 - rx0, ry1 - ry0)
        if scale >= 1:
            bx, by = lx0 - rx0, ly0 - ry0
            if scale.is_integer() and bx.is_integer() and by.is_integer():  # PIL's BOX is exact
                box = (bx, by, bx + w * scale, by + h * scale)
                return np.asarray(
                    Image.fromarray(block).resize((w, h), Image.Resampling.BOX, box=box)
                )
            return _area_resample(block, bx, by, scale, w, h)
        box = (lx0 - rx0, ly0 - ry0, lx1 - rx0, ly1 - ry0)
        return np.asarray(Image.fromarray(block).resize((w, h), Image.Resampling.BILINEAR, box=box))

    def thumbnail(self, mpp: float, progress: bool = False) -> np.ndarray:
        """The whole slide at ``mpp`` µm/px, (h, w, 3) uint8, read in chunks of bounded size."""
        out_w, out_h = self.size_at_mpp(mpp)
        level = self.best_level_for_mpp(mpp)
        scale = mpp / self.mpp / self.level_downsamples[level]
        chunk = max(16, min(MAX_CHUNK_LEVEL_PX, int(MAX_CHUNK_LEVEL_PX / scale)))
        factor = mpp / self.mpp  # level-0 px per output px
        if chunk >= max(out_w, out_h):  # one read: its array is the thumbnail (no copy)
            rgb = self._read(0.0, 0.0, out_w, out_h, mpp)
            return rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        cells = [(x, y) for y in range(0, out_h, chunk) for x in range(0, out_w, chunk)]
        from wsi_lpd.progress import progress as reporter

        for x, y in reporter(cells, desc="thumbnail", unit="chunk", disable=not progress):
            cw, ch = min(chunk, out_w - x), min(chunk, out_h - y)
            out[y : y + ch, x : x + cw] = self._read(x * factor, y * factor, cw, ch, mpp)
        return out


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a slide; ``mpp`` (µm/px) overrides the pixel size stored in the file."""
    return Slide(path, mpp=mpp)


SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
"""A safe slide id: a file-name stem of letters, digits and ``._+-``, starting alphanumeric."""
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._+-]")
_LEADING = re.compile(r"^[^A-Za-z0-9]+")
_ONE_SUFFIX = (".ome.tiff", ".ome.tif", ".ome.zarr")


def default_slide_id(path: str | os.PathLike) -> str:
    """The file name without its extension: ``a.svs`` → a, ``b.ome.tiff`` → b, ``c.1.ndpi`` →
    c.1 (a leading or trailing dot is not an extension; an empty name gives ``slide``)."""
    name = os.path.basename(os.fspath(path))
    lower = name.lower()
    for suffix in _ONE_SUFFIX:
        if lower.endswith(suffix):
            return name[: -len(suffix)] or "slide"
    dot = name.rfind(".")
    if 0 < dot < len(name) - 1:
        name = name[:dot]
    return name or "slide"


def fix_slide_id(slide_id: str) -> str:
    """``slide_id`` made valid: characters other than letters, digits and ``._+-`` become ``_``,
    leading characters that are not a letter or digit are dropped, an empty result is ``slide``."""
    return _LEADING.sub("", _NOT_ID_CHAR.sub("_", slide_id)) or "slide"


def slide_id_from_name(path: str | os.PathLike) -> str:
    """The slide id of a file or QuPath image name: :func:`default_slide_id` made valid with
    :func:`fix_slide_id`. The one rule of ``wsi-lpd samples`` and both QuPath scripts
    (``qupath/*.groovy`` ``slideId``): ``(1) first.svs`` → ``1__first``, ``日本語.svs`` →
    ``slide``."""
    return fix_slide_id(default_slide_id(path))


def slide_id_problem(slide_id: str) -> str | None:
    """Which rule ``slide_id`` breaks (one phrase), or None when it is a valid id."""
    if not slide_id:
        return "is empty"
    if "/" in slide_id or "\\" in slide_id:
        return "contains a path separator"
    bad = sorted(set(_NOT_ID_CHAR.findall(slide_id)))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"{shown} not allowed (only letters, digits and . _ + -)"
    if not SLIDE_ID.fullmatch(slide_id):
        return "the first character must be a letter or digit"
    return None


def validate_slide_id(slide_id: str) -> str:
    """Return ``slide_id`` if it is valid, else raise ConfigError naming the broken rule and the
    fixed id."""
    problem = slide_id_problem(slide_id)
    if problem is not None:
        raise ConfigError(f"slide id {slide_id!r}: {problem}; use {fix_slide_id(slide_id)!r}")
    return slide_id


def slide_id_for(path: str | os.PathLike, slide_id: str | None = None) -> str:
    """The id a stage gives the slide at ``path``: ``slide_id`` validated, else the file name's
    :func:`default_slide_id`; a name that gives no valid id is refused with the ``--slide-id``
    to pass (:func:`slide_id_from_name`)."""
    if slide_id is not None:
        return validate_slide_id(slide_id)
    sid = default_slide_id(path)
    problem = slide_id_problem(sid)
    if problem is not None:
        raise ConfigError(
            f"{path}: the file name gives slide id {sid!r}: {problem}; "
            f"pass --slide-id {slide_id_from_name(path)}"
        )
    return sid
