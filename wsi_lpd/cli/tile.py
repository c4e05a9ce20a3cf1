"""Detect tissue and lay a tile grid at a µm/px: tiles.npz, tissue.geojson, qc.png, run.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_options, setup_logging
from wsi_lpd.slide.options import TileSection


@section_options(TileSection, "tile")
def command(
    slide: Annotated[
        Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, SCN, TIFF, OME-TIFF).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (written atomically).")],
    opts: TileSection,
    slide_id: Annotated[
        str | None, typer.Option(help="Slide id.", show_default="file stem")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads section 'tile'.")
    ] = None,
) -> None:
    from wsi_lpd.slide.stage import tile_slide

    tile_slide(slide, opts, out, slide_id=slide_id, on_valid=setup_logging)
