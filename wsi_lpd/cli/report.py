"""Write the run report: one self-contained HTML page (thumbnails, areas, timings, failures)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import setup_logging
from wsi_lpd.errors import ConfigError

log = logging.getLogger("wsi_lpd.workflow.report")


def command(
    results: Annotated[Path, typer.Option(help="Results folder of the workflow.")],
    samples: Annotated[Path, typer.Option(help="Sample sheet CSV (slide_id, path, split, …).")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write [RESULTS/report.html].")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="The model.pt the slides were inferred with [RESULTS/model/model.pt]."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title [wsi-lpd report].")] = None,
    image_max_px: Annotated[
        int | None, typer.Option(help="Long side of embedded thumbnails in px [512].")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config; reads `report:` and `classes:`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Write one self-contained HTML report of a workflow run."""
    setup_logging(verbose)
    from wsi_lpd.classes import BCSS_CLASSES, ClassList
    from wsi_lpd.io import write_text
    from wsi_lpd.workflow.cohort import ResultsLayout, read_sample_sheet
    from wsi_lpd.workflow.config import ReportSection, parse_section, read_yaml
    from wsi_lpd.workflow.report import collect_report, render_html

    data = read_yaml(config) if config is not None else {}
    section = dict(data.get("report") or {})
    section.update(
        {k: v for k, v in {"title": title, "image_max_px": image_max_px}.items() if v is not None}
    )
    opts = parse_section(ReportSection, section, config, "report")
    classes = ClassList.from_dict(data["classes"]) if data.get("classes") else BCSS_CLASSES
    if not results.is_dir():
        raise ConfigError(f"{results}: results folder not found")
    sheet = read_sample_sheet(samples, check_files=False)
    layout = ResultsLayout(str(results))
    report = collect_report(
        layout,
        sheet,
        str(model or layout.model),
        opts.model_dump(),
        {c.name: c.color for c in classes.all},
        config.read_text(errors="replace") if config is not None else None,
    )
    out = out or Path(layout.report)
    write_text(out, render_html(report))
    log.info(
        "wrote %s: %d slide(s), %d failed, %d failure record(s), %d training warning(s)",
        out,
        len(report.slides),
        sum(s.status == "failed" for s in report.slides),
        len(report.failures),
        len(report.warnings),
    )
