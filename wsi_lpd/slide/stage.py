"""The tile stage: detect tissue (or read it) and its artefacts, lay a tile grid at a µm/px.

:func:`tile_slide` writes ``tiles.npz``, ``tissue.geojson`` (artefacts removed),
``artefacts.geojson``, ``qc.png`` and ``run.json`` into one folder, atomically; its options are
one :class:`~wsi_lpd.slide.options.TileSection`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from wsi_lpd.errors import NoTissueWarning
from wsi_lpd.formats.geojson import qupath_offset_px
from wsi_lpd.io import atomic_dir
from wsi_lpd.run_metadata import sha256_first_mib, write_run_metadata
from wsi_lpd.slide.artefacts import (
    Artefacts,
    artefact_summary,
    qc_layers,
    remove_artefacts,
    write_artefacts_geojson_into,
)
from wsi_lpd.slide.options import TileSection
from wsi_lpd.slide.overlay import write_tile_qc_into
from wsi_lpd.slide.reader import default_slide_id, open_slide, validate_slide_id
from wsi_lpd.slide.tiling import TileGrid, check_patch_fits, make_tile_grid
from wsi_lpd.slide.tissue import (
    clip_to,
    detect_tissue_with_thumbnail,
    read_roi_geojson,
    read_tissue_geojson,
    write_tissue_geojson_into,
)

log = logging.getLogger("wsi_lpd.tile")


def tile_slide(
    slide_path: str | os.PathLike,
    opts: TileSection,
    out: str | os.PathLike,
    *,
    slide_id: str | None = None,
    on_valid: Callable[[], None] | None = None,
) -> TileGrid:
    """Tile one slide into the folder ``out`` (written atomically) and return the grid.

    ``slide_id`` defaults to the file stem; ``on_valid`` is called once the inputs are checked
    (the command line starts its INFO logging there)."""
    started = time.time()
    slide = Path(slide_path)
    sid = validate_slide_id(slide_id if slide_id is not None else default_slide_id(slide))
    with open_slide(slide, mpp=opts.slide_mpp) as wsi:
        width, height = wsi.dimensions
        check_patch_fits(width, height, wsi.mpp, opts.tile_mpp, opts.patch_px, str(slide))
        offset = qupath_offset_px(wsi)
        region = read_roi_geojson(opts.roi, offset) if opts.roi else None
        given = read_tissue_geojson(opts.tissue_geojson, offset) if opts.tissue_geojson else None
        if on_valid is not None:
            on_valid()
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
                wsi, opts.tissue_options(), progress=True
            )
        if region is not None:
            tissue = clip_to(tissue, region)
            log.info("%s: tissue limited to the region of interest %s", slide, opts.roi)
        artefacts = Artefacts({}, {})
        if thumbnail is not None:  # detected tissue: artefacts found on the same thumbnail
            tissue, artefacts = remove_artefacts(
                wsi, tissue, thumbnail, opts.tissue_mpp, opts.artefact_options(),
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
        grid.extra = {
            "bounds": list(wsi.bounds),
            "vendor": wsi.vendor,
            "backend": wsi.backend,
            "artefact_area_mm2": {k: round(v, 6) for k, v in artefacts.area_mm2.items()},
        }
        with atomic_dir(out) as tmp:
            grid.save(tmp / "tiles.npz")
            write_tissue_geojson_into(tmp / "tissue.geojson", tissue)
            write_artefacts_geojson_into(tmp / "artefacts.geojson", artefacts.polygons, wsi.mpp)
            write_tile_qc_into(
                tmp / "qc.png", wsi, tissue, grid, opts.qc_long_side_px, thumbnail,
                artefacts=qc_layers(artefacts),
            )  # fmt: skip
            write_run_metadata(
                tmp,
                "tile",
                parameters={**opts.model_dump(), "overlap_px": opts.overlap_px, "slide_id": sid},
                inputs={
                    "slide": str(slide.resolve()),
                    "slide_sha256_first_mib": sha256_first_mib(slide),
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
    return grid
