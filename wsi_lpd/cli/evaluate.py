"""Score mosaics, or a model on patches / BCSS-WSSS, against ground truth: IoU, Dice, FwIoU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_options, setup_logging
from wsi_lpd.evaluate.options import EvaluateSection


@section_options(EvaluateSection, "evaluate")
def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and metrics.md.")],
    opts: EvaluateSection,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads section 'evaluate'.")
    ] = None,
) -> None:
    from wsi_lpd.evaluate.stage import evaluate_to

    typer.echo(evaluate_to(opts, out, on_valid=setup_logging))
