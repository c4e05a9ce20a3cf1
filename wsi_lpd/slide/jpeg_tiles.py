"""JPEG tiles of tiled TIFF/SVS levels as standalone JPEG files, decoded in batches on a device.

CPU JPEG decoding is the wall of GPU whole-slide inference. For a level stored as JPEG tiles
(TIFF compression 7), :class:`JpegTileLevel` reads each tile's compressed bytes with tifffile
(``TileOffsets``/``TileByteCounts``) and turns them into a standalone JPEG: the shared
``JPEGTables`` (quantisation and Huffman tables) spliced in after the tile's SOI marker. The tiles
of a batch of windows are decoded together with ``torchvision.io.decode_jpeg`` on the compute
device (nvJPEG on CUDA, libjpeg-turbo on the CPU) and pasted into the windows there.

Colour: TIFF's ``Photometric`` says what the JPEG components are. ``YCbCr`` (6) is what a JPEG
decoder assumes for three components. Aperio (and tifffile) write ``RGB`` (2): the components are R,
G, B without the colour transform, so an Adobe APP14 marker with ``transform = 0`` is added, which
tells libjpeg-compatible decoders to skip the YCbCr → RGB conversion.

Levels with another codec (LZW, JPEG 2000, uncompressed, …) or without tiles are not handled here
(:func:`jpeg_level_for` returns None and the caller uses ``Slide.read_region``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
# APP14 "Adobe", version 100, flags 0/0, transform 0 (components are RGB, not YCbCr)
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
MPP_MATCH = 0.01  # a level within 1 % of the model's µm/px is read without resampling


def standalone_jpeg(tile: bytes, tables: bytes | None, rgb: bool) -> bytes:
    """A decodable JPEG from an abbreviated TIFF tile stream and the level's ``JPEGTables``."""
    if not tile.startswith(SOI):
        raise ValueError("JPEG tile does not start with SOI")
    head = SOI + (ADOBE_RGB if rgb else b"")
    if tables:
        if not (tables.startswith(SOI) and tables.endswith(EOI)):
            raise ValueError("JPEGTables is not an SOI … EOI stream")
        head += tables[2:-2]
    return head + tile[2:]


@dataclass
class JpegTileLevel:
    """The JPEG tiles of one pyramid level of a tiled TIFF/SVS (picklable: reopens on demand).

    ``downsample`` is level-0 px per level px; tiles are ``tile_h × tile_w`` px.
    """

    path: Path
    level: int
    width: int
    height: int
    tile_w: int
    tile_h: int
    downsample: float
    rgb: bool
    tables: bytes | None
    offsets: np.ndarray
    counts: np.ndarray

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_fh", None)
        return state

    @property
    def tiles_across(self) -> int:
        return math.ceil(self.width / self.tile_w)

    def tile_bytes(self, ty: int, tx: int) -> bytes:
        """Standalone JPEG of tile row ``ty``, column ``tx``."""
        fh = self.__dict__.get("_fh")
        if fh is None:
            fh = self.__dict__["_fh"] = open(self.path, "rb")  # noqa: SIM115 (kept for reuse)
        i = ty * self.tiles_across + tx
        fh.seek(int(self.offsets[i]))
        return standalone_jpeg(fh.read(int(self.counts[i])), self.tables, self.rgb)

    def tiles_for(self, x: int, y: int, w: int, h: int) -> list[tuple[int, int]]:
        """``(ty, tx)`` of the tiles a level-px rectangle touches (inside the level)."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x0 >= x1 or y0 >= y1:
            return []
        return [
            (ty, tx)
            for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1)
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1)
        ]


def open_jpeg_level(path: str | os.PathLike, level: int) -> JpegTileLevel | None:
    """The JPEG tiles of pyramid ``level`` (series 0) of a TIFF, or None when not JPEG-tiled."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            if level >= len(levels):
                return None
            page = levels[level].pages[0]
            if not page.is_tiled or page.compression != JPEG or page.samplesperpixel != 3:
                return None
            if page.photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
                return None
            tag = page.tags.get(347)  # JPEGTables
            return JpegTileLevel(
                path=path,
                level=level,
                width=int(page.imagewidth),
                height=int(page.imagelength),
                tile_w=int(page.tilewidth),
                tile_h=int(page.tilelength),
                downsample=float(levels[0].shape[1]) / float(levels[level].shape[1]),
                rgb=page.photometric == PHOTOMETRIC_RGB,
                tables=bytes(tag.value) if tag is not None else None,
                offsets=np.asarray(page.dataoffsets, dtype=np.int64),
                counts=np.asarray(page.databytecounts, dtype=np.int64),
            )
    except (OSError, tifffile.TiffFileError, AttributeError, IndexError, KeyError) as exc:
        log.debug("%s: no JPEG tile path (%s)", path, exc)
        return None


def jpeg_level_for(slide: Any, mpp: float) -> JpegTileLevel | None:
    """The JPEG-tiled level ``slide.read_region`` would read at ``mpp`` µm/px, or None."""
    path = Path(getattr(slide, "path", ""))
    if path.suffix.lower() not in (".svs", ".tif", ".tiff") or not path.is_file():
        return None
    level = int(slide.best_level_for_mpp(mpp))
    tiles = open_jpeg_level(path, level)
    if tiles is None or (tiles.width, tiles.height) != tuple(slide.level_dimensions[level]):
        return None
    return tiles


def window_rect(
    tiles: JpegTileLevel, x0: float, y0: float, patch_px: int, scale: float
) -> tuple[int, int, int, int]:
    """Level-px ``(x, y, w, h)`` read for a window at level-0 ``(x0, y0)``, ``scale`` level px per
    output px (1 → the window itself)."""
    lx, ly = x0 / tiles.downsample, y0 / tiles.downsample
    if abs(scale - 1.0) <= MPP_MATCH:
        return round(lx), round(ly), patch_px, patch_px
    x, y = math.floor(lx), math.floor(ly)
    return x, y, math.ceil(lx + patch_px * scale) - x, math.ceil(ly + patch_px * scale) - y


def decode_tiles(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """Decode standalone JPEGs to ``(3, h, w)`` uint8 tensors on ``device`` (one batched call)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    if not raw:
        return []
    if device.type == "cuda":
        return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
    return [decode_jpeg(r, mode=ImageReadMode.RGB) for r in raw]


def assemble_windows(
    tiles: JpegTileLevel,
    rects: list[tuple[int, int, int, int]],
    decoded: dict[tuple[int, int], torch.Tensor],
    patch_px: int,
    device: torch.device,
) -> torch.Tensor:
    """``(B, 3, patch_px, patch_px)`` uint8 windows pasted from decoded tiles (white outside the
    level), resized (area-like, antialiased bilinear) when a rectangle is not ``patch_px`` wide."""
    out = torch.empty((len(rects), 3, patch_px, patch_px), dtype=torch.uint8, device=device)
    for b, (x, y, w, h) in enumerate(rects):
        canvas = torch.full((3, h, w), 255, dtype=torch.uint8, device=device)
        for ty, tx in tiles.tiles_for(x, y, w, h):
            tile = decoded[(ty, tx)]
            tx0, ty0 = tx * tiles.tile_w, ty * tiles.tile_h
            ax, ay = max(x, tx0), max(y, ty0)
            bx = min(x + w, tx0 + tiles.tile_w, tiles.width)
            by = min(y + h, ty0 + tiles.tile_h, tiles.height)
            canvas[:, ay - y : by - y, ax - x : bx - x] = tile[
                :, ay - ty0 : by - ty0, ax - tx0 : bx - tx0
            ]
        if (h, w) != (patch_px, patch_px):
            resized = torch.nn.functional.interpolate(
                canvas[None].float(), size=(patch_px, patch_px), mode="bilinear", antialias=True
            )
            canvas = resized[0].round_().clamp_(0, 255).to(torch.uint8)
        out[b] = canvas
    return out
