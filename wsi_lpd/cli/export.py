"""Vectorise a mosaic into QuPath GeoJSON (level-0 px) with measurements, plus an overlay PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_options, setup_logging
from wsi_lpd.export.options import ExportSection


@section_options(ExportSection, "export", flags={"per_class": "--per-class/--per-component"})
def command(
    mosaic: Annotated[Path, typer.Argument(help="Mosaic {slide}.ome.zarr from `wsi-lpd infer`.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    opts: ExportSection,
    config: Annotated[Path | None, typer.Option(help="Workflow YAML (section `export`).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Vectorise a mosaic into QuPath GeoJSON with per-polygon confidence, plus an overlay PNG."""
    from wsi_lpd.export.stage import export_mosaic

    export_mosaic(mosaic, opts, out, on_valid=lambda: setup_logging(verbose))
