"""The run report: one self-contained HTML page (inline CSS, images embedded as base64 data).

:func:`collect_report` gathers plain data (``ReportData``) from a results folder laid out by
:class:`wsi_lpd.workflow.cohort.ResultsLayout`; :func:`render_html` renders it with the Jinja2
templates in
``wsi_lpd/templates``. Failed jobs are read from their failure records (JSON, see
:func:`wsi_lpd.workflow.cohort.write_failure_record`), training trouble from ``train_log.csv`` and
the
checkpoint. Nothing on the page refers to an external resource.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import write_text
from wsi_lpd.workflow.cohort import (
    COHORT_KEY,
    COHORT_STAGES,
    SLIDE_STAGES,
    ResultsLayout,
    SampleSheet,
    read_failure_record,
    read_sample_sheet,
)
from wsi_lpd.workflow.config import ReportSection

log = logging.getLogger(__name__)

STAGE_ORDER = ("demo_cohort", "tile", "patches", "train", "infer", "export", "evaluate", "report")
COLLAPSE_DROP = 0.15  # validation collapse: the best-so-far metric falls by more and stays down
LOSS_RISE = 1.5  # divergence: the last quarter's mean loss is this many times the best quarter's


@dataclass
class Failure:
    """One failed job: the slide (or ``_cohort``), the stage, its error and its log."""

    slide_id: str
    stage: str
    message: str
    log_path: str
    error_type: str | None = None


@dataclass
class SlideRow:
    """Everything the page shows about one slide of the sample sheet."""

    slide_id: str
    role: str  # train | test | infer (wsi_lpd.workflow.cohort.Sample.role)
    split: str | None = None
    status: str = "not run"  # ok | failed | not run
    overlay_uri: str | None = None
    qc_uri: str | None = None
    areas_mm2: dict[str, float] = field(default_factory=dict)
    n_features: int | None = None
    mosaic_mpp: float | None = None
    metrics: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    # tile stage's artefacts: QuPath class (``Artefact: pen`` …) -> (mm², display colour)
    artefacts: dict[str, tuple[float, tuple[int, int, int]]] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """The model the slides were inferred with, and its training record when it was trained."""

    path: str
    trained_here: bool
    curves_uri: str | None = None
    curve_svg: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    untrained_classes: list[str] = field(default_factory=list)


@dataclass
class ReportData:
    """Input of :func:`render_html`."""

    title: str
    generated: str
    results_dir: str
    samples_path: str
    slides: list[SlideRow]
    class_colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    cohort_timings_s: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    model: ModelInfo | None = None
    config_text: str | None = None
    warnings: list[str] = field(default_factory=list)


# ---- readers of small run files ------------------------------------------------------------


def image_data_uri(path: str | os.PathLike, max_px: int = 640, fmt: str = "jpeg") -> str | None:
    """A data URI of the image at ``path``, scaled to at most ``max_px`` on its long side.

    ``fmt`` "jpeg" (photos: thumbnails, overlays; images with transparency stay PNG) or "png"
    (plots). Returns None (with a warning) when the file cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA") or "transparency" in img.info
            im = img.convert("RGBA" if has_alpha else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        log.warning("%s: not embedded, cannot read the image (%s)", path, exc)
        return None
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    if fmt == "jpeg" and not has_alpha:
        im.save(buf, format="JPEG", quality=85, optimize=True)
        mime = "image/jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_benchmark_s(path: str | os.PathLike) -> float | None:
    """Wall seconds from a Snakemake benchmark TSV (column ``s``; the mean over repeats)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        log.warning("%s: cannot read the benchmark file (%s)", path, exc)
        return None
    values = []
    for row in rows:
        try:
            values.append(float(row.get("s") or "nan"))
        except ValueError:
            continue
    values = [v for v in values if math.isfinite(v)]
    if not values:
        log.warning("%s: no wall time (column 's') in the benchmark file", path)
        return None
    return sum(values) / len(values)


def read_train_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``train_log.csv`` as floats (cells that are not numbers are left out)."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def svg_line_chart(
    xs: Sequence[float], ys: Sequence[float], title: str, width: int = 480, height: int = 220
) -> str:
    """A small inline SVG line chart (no scripts, no external references)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(x) and math.isfinite(y)]
    esc = html.escape(title)
    if len(pts) < 2:
        return f'<p class="muted">{esc}: not enough points to plot</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    pad = 36
    w, h = width - 2 * pad, height - 2 * pad

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return pad + h - (y - y0) / (y1 - y0) * h

    poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (
        f'<svg width="{width}" height="{height}" '
        f'role="img" aria-label="{esc}">'
        f'<rect x="{pad}" y="{pad}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{poly}"/>'
        f'<text x="{pad}" y="{pad - 10}" font-size="12">{esc}</text>'
        f'<text x="{pad}" y="{height - 8}" font-size="10">{x0:g}</text>'
        f'<text x="{pad + w}" y="{height - 8}" font-size="10" text-anchor="end">{x1:g}</text>'
        f'<text x="{pad - 4}" y="{pad + h}" font-size="10" text-anchor="end">{y0:.3g}</text>'
        f'<text x="{pad - 4}" y="{pad + 8}" font-size="10" text-anchor="end">{y1:.3g}</text>'
        "</svg>"
    )


# ---- training trouble ----------------------------------------------------------------------


def training_warnings(
    rows: Sequence[Mapping[str, float]], untrained_classes: Sequence[str] = ()
) -> list[str]:
    """Sentences about a training run that went wrong, from ``train_log.csv`` rows.

    Validation collapse: after its best value, validation mIoU fell by more than
    ``COLLAPSE_DROP`` and never came back within it. Divergence: a loss that is not finite, or a
    last-quarter mean loss ``LOSS_RISE`` times the lowest quarter's. Classes never trained: named
    by the checkpoint.
    """
    out: list[str] = []
    val = [(r["iteration"], r["val_mIoU"]) for r in rows if "iteration" in r and "val_mIoU" in r]
    finite = [(it, v) for it, v in val if math.isfinite(v)]
    if finite:
        best_it, best = max(finite, key=lambda p: p[1])
        last_good = max(i for i, (_, v) in enumerate(finite) if v >= best - COLLAPSE_DROP)
        after = finite[last_good + 1 :]
        if after:
            first_it = after[0][0]
            worst = max(v for _, v in after)
            out.append(
                f"Validation collapse: validation mIoU peaked at {best:.2f} at iteration "
                f"{best_it:g} and stayed at or below {worst:.2f} from iteration {first_it:g} on "
                f"(the model kept is the best checkpoint; check the learning rate and schedule)."
            )
    losses = [(r["iteration"], r["total"]) for r in rows if "iteration" in r and "total" in r]
    bad = [it for it, v in losses if not math.isfinite(v)]
    if bad:
        out.append(f"Divergence: the training loss is not finite from iteration {bad[0]:g}.")
    elif len(losses) >= 8:
        q = len(losses) // 4
        quarters = [
            sum(v for _, v in losses[i * q : (i + 1) * q]) / q for i in range(len(losses) // q)
        ]
        last = sum(v for _, v in losses[-q:]) / q
        lowest = min(quarters)
        if lowest > 0 and last > LOSS_RISE * lowest:
            out.append(
                f"Divergence: the training loss rose to {last:.3g} in the last quarter of the run "
                f"from {lowest:.3g} at its lowest."
            )
    if untrained_classes:
        out.append(
            "Classes never trained (no training patch carried them): "
            + ", ".join(untrained_classes)
            + "; their predictions are meaningless."
        )
    return out


def untrained_classes(contract: Mapping[str, Any]) -> list[str]:
    """``untrained_classes`` of a checkpoint contract (top level or its ``training`` record)."""
    found = contract.get("untrained_classes")
    if found is None:
        found = (contract.get("training") or {}).get("untrained_classes")
    return [str(c) for c in found or []]


# ---- gathering a results folder ------------------------------------------------------------


def _read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: ignored, not readable JSON (%s)", p, exc)
        return None
    return data if isinstance(data, dict) else None


def _timings(layout: ResultsLayout) -> dict[str, dict[str, float]]:
    """``{slide or '_cohort': {stage: seconds}}`` from the benchmark files."""
    out: dict[str, dict[str, float]] = {}
    for tsv in sorted(Path(layout.root, "benchmarks").glob("*/*.tsv")):
        seconds = read_benchmark_s(tsv)
        if seconds is not None:
            out.setdefault(tsv.stem, {})[tsv.parent.name] = seconds
    return out


def _failure(layout: ResultsLayout, stage: str, key: str) -> Failure | None:
    """The failure of one job: its record, unless the job's output exists (a later success)."""
    record = read_failure_record(layout.failure_record(stage, key))
    if record is None:
        return None
    finished = layout.finished(stage, key)
    if finished is not None and os.path.exists(finished):
        return None
    return Failure(
        key, stage, str(record["message"]), layout.log(stage, key), record.get("error_type")
    )


def _artefacts(tile_run: Mapping[str, Any] | None) -> dict[str, tuple[float, tuple[int, int, int]]]:
    """QuPath class -> (mm², colour) of the artefacts a tile stage's ``run.json`` records."""
    out: dict[str, tuple[float, tuple[int, int, int]]] = {}
    for kind, info in ((tile_run or {}).get("artefacts") or {}).items():
        try:
            color = tuple(int(c) for c in info["color"])
            out[str(info.get("class", kind))] = (float(info["area_mm2"]), color)  # type: ignore[assignment]
        except (KeyError, TypeError, ValueError):
            log.warning("tile run.json: unreadable artefact entry %r", kind)
    return out


def _slide_row(
    layout: ResultsLayout, sample: Any, trained_here: bool, opts: Mapping[str, Any],
    timings: Mapping[str, dict[str, float]],
) -> SlideRow:  # fmt: skip
    sid = sample.slide_id
    entry = SlideRow(sid, sample.role(trained_here), split=sample.split)
    entry.timings_s = dict(timings.get(sid, {}))
    export = _read_json(layout.export_meta(sid))
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
    if os.path.isfile(layout.overlay(sid)):
        entry.overlay_uri = image_data_uri(layout.overlay(sid), opts["image_max_px"])
    if opts["embed_qc"] and os.path.isfile(layout.tissue_qc(sid)):
        entry.qc_uri = image_data_uri(layout.tissue_qc(sid), opts["image_max_px"])
    entry.artefacts = _artefacts(_read_json(os.path.join(layout.tiles(sid), "run.json")))
    metrics = _read_json(layout.metrics(sid))
    if metrics is not None:
        entry.metrics = {**(metrics.get("pooled") or {}), "protocol": metrics.get("protocol")}
    return entry


def _model_info(layout: ResultsLayout, model: str) -> ModelInfo:
    trained_here = Path(model).resolve() == Path(layout.model).resolve()
    info = ModelInfo(str(model), trained_here)
    if not os.path.isfile(model):
        info.summary["state"] = "missing (training did not finish)" if trained_here else "missing"
        return info
    info.summary["size"] = f"{os.path.getsize(model) / 2**20:.1f} MiB"
    try:
        from wsi_lpd.networks.checkpoint import read_checkpoint

        info.untrained_classes = untrained_classes(read_checkpoint(model))
    except (ValueError, OSError) as exc:
        log.warning("%s: classes not checked, cannot read the checkpoint (%s)", model, exc)
    if not trained_here:
        return info
    run = _read_json(layout.train_run) or {}
    for key in ("iterations", "best_val_mIoU", "images_per_s", "wall_time_s"):
        if run.get(key) is not None:
            info.summary[key] = run[key]
    method = (run.get("parameters") or {}).get("method")
    if method:
        info.summary["method"] = method
    if os.path.isfile(layout.curves):
        info.curves_uri = image_data_uri(layout.curves, 1000, fmt="png")
    return info


def collect_report(
    layout: ResultsLayout,
    sheet: SampleSheet,
    model: str,
    opts: Mapping[str, Any],
    class_colors: Mapping[str, tuple[int, int, int]],
    config_text: str | None = None,
) -> ReportData:
    """Gather what exists under ``layout.root`` into the report's data."""
    timings = _timings(layout)
    model_info = _model_info(layout, model)
    slides = [_slide_row(layout, s, model_info.trained_here, opts, timings) for s in sheet.samples]
    failures = [f for st in COHORT_STAGES if (f := _failure(layout, st, COHORT_KEY))]
    for entry in slides:
        for stage in SLIDE_STAGES:
            found = _failure(layout, stage, entry.slide_id)
            if found is not None:
                failures.append(found)
                if entry.status != "ok":
                    entry.status = "failed"
    rows = read_train_log(layout.train_log) if os.path.isfile(layout.train_log) else []
    if model_info.trained_here and rows:
        if "total" in rows[-1]:
            model_info.summary["final loss"] = round(rows[-1]["total"], 4)
        if model_info.curves_uri is None:
            pts = [(r["iteration"], r["total"]) for r in rows if "iteration" in r and "total" in r]
            model_info.curve_svg = svg_line_chart(
                [p[0] for p in pts], [p[1] for p in pts], "training loss per iteration"
            )
    warnings = training_warnings(
        rows if model_info.trained_here else [], model_info.untrained_classes
    )
    return ReportData(
        title=str(opts["title"]),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        results_dir=layout.root,
        samples_path=sheet.path,
        slides=slides,
        class_colors=dict(class_colors),
        cohort_timings_s=timings.get(COHORT_KEY, {}),
        failures=failures,
        model=model_info,
        config_text=config_text,
        warnings=warnings,
    )


# ---- HTML ----------------------------------------------------------------------------------


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _fmt_area(mm2: float | None) -> str:
    if mm2 is None:
        return ""
    return f"{mm2:.3f}" if mm2 < 10 else f"{mm2:.2f}"


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_pct(v: Any) -> str:
    if v is None or not isinstance(v, int | float) or not math.isfinite(v):
        return "–"
    return f"{100 * v:.1f}"


def held_out_miou(data: ReportData) -> tuple[float | None, int]:
    """Mean mIoU of the evaluated slides not used for training, and their number — the figure
    the README quotes for the demo."""
    scores = [
        r.metrics["miou"]
        for r in data.slides
        if r.metrics and r.role != "train" and isinstance(r.metrics.get("miou"), int | float)
    ]
    return (sum(scores) / len(scores) if scores else None), len(scores)


def render_html(data: ReportData) -> str:
    """The whole page as one string (``wsi_lpd/templates/report.html.j2``)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    from markupsafe import Markup

    env = Environment(
        loader=PackageLoader("wsi_lpd.workflow", "templates"),
        autoescape=select_autoescape(["j2"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seconds=_fmt_seconds, area=_fmt_area, pct=_fmt_pct, value=_fmt_value)

    def swatch(color: Sequence[int] | None) -> Markup:
        if color is None:
            return Markup("")
        r, g, b = (int(c) for c in color)
        return Markup(f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>')

    area_classes = list(data.class_colors)
    for row in data.slides:
        area_classes += [n for n in row.areas_mm2 if n not in area_classes]
    area_classes = [n for n in area_classes if any(n in r.areas_mm2 for r in data.slides)]
    artefact_colors: dict[str, tuple[int, int, int]] = {}
    for row in data.slides:
        for name, (_, color) in row.artefacts.items():
            artefact_colors.setdefault(name, color)
    figures = [
        {"uri": uri, "slide_id": r.slide_id, "what": what}
        for r in data.slides
        for uri, what in ((r.overlay_uri, "prediction overlay"), (r.qc_uri, "tissue QC"))
        if uri
    ]
    evaluated = [r for r in data.slides if r.metrics]
    iou_classes: list[str] = []
    for r in evaluated:
        iou_classes += [c for c in (r.metrics or {}).get("per_class", {}) if c not in iou_classes]
    protocol = next((r.metrics.get("protocol") for r in evaluated if r.metrics.get("protocol")), "")
    miou, n_held_out = held_out_miou(data)
    entries: list[tuple[str, Mapping[str, float]]] = [
        (r.slide_id, r.timings_s) for r in data.slides
    ]
    if data.cohort_timings_s:
        entries.append(("whole cohort", data.cohort_timings_s))
    stages = sorted(
        {s for _, t in entries for s in t},
        key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s),
    )
    return env.get_template("report.html.j2").render(
        d=data,
        n_ok=sum(r.status == "ok" for r in data.slides),
        n_failed=sum(r.status == "failed" for r in data.slides),
        not_run=[r.slide_id for r in data.slides if r.status == "not run"],
        swatch=swatch,
        area_classes=area_classes,
        artefact_colors=artefact_colors,
        figures=figures,
        evaluated=evaluated,
        iou_classes=iou_classes,
        protocol=protocol,
        held_out_miou=miou,
        n_held_out=n_held_out,
        timing_stages=stages,
        timing_rows=entries,
        timing_totals={s: sum(t.get(s, 0.0) for _, t in entries) for s in stages},
        timing_grand=sum(sum(t.values()) for _, t in entries),
    )


def write_report(
    results: str | os.PathLike,
    samples: str | os.PathLike,
    opts: ReportSection,
    *,
    out: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    classes: ClassList = BCSS_CLASSES,
    config: str | os.PathLike | None = None,
) -> Path:
    """The report stage: one self-contained HTML page of the workflow run in ``results`` (sample
    sheet ``samples``) at ``out`` (default ``RESULTS/report.html``); ``model`` defaults to
    ``RESULTS/model/model.pt``; ``config`` (the workflow YAML) is embedded as text."""
    if not os.path.isdir(results):
        raise ConfigError(f"{results}: results folder not found")
    sheet = read_sample_sheet(samples, check_files=False)
    layout = ResultsLayout(str(results))
    report = collect_report(
        layout,
        sheet,
        str(model or layout.model),
        opts.model_dump(),
        {c.name: c.color for c in classes.all},
        Path(config).read_text(errors="replace") if config is not None else None,
    )
    target = Path(out or layout.report)
    write_text(target, render_html(report))
    log.info(
        "wrote %s: %d slide(s), %d failed, %d failure record(s), %d training warning(s)",
        target,
        len(report.slides),
        sum(s.status == "failed" for s in report.slides),
        len(report.failures),
        len(report.warnings),
    )
    return target
