"""Build a patch store (pixels + three-state labels) from tiles + QuPath annotations, or a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import config_classes, section_options, setup_logging
from wsi_lpd.data.options import PatchesSection


@section_options(PatchesSection, "patches")
def command(
    out: Annotated[Path, typer.Option("--out", help="Patch store to write (STORE.zarr).")],
    opts: PatchesSection,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads `patches:` and `classes:`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Cut labelled patches (positive / negative / unknown per class) into a patch store."""
    from wsi_lpd.data.patches import build_patch_store

    build_patch_store(
        opts, config_classes(config), out, source=config, on_valid=lambda: setup_logging(verbose)
    )
