"""Run the cohort workflow (Snakemake) on CONFIG from any folder: wsi-lpd run CONFIG [SNAKEMAKE
ARGS…], e.g. -n (dry run), --cores 8, --workflow-profile slurm. Relative paths in CONFIG are
taken from its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def command(
    config: Annotated[Path, typer.Argument(help="Workflow config YAML (the sheet beside it).")],
    snakemake_args: Annotated[
        list[str] | None,
        typer.Argument(help="Snakemake's own arguments (-n, --cores N, --workflow-profile slurm)."),
    ] = None,
) -> None:
    from wsi_lpd.workflow.runner import run_workflow

    code = run_workflow(config, snakemake_args or [])
    if code:
        raise typer.Exit(code)
