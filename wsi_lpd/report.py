"""The run report: one self-contained HTML page (inline CSS, images embedded as base64 data).

The page is built from plain data (``ReportData``); gathering that data from a results folder is
the report stage's job (``pipelines/report.py``). Nothing here refers to an external resource, so
the page can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ERROR_PREFIX = "wsi-lpd: error:"
STAGE_ORDER = ("demo_cohort", "tile", "patches", "train", "infer", "export", "evaluate", "report")


@dataclass
class Failure:
    """One failed job: the slide (or ``cohort``), the stage, its error line and its log."""

    slide_id: str
    stage: str
    message: str
    log_path: str


@dataclass
class SlideRow:
    """Everything the page shows about one slide of the sample sheet."""

    slide_id: str
    role: str  # train | test | infer (annotated slides outside the test split train the model)
    split: str | None = None
    status: str = "not run"  # ok | failed | not run
    overlay_uri: str | None = None
    qc_uri: str | None = None
    areas_mm2: dict[str, float] = field(default_factory=dict)
    n_features: int | None = None
    mosaic_mpp: float | None = None
    metrics: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """The model the slides were inferred with, and its training record when it was trained."""

    path: str
    trained_here: bool
    curves_uri: str | None = None
    curve_svg: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


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


def error_line(text: str) -> str | None:
    """The failure line of a stage log, or None when the log shows no failure.

    In order: the last ``wsi-lpd: error: …`` line (a typed error), the last line of a Python
    traceback (a crash), the message of a command-line usage error (click/typer, plain or boxed).
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return lines[-1]
    for i, ln in enumerate(lines):
        if ln.startswith("Error:"):
            return f"usage error: {ln.removeprefix('Error:').strip()}"
        if ln.startswith("╭─ Error"):
            body = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("│"):
                    break
                body.append(nxt.strip("│ "))
            return "usage error: " + " ".join(b for b in body if b)
    return None


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


# ---- HTML ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.ok{color:#1a7f37;font-weight:600}.failed{color:#c62828;font-weight:600}
.notrun{color:#8a6d00;font-weight:600}
.muted{color:#777}.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #999;
vertical-align:middle;margin-right:.3em}
.gallery{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #ddd;padding:.5em;background:#fff}
figure img{display:block;max-width:100%}figcaption{font-size:.85em;margin-top:.3em}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f6f8fa;padding:.8em;overflow:auto}
.summary span{margin-right:1.5em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def _status(status: str) -> str:
    css = {"ok": "ok", "failed": "failed"}.get(status, "notrun")
    return f'<span class="{css}">{_e(status)}</span>'


def _swatch(color: tuple[int, int, int] | None) -> str:
    if color is None:
        return ""
    r, g, b = color
    return f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'


def _class_order(data: ReportData) -> list[str]:
    names = list(data.class_colors)
    for row in data.slides:
        names += [n for n in row.areas_mm2 if n not in names]
    return [n for n in names if any(n in r.areas_mm2 for r in data.slides)]


def _slides_table(data: ReportData) -> str:
    classes = _class_order(data)
    head = "".join(f"<th>{_swatch(data.class_colors.get(n))}{_e(n)} mm²</th>" for n in classes)
    rows = []
    for r in data.slides:
        areas = "".join(f"<td>{_fmt_area(r.areas_mm2.get(n))}</td>" for n in classes)
        miou = _fmt_pct(r.metrics.get("miou")) if r.metrics else ""
        rows.append(
            f'<tr id="slide-{_e(r.slide_id)}"><td class="l">{_e(r.slide_id)}</td>'
            f'<td class="l">{_e(r.role)}</td><td class="l">{_status(r.status)}</td>{areas}'
            f"<td>{'' if r.n_features is None else r.n_features}</td><td>{miou}</td>"
            f"<td>{_fmt_seconds(sum(r.timings_s.values()) if r.timings_s else None)}</td></tr>"
        )
    return (
        '<table><tr><th class="l">slide</th><th class="l">role</th><th class="l">status</th>'
        f"{head}<th>features</th><th>mIoU %</th><th>wall time</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _gallery(data: ReportData) -> str:
    figures = []
    for r in data.slides:
        for uri, what in ((r.overlay_uri, "prediction overlay"), (r.qc_uri, "tissue QC")):
            if uri:
                figures.append(
                    f'<figure><img src="{uri}" alt="{_e(r.slide_id)} {what}">'
                    f"<figcaption><b>{_e(r.slide_id)}</b> — {what}</figcaption></figure>"
                )
    if not figures:
        return '<p class="muted">No thumbnails (no slide finished tiling or export).</p>'
    return '<div class="gallery">' + "".join(figures) + "</div>"


def _timings_table(data: ReportData) -> str:
    stages = [s for s in STAGE_ORDER if s in data.cohort_timings_s]
    stages += [s for r in data.slides for s in r.timings_s if s not in stages]
    stages = sorted(
        set(stages), key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER)
    )
    if not stages:
        return '<p class="muted">No benchmark files found.</p>'
    head = "".join(f"<th>{_e(s)}</th>" for s in stages)
    rows = []
    entries: list[tuple[str, Mapping[str, float]]] = [
        (r.slide_id, r.timings_s) for r in data.slides
    ]
    if data.cohort_timings_s:
        entries.append(("whole cohort", data.cohort_timings_s))
    for name, t in entries:
        cells = "".join(f"<td>{_fmt_seconds(t.get(s))}</td>" for s in stages)
        total = sum(t.values()) if t else None
        rows.append(f'<tr><td class="l">{_e(name)}</td>{cells}<td>{_fmt_seconds(total)}</td></tr>')
    col_totals = "".join(
        f"<td>{_fmt_seconds(sum(t.get(s, 0.0) for _, t in entries))}</td>" for s in stages
    )
    grand = sum(sum(t.values()) for _, t in entries)
    rows.append(f'<tr><th class="l">sum</th>{col_totals}<th>{_fmt_seconds(grand)}</th></tr>')
    return (
        f'<table><tr><th class="l">slide</th>{head}<th>total</th></tr>{"".join(rows)}</table>'
        '<p class="muted">Wall time per job from the Snakemake benchmark files.</p>'
    )


def _model_section(model: ModelInfo | None) -> str:
    if model is None:
        return '<p class="muted">No model information.</p>'
    parts = [f"<p>Model: <code>{_e(model.path)}</code>"]
    parts.append(" (trained in this run)</p>" if model.trained_here else " (given checkpoint)</p>")
    if model.summary:
        cells = "".join(
            f'<tr><td class="l">{_e(k)}</td><td>{_e(_fmt_value(v))}</td></tr>'
            for k, v in model.summary.items()
        )
        parts.append(f"<table>{cells}</table>")
    if model.curves_uri:
        parts.append(
            f'<figure><img src="{model.curves_uri}" alt="training curves">'
            "<figcaption>training curves</figcaption></figure>"
        )
    elif model.curve_svg:
        parts.append(model.curve_svg)
    elif model.trained_here:
        parts.append('<p class="muted">No training curves found.</p>')
    return "".join(parts)


def _evaluation_section(data: ReportData) -> str:
    evaluated = [r for r in data.slides if r.metrics]
    if not evaluated:
        return '<p class="muted">No slide with ground truth was evaluated.</p>'
    classes: list[str] = []
    for r in evaluated:
        classes += [c for c in (r.metrics or {}).get("per_class", {}) if c not in classes]
    head = "".join(f"<th>IoU {_e(c)}</th>" for c in classes)
    rows = []
    for r in evaluated:
        m = r.metrics or {}
        per = m.get("per_class", {})
        cells = "".join(f"<td>{_fmt_pct((per.get(c) or {}).get('iou'))}</td>" for c in classes)
        rows.append(
            f'<tr><td class="l">{_e(r.slide_id)}</td><td class="l">{_e(r.role)}</td>'
            f"<td>{_fmt_pct(m.get('miou'))}</td><td>{_fmt_pct(m.get('mdice'))}</td>"
            f"<td>{_fmt_pct(m.get('fwiou'))}</td><td>{_fmt_pct(m.get('pixel_accuracy'))}</td>"
            f"{cells}</tr>"
        )
    test = [r.metrics["miou"] for r in evaluated if r.role != "train" and r.metrics.get("miou")]
    note = (
        f"<p>Mean mIoU over the {len(test)} slide(s) not used for training: "
        f"<b>{_fmt_pct(sum(test) / len(test))} %</b>.</p>"
        if test
        else ""
    )
    protocol = next((r.metrics.get("protocol") for r in evaluated if r.metrics.get("protocol")), "")
    return (
        f'<p class="muted">Scores in %, protocol {_e(protocol)}.</p>'
        '<table><tr><th class="l">slide</th><th class="l">role</th><th>mIoU</th><th>mDice</th>'
        f"<th>FwIoU</th><th>pixel acc.</th>{head}</tr>{''.join(rows)}</table>{note}"
    )


def _failures_section(failures: Iterable[Failure], slides: Sequence[SlideRow]) -> str:
    failures = list(failures)
    not_run = [r.slide_id for r in slides if r.status == "not run"]
    if not failures and not not_run:
        return '<p class="ok">No failures.</p>'
    parts = []
    if failures:
        rows = "".join(
            f'<tr><td class="l">{_e(f.slide_id)}</td><td class="l">{_e(f.stage)}</td>'
            f'<td class="l"><code>{_e(f.message)}</code></td>'
            f'<td class="l"><code>{_e(f.log_path)}</code></td></tr>'
            for f in failures
        )
        parts.append(
            '<table><tr><th class="l">slide</th><th class="l">stage</th><th class="l">error</th>'
            f'<th class="l">log</th></tr>{rows}</table>'
        )
    if not_run:
        parts.append(
            "<p>Not finished (no result and no error line in the logs): "
            + ", ".join(f"<code>{_e(s)}</code>" for s in not_run)
            + "</p>"
        )
    return "".join(parts)


def render_html(data: ReportData) -> str:
    """The whole page as one string."""
    n_ok = sum(r.status == "ok" for r in data.slides)
    n_failed = sum(r.status == "failed" for r in data.slides)
    config = (
        f"<details><summary>workflow config</summary><pre>{_e(data.config_text)}</pre></details>"
        if data.config_text
        else ""
    )
    sections = [
        ("Slides", _slides_table(data)),
        ("Thumbnails", _gallery(data)),
        ("Failures", _failures_section(data.failures, data.slides)),
        ("Evaluation", _evaluation_section(data)),
        ("Model and training", _model_section(data.model)),
        ("Wall time per stage", _timings_table(data)),
    ]
    body = "".join(f'<h2 id="{_e(t.lower().split()[0])}">{_e(t)}</h2>{s}' for t, s in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(data.title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f"<h1>{_e(data.title)}</h1>"
        f'<p class="summary"><span>{len(data.slides)} slide(s)</span>'
        f'<span class="ok">{n_ok} done</span>'
        f'<span class="{"failed" if n_failed else "muted"}">{n_failed} failed</span>'
        f"<span>generated {_e(data.generated)}</span></p>"
        f'<p class="muted">results <code>{_e(data.results_dir)}</code>, sample sheet '
        f"<code>{_e(data.samples_path)}</code></p>"
        f"{body}{config}</body></html>\n"
    )
