"""Score mosaics, or a model on patches / BCSS-WSSS, against ground truth: IoU, Dice, FwIoU."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wsi_lpd.cli._common import section_with_flags, setup_logging, write_run_metadata
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_dir, write_json, write_text
from wsi_lpd.workflow.config import EvaluateSection

log = logging.getLogger("wsi_lpd.evaluate")


def _default(key: str) -> str:
    """The default of ``evaluate.<key>`` as shown in ``--help`` (one source: the section model)."""
    return str(EvaluateSection.model_fields[key].default)


def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and metrics.md.")],
    pred: Annotated[
        list[Path] | None, typer.Option("--pred", help="Mosaic(s) {slide}.ome.zarr (mode A).")
    ] = None,
    truth: Annotated[
        list[Path] | None,
        typer.Option("--truth", help="Label mask TIFF or GeoJSON per --pred (same order)."),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", help="model.pt (mode B).")] = None,
    patches: Annotated[
        Path | None, typer.Option("--patches", help="Patch store with masks (mode B).")
    ] = None,
    bcss_dir: Annotated[
        Path | None, typer.Option("--bcss-dir", help="BCSS-WSSS / LUAD-HistoSeg folder (mode B).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="valid | test (mode B).", show_default=_default("split"))
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="Layout: bcss | luad.", show_default=_default("layout"))
    ] = None,
    label_mode: Annotated[
        str | None,
        typer.Option(
            help="Image labels: given (from truth) | predicted.",
            show_default=_default("label_mode"),
        ),
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="lpd | wsss-tissue.", show_default=_default("protocol"))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Mode B batch size.", show_default=_default("batch_size"))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Mode B torch device.", show_default=_default("device"))
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="dask threads over mosaic row bands (mode A).", show_default=_default("workers")
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads section 'evaluate'.")
    ] = None,
) -> None:
    from wsi_lpd.evaluate.evaluation import evaluate_model, evaluate_mosaics, metrics_report

    started = time.time()
    opts = section_with_flags(
        EvaluateSection,
        config,
        "evaluate",
        pred=[str(p) for p in pred] if pred else None,
        truth=[str(p) for p in truth] if truth else None,
        model=str(model) if model else None,
        patches=str(patches) if patches else None,
        bcss_dir=str(bcss_dir) if bcss_dir else None,
        split=split,
        layout=layout,
        label_mode=label_mode,
        protocol=protocol,
        batch_size=batch_size,
        device=device,
        workers=workers,
    )
    mode_b = opts.model is not None
    if mode_b == bool(opts.pred):
        raise ConfigError("evaluate: give either --pred with --truth, or --model")
    if mode_b and (opts.patches is None) == (opts.bcss_dir is None):
        raise ConfigError("evaluate: --model needs exactly one of --patches or --bcss-dir")
    setup_logging()
    if mode_b:
        evaluation = evaluate_model(
            Path(opts.model),
            patches=Path(opts.patches) if opts.patches else None,
            bcss_dir=Path(opts.bcss_dir) if opts.bcss_dir else None,
            split=opts.split,
            layout=opts.layout,
            label_mode=opts.label_mode,
            batch_size=opts.batch_size,
            device=opts.device,
        )
        inputs: dict[str, Any] = {
            k: getattr(opts, k) for k in ("model", "patches", "bcss_dir") if getattr(opts, k)
        }
    else:
        evaluation = evaluate_mosaics(
            [Path(p) for p in opts.pred], [Path(p) for p in opts.truth], opts.workers
        )
        inputs = {"pred": opts.pred, "truth": opts.truth}
    result, markdown, table = metrics_report(
        evaluation,
        opts.protocol,
        "model" if mode_b else "mosaic",
        opts.label_mode if mode_b else None,
    )
    parameters = {k: v for k, v in opts.model_dump().items() if k not in inputs and k != "pred"}
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_text(tmp / "metrics.md", markdown)
        write_run_metadata(tmp, "evaluate", parameters, inputs, started)
    typer.echo(table)
