"""Write the run report: one self-contained HTML page (thumbnails, areas, timings, failures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import config_classes, section_options, setup_logging
from wsi_lpd.workflow.config import ReportSection


@section_options(ReportSection, "report")
def command(
    results: Annotated[Path, typer.Option(help="Results folder of the workflow.")],
    samples: Annotated[Path, typer.Option(help="Sample sheet CSV (slide_id, path, split, …).")],
    opts: ReportSection,
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write [RESULTS/report.html].")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="The model.pt the slides were inferred with [RESULTS/model/model.pt]."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config; reads `report:` and `classes:`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Write one self-contained HTML report of a workflow run."""
    setup_logging(verbose)
    from wsi_lpd.workflow.report import write_report

    write_report(
        results, samples, opts, out=out, model=model, classes=config_classes(config), config=config
    )
