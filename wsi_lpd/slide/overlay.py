"""Overlay PNG: slide thumbnail, class polygons filled semi-transparently and outlined, legend.

The ``write_*_into`` functions write at the path they are given (not atomic): the stages pass a
temporary path from :mod:`wsi_lpd.io`."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import WsiLpdError

log = logging.getLogger(__name__)


class ClassShapes(Protocol):
    """What the overlay draws of one class (:class:`wsi_lpd.export.vectorize.ClassPolygons` fits):
    its name, RGB colour, components and their union in level-0 px, total area in µm²."""

    name: str
    color: tuple[int, int, int]
    components: list[BaseGeometry]

    @property
    def geometry(self) -> BaseGeometry: ...

    @property
    def total_area_um2(self) -> float: ...


MAX_SIDE_PX = 2048
FILL_ALPHA = 0.35


def thumbnail_or_white(
    slide_path: str | os.PathLike | None,
    level0_size: tuple[int, int],
    slide_mpp: float,
    thumb_mpp: float,
) -> np.ndarray:
    """The slide at ``thumb_mpp`` µm/px, or a white canvas of that size when it cannot be read."""
    width = max(1, round(level0_size[0] * slide_mpp / thumb_mpp))
    height = max(1, round(level0_size[1] * slide_mpp / thumb_mpp))
    if slide_path:
        try:
            from wsi_lpd.slide.reader import open_slide

            with open_slide(slide_path, mpp=slide_mpp) as slide:
                image = slide.thumbnail(thumb_mpp)
            if image.shape[:2] != (height, width):
                canvas = np.full((height, width, 3), 255, dtype=np.uint8)
                h, w = min(height, image.shape[0]), min(width, image.shape[1])
                canvas[:h, :w] = image[:h, :w]
                image = canvas
            return image
        except (WsiLpdError, OSError, ImportError) as exc:
            log.warning(
                "%s: slide unavailable for the overlay, drawing on white (%s)", slide_path, exc
            )
    return np.full((height, width, 3), 255, dtype=np.uint8)


def _rings(geom: BaseGeometry, to_px: Any) -> list[list[list[tuple[float, float]]]]:
    """Per polygon (largest first): [shell, *holes] in thumbnail px."""
    parts = sorted(
        (p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty),
        key=lambda p: -p.area,
    )  # larger first, so islands inside another component's hole are drawn over it
    return [[to_px(p.exterior.coords), *(to_px(r.coords) for r in p.interiors)] for p in parts]


def _fill(layer: Any, polygons: list, color: tuple[int, int, int]) -> None:
    """Paste ``color`` semi-transparently inside the polygons (holes left open)."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", layer.size, 0)
    draw = ImageDraw.Draw(mask)
    for shell, *holes in polygons:
        draw.polygon(shell, fill=255)
        for hole in holes:
            draw.polygon(hole, fill=0)
    layer.paste((*color, round(255 * FILL_ALPHA)), mask=mask)


def _font(size_px: int) -> tuple[Any, str]:
    """A TrueType font with '²' (DejaVu Sans, shipped with matplotlib) and the area unit text."""
    from PIL import ImageFont

    candidates = ["DejaVuSans.ttf"]
    try:
        import matplotlib

        candidates.append(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"))
    except ImportError:
        pass
    for name in candidates:
        try:
            return ImageFont.truetype(name, size_px), "mm²"
        except OSError:
            continue
    return ImageFont.load_default(), "mm^2"


def write_overlay_into(
    path: str | os.PathLike,
    results: Sequence[ClassShapes],
    *,
    level0_size: tuple[int, int],
    slide_mpp: float,
    slide_path: str | os.PathLike | None = None,
    offset_px: tuple[float, float] = (0.0, 0.0),
    max_side_px: int = MAX_SIDE_PX,
    title: str = "",
) -> Path:
    """Draw the polygons (level-0 px, minus ``offset_px``) over the slide thumbnail into a PNG.

    The thumbnail's longer side is at most ``max_side_px``; polygons are simplified to half a
    thumbnail pixel for drawing. A legend panel on the right lists class → colour and area in mm².
    Memory: a few thumbnail-sized images.
    """
    from PIL import Image, ImageDraw

    factor = max(1.0, max(level0_size) / max_side_px)  # level-0 px per thumbnail px
    image = thumbnail_or_white(slide_path, level0_size, slide_mpp, factor * slide_mpp)
    height, width = image.shape[:2]
    shift = np.asarray(offset_px, dtype=np.float64)

    def to_px(coords: Any) -> list[tuple[float, float]]:
        xy = (np.asarray(coords, dtype=np.float64) + shift) / factor
        return [tuple(p) for p in xy.tolist()]

    base = Image.fromarray(image).convert("RGBA")
    del image
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    drawn = [
        (_rings(shapely.simplify(r.geometry, factor / 2, preserve_topology=True), to_px), r.color)
        for r in results
        if r.components
    ]
    for polygons, color in drawn:
        _fill(layer, polygons, color)
    lines = ImageDraw.Draw(layer)
    for polygons, color in drawn:
        for ring in (ring for rings in polygons for ring in rings):
            lines.line(ring, fill=(*color, 255), width=2)
    base.alpha_composite(layer)
    del layer, drawn

    font_px = max(12, min(28, height // 40))
    font, unit = _font(font_px)
    rows = [(title, None)] if title else []
    rows += [(f"{r.name}  {r.total_area_um2 / 1e6:.3f} {unit}", r.color) for r in results]
    probe = ImageDraw.Draw(base)
    text_w = max((probe.textlength(t, font=font) for t, _ in rows), default=0)
    panel_w = int(text_w + 3 * font_px)
    canvas = Image.new(
        "RGB", (width + panel_w, max(height, (len(rows) + 1) * 2 * font_px)), "white"
    )
    canvas.paste(base, (0, 0), mask=None)
    draw = ImageDraw.Draw(canvas)
    for i, (text, color) in enumerate(rows):
        y = font_px // 2 + i * 2 * font_px
        x = width + font_px // 2
        if color is not None:
            draw.rectangle((x, y, x + font_px, y + font_px), fill=color, outline=(0, 0, 0))
        draw.text((x + int(1.5 * font_px), y), text, fill=(0, 0, 0), font=font)
    out = Path(path)
    canvas.save(out, format="PNG")
    return out


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (h, w, 3) uint8 shrunk by an integer ``factor`` (mean of factor² blocks, rounded;
    edge rows/columns that do not fill a block are dropped). PIL's ``reduce``: one C pass."""
    from PIL import Image

    if factor <= 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[:h, :w])).reduce(factor))


def write_tile_qc_into(
    path: str | os.PathLike,
    slide: Any,
    tissue: BaseGeometry,
    grid: Any,
    long_side_px: int,
    thumbnail: np.ndarray | None = None,
    artefacts: Mapping[str, tuple[BaseGeometry, tuple[int, int, int], float]] | None = None,
) -> Path:
    """The tile stage's QC PNG, long side in [½, 1] × ``long_side_px``: thumbnail of ``slide``
    (a :class:`~wsi_lpd.slide.reader.Slide`), tissue contour (green; level-0 px), tile outlines of
    ``grid`` (a :class:`~wsi_lpd.slide.tiling.TileGrid`, thin blue) and a title line.
    ``artefacts``: per class name (geometry in level-0 px, colour, area mm²), filled
    semi-transparently and outlined in the colour, with a legend line under the title.

    ``thumbnail``: an RGB image of the whole slide already read (e.g. the tissue-detection
    thumbnail), shrunk by block means when at least ``long_side_px`` long; else a level is read."""
    from PIL import Image, ImageDraw, ImageFont

    w0, h0 = slide.dimensions
    if thumbnail is not None and max(thumbnail.shape[:2]) >= long_side_px:
        scale = thumbnail.shape[1] / w0  # thumbnail px per level-0 px
        factor = math.ceil(max(thumbnail.shape[:2]) / long_side_px)
        thumb = Image.fromarray(block_mean(thumbnail, factor))
        f = scale / factor
    else:
        qc_mpp = slide.mpp * max(w0, h0) / long_side_px
        # a pyramid level between ½ and 1 × long_side_px is read as is (no full-resolution read)
        level_mpps = [slide.mpp * ds for ds in slide.level_downsamples]
        qc_mpp = min([m for m in level_mpps if qc_mpp <= m <= 2 * qc_mpp], default=qc_mpp)
        thumb = Image.fromarray(slide.thumbnail(qc_mpp))
        f = thumb.width / w0  # thumbnail px per level-0 px
    layer = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    side = grid.patch_level0_px * f
    for x, y in zip((grid.x * f).tolist(), (grid.y * f).tolist(), strict=True):
        draw.rectangle([x, y, x + side, y + side], outline=(30, 60, 255, 150), width=1)
    for poly in getattr(tissue, "geoms", [tissue]):
        if poly.is_empty:
            continue
        for ring in (poly.exterior, *poly.interiors):
            xy = (np.asarray(ring.coords)[:, :2] * f).tolist()
            draw.line([tuple(p) for p in xy], fill=(0, 200, 0, 255), width=2)
    legend = []

    def to_px(coords: Any) -> list[tuple[float, float]]:
        return [(x * f, y * f) for x, y, *_ in coords]

    for name, (geom, color, area_mm2) in (artefacts or {}).items():
        rings = _rings(geom, to_px)
        _fill(layer, rings, color)
        for ring in (r for polygon in rings for r in polygon):
            draw.line(ring, fill=(*color, 255), width=1)
        legend.append((name, color, area_mm2))
    image = Image.alpha_composite(thumb.convert("RGBA"), layer).convert("RGB")
    title = (
        f"{grid.slide_id}  |  {grid.mpp:g} um/px, {grid.patch_px} px  |  "
        f"{len(grid)} tiles  |  slide {slide.mpp:.3f} um/px"
    )  # the default font has no µ
    font = ImageFont.load_default(size=14)
    top = 24 + (20 if legend else 0)
    canvas = Image.new("RGB", (max(image.width, 420), image.height + top), (255, 255, 255))
    canvas.paste(image, (0, top))
    pen = ImageDraw.Draw(canvas)
    pen.text((4, 4), title, fill=(0, 0, 0), font=font)
    x = 4
    for name, color, area_mm2 in legend:  # the legend: a swatch and "pen 0.012 mm2" per class
        pen.rectangle([x, 28, x + 12, 40], fill=color, outline=(0, 0, 0))
        text = f"{name} {area_mm2:.3g} mm2"
        pen.text((x + 16, 26), text, fill=(0, 0, 0), font=font)
        x += 16 + round(pen.textlength(text, font=font)) + 12
    out = Path(path)
    canvas.save(out, format="PNG", compress_level=1)  # zlib level 6 took longer than the read
    return out
