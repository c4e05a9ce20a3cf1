"""Detect tissue and lay a tile grid at a µm/px: tiles.npz, tissue.geojson, qc.png, run.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines._common import (
    file_checksum,
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)
from wsi_lpd.errors import ConfigError, SlideNotFoundError
from wsi_lpd.io import atomic_dir

log = logging.getLogger("wsi_lpd.tile")

DEFAULTS: dict[str, Any] = {
    "mpp": 1.0,
    "patch_px": 224,
    "overlap_px": 0,
    "min_tissue": 0.5,
    "tissue_mpp": 8.0,
    "min_object_um2": 20_000.0,
    "min_hole_um2": 10_000.0,
    "close_radius_um": 16.0,
    "open_radius_um": 8.0,
    "saturation_floor": 0.05,
    "exclude_dark": True,
    "qc_long_side_px": 1024,
}
_TYPES = {k: type(v) for k, v in DEFAULTS.items()}


def _options(config: Path | None, **flags: Any) -> dict[str, Any]:
    """Defaults ← config section ``tile`` ← flags; validated, with the key named on error."""
    section = load_config_section(config, "tile", {*DEFAULTS, "tissue_geojson", "slide_mpp"})
    opts = {**DEFAULTS, **merge_options(section, **flags)}
    for key, kind in _TYPES.items():
        if kind is bool:
            if not isinstance(opts[key], bool):
                raise ConfigError(f"tile.{key}: expected true or false, got {opts[key]!r}")
            continue
        try:
            opts[key] = kind(opts[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tile.{key}: expected {kind.__name__}, got {opts[key]!r}") from exc
    for key in ("mpp", "patch_px", "tissue_mpp", "qc_long_side_px"):
        if opts[key] <= 0:
            raise ConfigError(f"tile.{key}: must be > 0, got {opts[key]}")
    if not 0 <= opts["overlap_px"] < opts["patch_px"]:
        raise ConfigError(f"tile.overlap_px: must be in [0, patch_px), got {opts['overlap_px']}")
    if not 0 <= opts["min_tissue"] <= 1:
        raise ConfigError(f"tile.min_tissue: must be in [0, 1], got {opts['min_tissue']}")
    return opts


def write_qc_png(path: Path, slide: Any, tissue: Any, grid: Any, long_side_px: int) -> None:
    """QC image with long side in [½, 1] × ``long_side_px``: thumbnail, tissue contour (green;
    ``tissue`` a MultiPolygon in level-0 px), tile outlines (thin blue) and a title line."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    w0, h0 = slide.dimensions
    qc_mpp = slide.mpp * max(w0, h0) / long_side_px
    # a pyramid level between ½ and 1 × long_side_px is read as is (no full-resolution decode)
    level_mpps = [slide.mpp * ds for ds in slide.level_downsamples]
    qc_mpp = min([m for m in level_mpps if qc_mpp <= m <= 2 * qc_mpp], default=qc_mpp)
    thumb = Image.fromarray(slide.thumbnail(qc_mpp))
    f = thumb.width / w0  # thumbnail px per level-0 px
    overlay = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    side = grid.patch_level0_px * f
    for x, y in zip((grid.x * f).tolist(), (grid.y * f).tolist(), strict=True):
        draw.rectangle([x, y, x + side, y + side], outline=(30, 60, 255, 150), width=1)
    for poly in tissue.geoms:
        for ring in (poly.exterior, *poly.interiors):
            xy = (np.asarray(ring.coords)[:, :2] * f).tolist()
            draw.line([tuple(p) for p in xy], fill=(0, 200, 0, 255), width=2)
    image = Image.alpha_composite(thumb.convert("RGBA"), overlay).convert("RGB")
    title = (
        f"{grid.slide_id}  |  {grid.mpp:g} um/px, {grid.patch_px} px  |  "
        f"{len(grid)} tiles  |  slide {slide.mpp:.3f} um/px"
    )  # the default font has no µ
    font = ImageFont.load_default(size=14)
    canvas = Image.new("RGB", (max(image.width, 420), image.height + 24), (255, 255, 255))
    canvas.paste(image, (0, 24))
    ImageDraw.Draw(canvas).text((4, 4), title, fill=(0, 0, 0), font=font)
    canvas.save(path, compress_level=6)


@one_line_errors
def command(
    slide: Annotated[
        Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, SCN, TIFF, OME-TIFF).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (written atomically).")],
    slide_id: Annotated[str | None, typer.Option(help="Slide id (default: file stem).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Tile resolution, µm/px [1.0].")] = None,
    patch_px: Annotated[int | None, typer.Option(help="Tile side in px at --mpp [224].")] = None,
    overlap_px: Annotated[int | None, typer.Option(help="Overlap of tiles in px [0].")] = None,
    min_tissue: Annotated[
        float | None, typer.Option(help="Minimum tissue fraction of a kept tile [0.5].")
    ] = None,
    tissue_geojson: Annotated[
        Path | None, typer.Option(help="Use these polygons (any class) instead of detection.")
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Override the slide's level-0 µm/px.")
    ] = None,
    tissue_mpp: Annotated[
        float | None, typer.Option(help="Resolution of tissue detection, µm/px [8.0].")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; reads section 'tile'.")] = None,
) -> None:
    started = time.time()
    setup_logging()
    opts = _options(
        config,
        mpp=mpp,
        patch_px=patch_px,
        overlap_px=overlap_px,
        min_tissue=min_tissue,
        tissue_mpp=tissue_mpp,
        slide_mpp=slide_mpp,
        tissue_geojson=str(tissue_geojson) if tissue_geojson else None,
    )
    if not slide.exists():
        raise SlideNotFoundError(f"{slide}: slide not found")

    import warnings

    from wsi_lpd.errors import NoTissueWarning
    from wsi_lpd.slide import default_slide_id, open_slide, validate_slide_id
    from wsi_lpd.tiling import make_tile_grid
    from wsi_lpd.tissue import detect_tissue, read_tissue_geojson, write_tissue_geojson

    sid = validate_slide_id(slide_id if slide_id is not None else default_slide_id(slide))
    override = opts.get("slide_mpp")
    with open_slide(slide, mpp=float(override) if override is not None else None) as wsi:
        width, height = wsi.dimensions
        log.info(
            "%s: %s (%s), %dx%d px, %.4f µm/px, %d level(s)",
            slide,
            wsi.vendor,
            wsi.backend,
            width,
            height,
            wsi.mpp,
            wsi.level_count,
        )
        if opts.get("tissue_geojson"):
            tissue = read_tissue_geojson(opts["tissue_geojson"])
            log.info("tissue from %s: %d polygon(s)", opts["tissue_geojson"], len(tissue.geoms))
        else:
            tissue = detect_tissue(
                wsi,
                opts["tissue_mpp"],
                min_object_um2=opts["min_object_um2"],
                min_hole_um2=opts["min_hole_um2"],
                close_radius_um=opts["close_radius_um"],
                open_radius_um=opts["open_radius_um"],
                saturation_floor=opts["saturation_floor"],
                exclude_dark=opts["exclude_dark"],
                progress=True,
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoTissueWarning)
            grid = make_tile_grid(
                width,
                height,
                wsi.mpp,
                tissue,
                opts["mpp"],
                opts["patch_px"],
                opts["overlap_px"],
                opts["min_tissue"],
                sid,
                str(slide.resolve()),
            )
        for w in caught:
            log.warning("%s", w.message)
        grid.extra = {"bounds": list(wsi.bounds), "vendor": wsi.vendor, "backend": wsi.backend}
        with atomic_dir(out) as tmp:
            grid.save(tmp / "tiles.npz")
            write_tissue_geojson(tmp / "tissue.geojson", tissue)
            write_qc_png(tmp / "qc.png", wsi, tissue, grid, opts["qc_long_side_px"])
            write_run_metadata(
                tmp,
                "tile",
                parameters={**opts, "slide_id": sid},
                inputs={
                    "slide": str(slide.resolve()),
                    "file_checksum": file_checksum(slide),
                    "slide_width": width,
                    "slide_height": height,
                    "slide_mpp": wsi.mpp,
                    "vendor": wsi.vendor,
                    "backend": wsi.backend,
                    "objective_power": wsi.objective_power,
                    "bounds": list(wsi.bounds),
                },
                started=started,
                n_tiles=len(grid),
                tissue_area_um2=float(tissue.area * wsi.mpp**2),
                n_tissue_polygons=len(tissue.geoms),
            )
    log.info(
        "%s: %d tiles at %g µm/px (%d px) written to %s",
        sid,
        len(grid),
        grid.mpp,
        grid.patch_px,
        out,
    )
