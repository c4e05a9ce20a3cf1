"""Write the run report: one self-contained HTML page (thumbnails, areas, timings, failures)."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines._common import (
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
)
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_file

if TYPE_CHECKING:
    from wsi_lpd.report import Failure, ModelInfo, ReportData, SlideRow

log = logging.getLogger("wsi_lpd.report")

DEFAULTS: dict[str, Any] = {"title": "wsi-lpd report", "image_max_px": 512, "embed_qc": True}

# Results layout of the workflow (snakemake/README.md): what each stage leaves when it finished.
SLIDE_STAGE_OUTPUT = {
    "tile": "tiles/{slide}",
    "infer": "mosaics/{slide}.ome.zarr",
    "export": "geojson/{slide}.export.json",
    "evaluate": "evaluate/{slide}/metrics.json",
}
COHORT_STAGE_OUTPUT = {
    "demo_cohort": None,
    "patches": "patches/train.zarr",
    "train": "model/model.pt",
}
COHORT_KEY = "_cohort"  # log and benchmark name of cohort-level jobs (never a slide id)


def _options(config: Path | None, **flags: Any) -> dict[str, Any]:
    """Defaults < config section ``report`` < flags; unknown keys are refused."""
    section = load_config_section(config, "report", DEFAULTS)
    opts = {**DEFAULTS, **merge_options(section, **flags)}
    try:
        opts["image_max_px"] = int(opts["image_max_px"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"report.image_max_px: expected an integer ({exc})") from exc
    if opts["image_max_px"] < 32:
        raise ConfigError(f"report.image_max_px: must be at least 32, got {opts['image_max_px']}")
    opts["title"] = str(opts["title"])
    opts["embed_qc"] = bool(opts["embed_qc"])
    return opts


def read_sheet(path: Path) -> list[dict[str, str]]:
    """Rows of the sample sheet (values stripped; empty cells are empty strings)."""
    if not path.is_file():
        raise ConfigError(f"{path}: sample sheet not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if "slide_id" not in fields:
                raise ConfigError(f"{path}: missing column slide_id")
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read the sample sheet ({exc})") from exc
    return [r for r in rows if r.get("slide_id")]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: ignored, not readable JSON (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _timings(results: Path) -> dict[str, dict[str, float]]:
    """``{slide or 'cohort': {stage: seconds}}`` from ``benchmarks/{stage}/{key}.tsv``."""
    from wsi_lpd.report import read_benchmark_s

    out: dict[str, dict[str, float]] = {}
    for tsv in sorted((results / "benchmarks").glob("*/*.tsv")):
        seconds = read_benchmark_s(tsv)
        if seconds is not None:
            out.setdefault(tsv.stem, {})[tsv.parent.name] = seconds
    return out


def _failure(results: Path, key: str, stage: str, output: str | None) -> Failure | None:
    """The failure of one job, when its log has an error line and its output is missing."""
    from wsi_lpd.report import Failure, error_line

    log_path = results / "logs" / stage / f"{key}.log"
    if not log_path.is_file():
        return None
    if output is not None and (results / output.format(slide=key)).exists():
        return None
    message = error_line(log_path.read_text(errors="replace"))
    return None if message is None else Failure(key, stage, message, str(log_path))


def _role(row: dict[str, str], trained_here: bool) -> str:
    if trained_here and row.get("annotations") and row.get("split", "") != "test":
        return "train"
    return "test" if row.get("truth") else "infer"


def _slide_row(
    results: Path, row: dict[str, str], trained_here: bool, opts: dict[str, Any],
    timings: dict[str, dict[str, float]],
) -> SlideRow:  # fmt: skip
    from wsi_lpd.report import SlideRow, image_data_uri

    sid = row["slide_id"]
    entry = SlideRow(sid, _role(row, trained_here), split=row.get("split") or None)
    entry.timings_s = timings.get(sid, {})
    export = _read_json(results / "geojson" / f"{sid}.export.json")
    if export is not None:
        entry.status = "ok"
        classes = export.get("classes") or {}
        entry.areas_mm2 = {
            str(name): float(stats["area_um2"]) / 1e6
            for name, stats in classes.items()
            if isinstance(stats, dict) and stats.get("area_um2") is not None
        }
        entry.n_features = export.get("features")
        entry.mosaic_mpp = (export.get("inputs") or {}).get("mpp")
    overlay = results / "geojson" / f"{sid}.overlay.png"
    if overlay.is_file():
        entry.overlay_uri = image_data_uri(overlay, opts["image_max_px"])
    qc = results / "tiles" / sid / "qc.png"
    if opts["embed_qc"] and qc.is_file():
        entry.qc_uri = image_data_uri(qc, opts["image_max_px"])
    metrics = _read_json(results / "evaluate" / sid / "metrics.json")
    if metrics is not None:
        entry.metrics = {**(metrics.get("pooled") or {}), "protocol": metrics.get("protocol")}
    return entry


def _model_info(results: Path, model: Path) -> ModelInfo:
    from wsi_lpd.report import ModelInfo, image_data_uri, read_train_log, svg_line_chart

    trained_here = model.resolve() == (results / "model" / "model.pt").resolve()
    info = ModelInfo(str(model), trained_here)
    if not model.is_file():
        info.summary["state"] = "missing (training did not finish)" if trained_here else "missing"
        return info
    info.summary["size"] = f"{model.stat().st_size / 2**20:.1f} MiB"
    if not trained_here:
        return info
    run = _read_json(model.parent / "run.json") or {}
    for key in ("iterations", "best_val_mIoU", "images_per_s", "wall_time_s"):
        if run.get(key) is not None:
            info.summary[key] = run[key]
    params = run.get("parameters") or {}
    if params.get("method"):
        info.summary["method"] = params["method"]
    curves = model.parent / "curves.png"
    if curves.is_file():
        info.curves_uri = image_data_uri(curves, 1000, fmt="png")
    train_log = model.parent / "train_log.csv"
    if train_log.is_file():
        rows = read_train_log(train_log)
        if rows and "total" in rows[-1]:
            info.summary["final loss"] = round(rows[-1]["total"], 4)
        if info.curves_uri is None:
            pts = [(r["iteration"], r["total"]) for r in rows if "iteration" in r and "total" in r]
            info.curve_svg = svg_line_chart(
                [p[0] for p in pts], [p[1] for p in pts], "training loss per iteration"
            )
    return info


def build_report(
    results: Path, samples: Path, model: Path, opts: dict[str, Any], config: Path | None = None
) -> ReportData:
    """Gather what exists under ``results`` into the report's data."""
    from wsi_lpd.classes import BCSS_CLASSES, ClassList
    from wsi_lpd.report import ReportData

    if not results.is_dir():
        raise ConfigError(f"{results}: results folder not found")
    sheet = read_sheet(samples)
    timings = _timings(results)
    model_info = _model_info(results, model)
    slides = [_slide_row(results, r, model_info.trained_here, opts, timings) for r in sheet]
    failures = []
    for stage, output in COHORT_STAGE_OUTPUT.items():
        found = _failure(results, COHORT_KEY, stage, output)
        if found is not None:
            failures.append(found)
    for entry in slides:
        for stage, output in SLIDE_STAGE_OUTPUT.items():
            found = _failure(results, entry.slide_id, stage, output)
            if found is not None:
                failures.append(found)
                if entry.status != "ok":
                    entry.status = "failed"
    class_section = load_config_section(config, "classes") if config else {}
    classes = ClassList.from_dict(class_section) if class_section else BCSS_CLASSES
    return ReportData(
        title=opts["title"],
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        results_dir=str(results),
        samples_path=str(samples),
        slides=slides,
        class_colors={c.name: c.color for c in classes.all},
        cohort_timings_s=timings.get(COHORT_KEY, {}),
        failures=failures,
        model=model_info,
        config_text=config.read_text(errors="replace") if config and config.is_file() else None,
    )


@one_line_errors
def command(
    results: Annotated[Path, typer.Option(help="Results folder of the workflow.")],
    samples: Annotated[Path, typer.Option(help="Sample sheet CSV (slide_id, split, …).")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write [RESULTS/report.html].")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="The model.pt the slides were inferred with.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
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
    from wsi_lpd.report import render_html

    opts = _options(config, title=title, image_max_px=image_max_px)
    out = out or results / "report.html"
    data = build_report(results, samples, model or results / "model" / "model.pt", opts, config)
    with atomic_file(out) as tmp:
        tmp.write_text(render_html(data), encoding="utf-8")
    n_failed = sum(s.status == "failed" for s in data.slides)
    log.info(
        "wrote %s: %d slide(s), %d failed, %d failure line(s)",
        out,
        len(data.slides),
        n_failed,
        len(data.failures),
    )
