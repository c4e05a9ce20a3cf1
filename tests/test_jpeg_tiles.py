"""JPEG tile bytes + JPEGTables → standalone JPEGs that decode to tifffile's own pixels."""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch

from wsi_lpd.slide.jpeg_tiles import (
    assemble_windows,
    decode_tiles,
    jpeg_level_for,
    open_jpeg_level,
    window_rect,
)
from wsi_lpd.slide.reader import open_slide
from wsi_lpd.synthetic.slides import _aperio_description, write_synthetic_slide

CPU = torch.device("cpu")


def _segments(stream: bytes) -> list[bytes]:
    """Marker segments of a JPEG up to SOS; the last item is SOS plus the entropy-coded rest."""
    out, i = [], 2
    while True:
        marker = stream[i : i + 2]
        (length,) = struct.unpack(">H", stream[i + 2 : i + 4])
        if marker == b"\xff\xda":
            out.append(stream[i:])
            return out
        out.append(stream[i : i + 2 + length])
        i += 2 + length


def _numbered_components(segment: bytes) -> bytes:
    """Component ids 1, 2, 3 instead of 'R', 'G', 'B' in SOF0/SOS: nothing says RGB."""
    seg = bytearray(segment)
    if seg[:2] == b"\xff\xc0":
        for k in range(3):
            seg[10 + 3 * k] = k + 1
    elif seg[:2] == b"\xff\xda":
        for k in range(3):
            seg[5 + 2 * k] = k + 1
    return bytes(seg)


def _aperio_rgb_slide(path: Path, rgb: np.ndarray, tile: int = 128) -> None:
    """Tiles as Aperio writes them: RGB components (no colour transform), no APP markers, the
    quantisation/Huffman tables only in the shared JPEGTables tag."""
    h, w, _ = rgb.shape
    tables, tiles = b"", []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = rgb[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            full = imagecodecs.jpeg8_encode(
                block, level=90, colorspace="rgb", outcolorspace="rgb", subsampling="444"
            )
            segs = _segments(bytes(full))
            table_segs = [s for s in segs if s[:2] in (b"\xff\xdb", b"\xff\xc4")]
            tables = b"\xff\xd8" + b"".join(table_segs) + b"\xff\xd9"
            body = [s for s in segs if s[:2] not in (b"\xff\xdb", b"\xff\xc4")]
            body = [
                _numbered_components(s) for s in body if not b"\xff\xe0" <= s[:2] <= b"\xff\xef"
            ]
            tiles.append(b"\xff\xd8" + b"".join(body))
    tifffile.imwrite(
        path,
        iter(tiles),
        shape=rgb.shape,
        dtype="uint8",
        tile=(tile, tile),
        compression="jpeg",
        photometric="rgb",
        compressionargs={"outcolorspace": "rgb"},
        jpegtables=tables,
        description=_aperio_description(w, h, tile, 90, 0.5),
    )


def _max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.permute(1, 2, 0).numpy().astype(int) - b.astype(int)).max())


def test_synthetic_slide_tiles_decode_like_tifffile(tmp_path: Path) -> None:
    write_synthetic_slide(
        tmp_path / "s.svs", width_px=640, height_px=512, tile_px=256, texture=False
    )
    slide = open_slide(tmp_path / "s.svs")
    level = jpeg_level_for(slide, slide.mpp)
    assert level is not None and (level.width, level.height) == (640, 512)
    with tifffile.TiffFile(tmp_path / "s.svs") as tif:
        ref = tif.series[0].levels[0].asarray()
    (tile,) = decode_tiles([level.tile_bytes(1, 2)], CPU)
    assert tuple(tile.shape) == (3, 256, 256)
    assert _max_diff(tile[:, :, :128], ref[256:512, 512:640]) <= 2  # edge tile: padded
    rect = window_rect(level, 100.0, 200.0, 300, 1.0)
    decoded = {t: decode_tiles([level.tile_bytes(*t)], CPU)[0] for t in level.tiles_for(*rect)}
    window = assemble_windows(level, [rect], decoded, 300, CPU)[0]
    assert _max_diff(window[:, :312], ref[200:500, 100:400][:312]) <= 2


def test_aperio_rgb_tiles_with_jpegtables(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal([200, 120, 180], 30, (300, 260, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "aperio.svs"
    _aperio_rgb_slide(path, rgb)
    level = open_jpeg_level(path, 0)
    assert level is not None and level.rgb and level.tables is not None
    with tifffile.TiffFile(path) as tif:
        ref = tif.series[0].levels[0].asarray()  # tifffile's own decode (tables + RGB)
    assert np.abs(ref.astype(int) - rgb.astype(int)).mean() < 8  # JPEG q90 of noise
    tiles = {
        t: decode_tiles([level.tile_bytes(*t)], CPU)[0] for t in level.tiles_for(0, 0, 260, 300)
    }
    windows = assemble_windows(level, [(0, 0, 260, 260)], tiles, 260, CPU)
    # same decoder family, same coefficients: equal within rounding of the IDCT
    assert _max_diff(windows[0], ref[:260]) <= 2
    level.rgb = False  # without the Adobe marker a decoder would apply YCbCr → RGB
    wrong = decode_tiles([level.tile_bytes(0, 0)], CPU)[0]
    assert _max_diff(wrong, ref[:128, :128]) > 40


def test_not_jpeg_gives_none(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "lzw.tif", np.zeros((256, 256, 3), np.uint8), tile=(128, 128), compression="lzw"
    )
    assert open_jpeg_level(tmp_path / "lzw.tif", 0) is None


def test_resampled_window_matches_slide_read(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    write_synthetic_slide(
        tmp_path / "s.svs", width_px=512, height_px=512, tile_px=256, texture=False
    )
    slide = open_slide(tmp_path / "s.svs")
    level = jpeg_level_for(slide, 1.0)  # level 0 at 0.5 µm/px, read at 1 µm/px
    assert level is not None and level.level == 0
    rect = window_rect(level, 64.0, 32.0, 128, 2.0)
    assert rect == (64, 32, 256, 256)
    tiles = {t: decode_tiles([level.tile_bytes(*t)], CPU)[0] for t in level.tiles_for(*rect)}
    window = assemble_windows(level, [rect], tiles, 128, CPU)[0]
    ref = slide.read_region((64, 32), (128, 128), 1.0)
    assert np.abs(window.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).mean() < 3
