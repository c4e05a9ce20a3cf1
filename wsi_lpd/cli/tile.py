"""Detect tissue and artefacts, lay a tile grid at a µm/px: tiles.npz, tissue.geojson (artefacts
removed), artefacts.geojson, qc.png, run.json."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import (
    file_checksum,
    section_with_flags,
    setup_logging,
    write_run_metadata,
)
from wsi_lpd.io import atomic_dir
from wsi_lpd.workflow.config import TileSection

log = logging.getLogger("wsi_lpd.tile")


def _default(key: str) -> str:
    """The default of ``tile.<key>`` as shown in ``--help`` (one source: the section model)."""
    return str(TileSection.model_fields[key].default)


def command(
    slide: Annotated[
        Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, SCN, TIFF, OME-TIFF).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (written atomically).")],
    slide_id: Annotated[
        str | None, typer.Option(help="Slide id.", show_default="file stem")
    ] = None,
    tile_mpp: Annotated[
        float | None,
        typer.Option(help="Tile resolution, µm/px.", show_default=_default("tile_mpp")),
    ] = None,
    patch_px: Annotated[
        int | None,
        typer.Option(help="Tile side in px at --tile-mpp.", show_default=_default("patch_px")),
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            help="Overlap of neighbouring tiles, fraction of the tile.",
            show_default=_default("overlap"),
        ),
    ] = None,
    min_tissue: Annotated[
        float | None,
        typer.Option(
            help="Minimum tissue fraction of a kept tile.", show_default=_default("min_tissue")
        ),
    ] = None,
    tissue_geojson: Annotated[
        Path | None, typer.Option(help="Use these polygons (any class) instead of detection.")
    ] = None,
    roi: Annotated[
        Path | None,
        typer.Option(help="Region of interest (GeoJSON polygons): tiles only inside it."),
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(help="Override the slide's level-0 µm/px.", show_default="from the file"),
    ] = None,
    tissue_mpp: Annotated[
        float | None,
        typer.Option(
            help="Resolution of tissue detection, µm/px.", show_default=_default("tissue_mpp")
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads section 'tile'.")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", hidden=True, help="Deprecated: --tile-mpp.")
    ] = None,
    overlap_px: Annotated[
        int | None, typer.Option("--overlap-px", hidden=True, help="Deprecated: --overlap.")
    ] = None,
) -> None:
    started = time.time()
    opts = section_with_flags(
        TileSection,
        config,
        "tile",
        tile_mpp=tile_mpp,
        patch_px=patch_px,
        overlap=overlap,
        min_tissue=min_tissue,
        tissue_mpp=tissue_mpp,
        slide_mpp=slide_mpp,
        tissue_geojson=str(tissue_geojson) if tissue_geojson else None,
        roi=str(roi) if roi else None,
        mpp=mpp,
        overlap_px=overlap_px,
    )

    from wsi_lpd.errors import NoTissueWarning
    from wsi_lpd.formats.geojson import qupath_offset_px
    from wsi_lpd.slide.artefacts import (
        Artefacts,
        ArtefactSettings,
        artefact_summary,
        qc_layers,
        remove_artefacts,
        write_artefacts_geojson,
    )
    from wsi_lpd.slide.overlay import write_tile_qc
    from wsi_lpd.slide.reader import default_slide_id, open_slide, validate_slide_id
    from wsi_lpd.slide.tiling import check_patch_fits, make_tile_grid
    from wsi_lpd.slide.tissue import (
        clip_to,
        detect_tissue_with_thumbnail,
        read_roi_geojson,
        read_tissue_geojson,
        write_tissue_geojson,
    )

    sid = validate_slide_id(slide_id if slide_id is not None else default_slide_id(slide))
    with open_slide(slide, mpp=opts.slide_mpp) as wsi:
        width, height = wsi.dimensions
        check_patch_fits(width, height, wsi.mpp, opts.tile_mpp, opts.patch_px, str(slide))
        offset = qupath_offset_px(wsi)
        region = read_roi_geojson(opts.roi, offset) if opts.roi else None
        given = read_tissue_geojson(opts.tissue_geojson, offset) if opts.tissue_geojson else None
        setup_logging()
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
        thumbnail = None
        if given is not None:
            tissue = given
            log.info("tissue from %s: %d polygon(s)", opts.tissue_geojson, len(tissue.geoms))
        else:
            tissue, thumbnail = detect_tissue_with_thumbnail(
                wsi,
                opts.tissue_mpp,
                min_object_um2=opts.min_object_um2,
                min_hole_um2=opts.min_hole_um2,
                close_radius_um=opts.close_radius_um,
                open_radius_um=opts.open_radius_um,
                saturation_floor=opts.saturation_floor,
                exclude_dark=opts.exclude_dark,
                progress=True,
            )
        if region is not None:
            tissue = clip_to(tissue, region)
            log.info("%s: tissue limited to the region of interest %s", slide, opts.roi)
        artefacts = Artefacts({}, {})
        if thumbnail is not None:  # detected tissue: artefacts found on the same thumbnail
            tissue, artefacts = remove_artefacts(
                wsi, tissue, thumbnail, opts.tissue_mpp, ArtefactSettings.from_options(opts),
                opts.min_object_um2, progress=True,
            )  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoTissueWarning)
            grid = make_tile_grid(
                width,
                height,
                wsi.mpp,
                tissue,
                opts.tile_mpp,
                opts.patch_px,
                opts.overlap_px,
                opts.min_tissue,
                sid,
                str(slide.resolve()),
            )
        for w in caught:
            log.warning("%s", w.message)
        grid.extra = {"bounds": list(wsi.bounds), "vendor": wsi.vendor, "backend": wsi.backend}
        with atomic_dir(out) as tmp:
            grid.save(tmp / "tiles.npz")
            write_tissue_geojson(tmp / "tissue.geojson", tissue)
            write_artefacts_geojson(tmp / "artefacts.geojson", artefacts.polygons, wsi.mpp)
            write_tile_qc(
                tmp / "qc.png", wsi, tissue, grid, opts.qc_long_side_px, thumbnail,
                artefacts=qc_layers(artefacts),
            )  # fmt: skip
            write_run_metadata(
                tmp,
                "tile",
                parameters={**opts.model_dump(), "overlap_px": opts.overlap_px, "slide_id": sid},
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
                artefacts=artefact_summary(artefacts),
            )
    log.info(
        "%s: %d tiles at %g µm/px (%d px) written to %s",
        sid,
        len(grid),
        grid.mpp,
        grid.patch_px,
        out,
    )
