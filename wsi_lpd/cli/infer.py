"""Predict a whole slide with a trained model into an OME-Zarr mosaic (probabilities + labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_options, setup_logging
from wsi_lpd.infer.options import InferSection


@section_options(InferSection, "infer")
def command(
    slide: Annotated[Path, typer.Argument(help="Whole-slide image (SVS, NDPI, MRXS, TIFF, …).")],
    model: Annotated[Path, typer.Option(help="Trained model.pt.")],
    out: Annotated[Path, typer.Option(help="Output directory for {slide_id}.ome.zarr.")],
    opts: InferSection,
    slide_id: Annotated[str | None, typer.Option(help="Slide id (default: file stem).")] = None,
    tiles: Annotated[
        Path | None, typer.Option(help="Tile directory of `wsi-lpd tile` (its tissue.geojson).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Workflow YAML: section `infer`; its `classes` must match the model; without "
            "--tiles, tissue is detected with its `tile` settings."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Predict a whole slide with a trained model into an OME-Zarr mosaic."""
    from wsi_lpd.infer.stage import infer_slide
    from wsi_lpd.settings import load_section
    from wsi_lpd.slide.options import TileSection
    from wsi_lpd.workflow.config import workflow_classes

    infer_slide(
        slide,
        model,
        opts,
        out,
        slide_id=slide_id,
        tiles=tiles,
        tissue=load_section(TileSection, config, "tile").tissue_options(),
        expected_classes=workflow_classes(config),
        config=config,
        on_valid=lambda: setup_logging(verbose),
    )
