"""Write the sample sheet from a slide folder (+ QuPath annotation and truth folders), naming
slides as the QuPath scripts do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    slide_dir: Annotated[Path, typer.Argument(help="Folder of slide files (not searched below).")],
    out: Annotated[Path, typer.Option(help="Sample sheet CSV to write.")],
    annotations: Annotated[
        Path | None,
        typer.Option(help="Folder of {slide_id}.geojson from qupath/export_annotations.groovy."),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="Folder of ground truth: {slide_id}[.mask].tiff or .geojson."),
    ] = None,
) -> None:
    from wsi_lpd.workflow.samples import build_sample_sheet, write_sample_sheet

    built = build_sample_sheet(slide_dir, annotations, truth)
    write_sample_sheet(built, out)
    n = len(built.rows)
    n_ann = n - len(built.without_annotations)
    n_truth = sum(1 for r in built.rows if r["truth"])
    typer.echo(f"wrote {out}: {n} slides, {n_ann} with annotations, {n_truth} with truth")
    if annotations is not None and built.without_annotations:
        ids = built.without_annotations
        more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
        typer.echo(
            f"{len(ids)} slide(s) without annotations (inferred, not trained): "
            f"{', '.join(ids[:20])}{more}"
        )
    for path in built.unmatched:
        typer.echo(f"warning: {path}: no slide has this file's id; left out", err=True)
