"""Detect tissue and lay a tile grid at a physical resolution: tiles.npz, tissue.geojson, qc.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines._common import (
    atomic_dir,
    file_checksum,
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)

DEFAULTS: dict[str, Any] = {
    "mpp": 1.0,
    "patch_px": 224,
    "overlap_px": 0,
    "min_tissue": 0.5,
    "tissue_mpp": 8.0,
    "qc_max_px": 1024,
}


def _options(config: Path | None, **flags: Any) -> dict[str, Any]:
    from wsi_lpd.errors import ConfigError

    section = load_config_section(config, "tile")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{config}: tile.{unknown[0]} is not a tile option ({', '.join(DEFAULTS)})"
        )
    opts = merge_options({**DEFAULTS, **section}, **flags)
    for key in ("mpp", "patch_px", "tissue_mpp"):
        if not opts[key] > 0:
            raise ConfigError(f"tile.{key}: must be > 0, got {opts[key]}")
    if not 0 <= opts["overlap_px"] < opts["patch_px"]:
        raise ConfigError(f"tile.overlap_px: must be in [0, patch_px), got {opts['overlap_px']}")
    if not 0 <= opts["min_tissue"] <= 1:
        raise ConfigError(f"tile.min_tissue: must be in [0, 1], got {opts['min_tissue']}")
    return opts


def write_qc_png(path: Path, thumb: Any, scale: float, tissue: Any, grid: Any, title: str) -> None:
    """Thumbnail with the tissue contour (green), the tile grid (thin blue) and a title line.

    ``scale``: thumbnail px per level-0 px.
    """
    from PIL import Image, ImageDraw

    from wsi_lpd.tissue import _polygons

    image = Image.fromarray(thumb).convert("RGB")
    canvas = Image.new("RGB", (image.width, image.height + 22), "white")
    canvas.paste(image, (0, 22))
    draw = ImageDraw.Draw(canvas)
    patch = grid.patch_px * grid.mpp / grid.slide_mpp * scale
    for x, y in zip(grid.x, grid.y, strict=True):
        x0, y0 = x * scale, y * scale + 22
        draw.rectangle((x0, y0, x0 + patch, y0 + patch), outline=(40, 90, 220))
    for poly in _polygons(tissue):
        for ring in (poly.exterior, *poly.interiors):
            xy = [(float(px) * scale, float(py) * scale + 22) for px, py in ring.coords]
            draw.line(xy, fill=(0, 170, 0), width=2)
    draw.text((4, 4), title, fill=(0, 0, 0))
    canvas.save(path)


@one_line_errors
def command(
    slide: Annotated[Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, TIFF, OME-TIFF …).")],
    out: Annotated[
        Path, typer.Option(help="Output directory for this slide (written atomically).")
    ],
    slide_id: Annotated[
        str | None, typer.Option(help="Slide id (default: the file name without extension).")
    ] = None,
    mpp: Annotated[float | None, typer.Option(help="Tile resolution in µm/px (1.0).")] = None,
    patch_px: Annotated[int | None, typer.Option(help="Tile side in px at --mpp (224).")] = None,
    overlap_px: Annotated[int | None, typer.Option(help="Tile overlap in px at --mpp (0).")] = None,
    min_tissue: Annotated[
        float | None, typer.Option(help="Keep tiles with at least this tissue fraction (0.5).")
    ] = None,
    tissue_geojson: Annotated[
        Path | None, typer.Option(help="Tissue polygons (QuPath GeoJSON) replacing detection.")
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Override the slide's level-0 µm/px.")
    ] = None,
    tissue_mpp: Annotated[
        float | None, typer.Option(help="Resolution of tissue detection in µm/px (8.0).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; reads section 'tile'.")] = None,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Detect tissue and write the tile grid of one slide."""
    setup_logging(verbose)
    started = time.time()
    import logging

    from wsi_lpd.slide import default_slide_id, open_slide, validate_slide_id
    from wsi_lpd.tiling import make_tile_grid
    from wsi_lpd.tissue import detect_tissue, read_tissue_geojson, write_tissue_geojson

    log = logging.getLogger("wsi_lpd.tile")
    opts = _options(
        config,
        mpp=mpp,
        patch_px=patch_px,
        overlap_px=overlap_px,
        min_tissue=min_tissue,
        tissue_mpp=tissue_mpp,
    )
    sid = validate_slide_id(slide_id or default_slide_id(slide))
    with open_slide(slide, mpp=slide_mpp) as wsi:
        width, height = wsi.dimensions
        log.info(
            "%s: %d×%d px at %.4f µm/px (%s, %s)",
            sid,
            width,
            height,
            wsi.mpp,
            wsi.vendor or "unknown vendor",
            wsi.backend,
        )
        if tissue_geojson is not None:
            tissue = read_tissue_geojson(tissue_geojson)
            source = str(tissue_geojson)
        else:
            tissue = detect_tissue(wsi, mpp=opts["tissue_mpp"], progress=True)
            source = "detected"
        grid = make_tile_grid(
            width,
            height,
            wsi.mpp,
            tissue,
            opts["mpp"],
            opts["patch_px"],
            opts["overlap_px"],
            opts["min_tissue"],
            slide_id=sid,
            slide_path=str(Path(slide).resolve()),
        )
        qc_mpp = max(wsi.mpp * max(width, height) / opts["qc_max_px"], wsi.mpp)
        thumb = wsi.thumbnail(qc_mpp)
        vendor, level0_mpp = wsi.vendor, wsi.mpp
    with atomic_dir(out) as tmp:
        grid.save(tmp / "tiles.npz")
        write_tissue_geojson(tmp / "tissue.geojson", tissue)
        title = (
            f"{sid}: {len(grid)} tiles of {opts['patch_px']} px at {opts['mpp']} um/px, "
            f"tissue {source}"
        )
        write_qc_png(tmp / "qc.png", thumb, thumb.shape[1] / width, tissue, grid, title)
        write_run_metadata(
            tmp,
            "tile",
            parameters={**opts, "slide_mpp_override": slide_mpp},
            inputs={
                "slide": str(slide),
                "slide_id": sid,
                "slide_width_px": width,
                "slide_height_px": height,
                "slide_mpp": level0_mpp,
                "vendor": vendor,
                "slide_sha256_first_mb": file_checksum(slide),
                "tissue": source,
            },
            started=started,
            n_tiles=len(grid),
            tissue_area_mm2=round(tissue.area * level0_mpp**2 / 1e6, 4),
        )
    log.info("wrote %d tiles, tissue.geojson and qc.png to %s", len(grid), out)
