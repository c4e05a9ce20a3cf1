"""Checks before the first job: every file the config and the sample sheet name exists and opens,
the annotations' classes against the config's, and the configured devices exist here.

Used by ``wsi-lpd config --check`` and at workflow start (``snakemake/rules/common.smk``). Each
problem is one line naming the file or config key, what is wrong and what to change; notes
(one line per annotation file: its classes mapped, ignored and unknown) are information.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from wsi_lpd.classes import ClassMapping
from wsi_lpd.errors import WsiLpdError
from wsi_lpd.workflow.cohort import (
    ResultsLayout,
    Sample,
    SampleSheet,
    check_checkpoint_classes,
    read_sample_sheet,
    resolve_path,
)
from wsi_lpd.workflow.config import WorkflowConfig

GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
CHECK_THREADS = 8  # sheet rows checked at once (slide opening waits on storage, not the CPU)


@dataclass
class Preflight:
    """What :func:`preflight` found, one line each: ``problems`` stop the run; ``unreadable``
    (a slide, truth or ROI file that exists but does not open) fails only that slide's jobs, so
    the workflow warns and goes on (``--keep-going``); ``notes`` inform."""

    problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sheet: SampleSheet | None = None

    @property
    def ok(self) -> bool:
        """No problem at all (``wsi-lpd config --check``)."""
        return not self.problems and not self.unreadable


def device_problem(device: str, key: str) -> str | None:
    """One line when the torch ``device`` of config key ``key`` cannot be had here, else None."""
    import torch

    text = str(device).strip()
    if text in ("auto", "cpu"):
        return None
    if not text.startswith("cuda"):
        with contextlib.suppress(RuntimeError, ValueError):
            torch.device(text)
            return None
        return (
            f"config key {key}: {text!r} is not a device; use auto, cpu, cuda, cuda:N or cuda:auto"
        )
    if not torch.cuda.is_available():
        return (
            f"config key {key}: {text!r} needs a CUDA GPU and this machine has none; "
            f"set {key}: cpu (or auto: the GPU when there is one, else the CPU)"
        )
    if text not in ("cuda", "cuda:auto"):
        try:
            index = torch.device(text).index
        except (RuntimeError, ValueError):
            return f"config key {key}: {text!r} is not a device; use cuda, cuda:N or cuda:auto"
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            return (
                f"config key {key}: {text!r} but this machine has {count} GPU(s) "
                f"(cuda:0..cuda:{count - 1}); set {key}: cuda:auto"
            )
    return None


def _is_geojson(path: str) -> bool:
    return path.lower().endswith(GEOJSON_SUFFIXES)


def annotation_classes_line(
    path: str, mapping: ClassMapping, slide_frame: tuple[int, int, int, int] | None = None
) -> tuple[str, list[str]]:
    """One line on the classes of an annotation file (mapped, ignored, unknown, with counts) and
    the problems it raises (unknown classes when ``patches.unknown_classes`` is ``refuse``).
    ``slide_frame``: the slide's (x, y, w, h) in QuPath's coordinates (level-0 px): polygons
    reaching past it or lying wholly outside are counted."""
    import shapely

    from wsi_lpd.formats.geojson import read_annotations

    annotations = read_annotations(path)
    outside = ""
    if slide_frame is not None and annotations:
        x, y, w, h = slide_frame
        frame = shapely.box(x, y, x + w, y + h)
        n_out = sum(not a.geometry.intersects(frame) for a in annotations)
        n_past = sum(not frame.contains(a.geometry) for a in annotations) - n_out
        if n_out == len(annotations):
            outside = f"; ALL lie outside the slide ({w} x {h} px): no labels from this file"
        elif n_out or n_past:
            outside = f"; {n_past} reach past the slide (clipped), {n_out} lie outside (left out)"
    counts = Counter(a.class_name for a in annotations)
    groups: dict[str, list[str]] = {"mapped": [], "ignored": [], "Ignore* area": [], "unknown": []}
    for name, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, str(kv[0]))):
        kind = mapping.kind(name)
        shown = "unclassified" if name is None else name
        if kind == "mapped":
            groups["mapped"].append(f"{shown}→{mapping.resolve(name)} ×{n}")
        elif kind == "ignore-area":
            groups["Ignore* area"].append(f"{shown} ×{n}")
        else:
            groups["ignored" if kind == "ignored" else "unknown"].append(f"{shown} ×{n}")
    parts = [f"{k}: {', '.join(v)}" for k, v in groups.items() if v]
    line = f"{path}: {len(annotations)} polygon(s); " + ("; ".join(parts) or "no classes") + outside
    problems = []
    if groups["unknown"] and mapping.unknown_classes == "refuse":
        problems.append(
            f"{path}: annotation class(es) {', '.join(groups['unknown'])} are not model classes "
            "and patches.unknown_classes is refuse; map them in patches.class_map "
            "(null drops one) or set patches.unknown_classes: ignore"
        )
    return line, problems


def _check_file(
    column: str, path: str, slide_mpp: float | None
) -> tuple[int, int, int, int] | None:
    """Open one file of the sheet as its stage will (raises WsiLpdError/OSError when it cannot);
    a slide gives its bounds offset and size (x, y, w, h level-0 px)."""
    if column == "path":
        from wsi_lpd.slide.reader import open_slide

        with open_slide(path, mpp=slide_mpp) as slide:
            x, y = (int(v) for v in slide.bounds[:2])
            width, height = (int(v) for v in slide.dimensions)
            return x, y, width, height
    if _is_geojson(path):
        from wsi_lpd.formats.geojson import read_annotations

        read_annotations(path)
    elif column == "truth":
        from wsi_lpd.formats.labelmask import read_label_mask

        read_label_mask(path)
    return None


def _check_sample(
    sheet_path: str,
    sample: Sample,
    mapping: ClassMapping | None,
    qupath_bounds: bool,
    pending: str | None,
) -> Preflight:
    """Every file of one sheet row: exists, opens; the annotations' classes (a note)."""
    out = Preflight()
    frame = None  # the slide's bounds offset and size, level-0 px
    for column in ("path", "annotations", "truth", "roi"):
        path = getattr(sample, column)
        if path is None or (pending and os.path.normpath(path).startswith(pending)):
            continue  # not given, or made by the workflow (the demo cohort)
        where = f"{sheet_path}: line {sample.line}: column {column}"
        if not os.path.exists(path):
            out.problems.append(f"{where}: file not found: {os.path.abspath(path)}")
            continue
        try:
            if column == "annotations" and mapping is not None:
                qupath = None
                if frame is not None:  # QuPath's coordinates of a cropped slide start at bounds
                    x, y, w, h = frame
                    qupath = (-x, -y, w, h) if qupath_bounds else (0, 0, w, h)
                line, problems = annotation_classes_line(path, mapping, qupath)
                out.notes.append(line)
                out.problems.extend(problems)
            elif column == "path":
                frame = _check_file(column, path, sample.mpp)
            else:
                _check_file(column, path, sample.mpp)
        except (WsiLpdError, OSError, ValueError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            shown = message if path in message else f"{path}: {message}"
            # a broken slide, truth or ROI fails only that slide's jobs
            found = out.problems if column == "annotations" else out.unreadable
            found.append(f"{where}: {shown}")
    return out


def preflight(
    config: WorkflowConfig,
    source: str,
    *,
    bundled: Iterable[str | os.PathLike] = (),
    devices: bool = True,
) -> Preflight:
    """Check the config ``config`` (read from ``source``) and its sample sheet, from the working
    directory (where relative paths start); ``bundled``: folders also searched for files shipped
    with the workflow (configs/model/*.yaml, environment.yml). Every slide is opened and every
    annotation, truth and ROI file parsed; ``devices``: check the train and infer devices here
    (off for a cluster head node)."""
    bundled = list(bundled)
    out = Preflight()
    layout = ResultsLayout(os.path.normpath(config.results))
    demo = config.demo_cohort is not None
    if not config.samples:
        out.problems.append(f"{source}: samples: missing (the sample sheet CSV; wsi-lpd samples)")
    else:
        try:
            out.sheet = read_sample_sheet(
                os.path.abspath(resolve_path(config.samples, bundled)),
                search_dirs=bundled,
                made_by_workflow=[layout.cohort_dir] if demo else [],
                check_files=False,
            )
        except WsiLpdError as exc:
            out.problems.append(str(exc))
    if out.sheet is not None:
        try:
            mapping = ClassMapping(
                config.classes.class_list(),
                config.patches.class_map,
                config.patches.unknown_classes,
            )
        except WsiLpdError as exc:
            out.problems.append(f"{source}: {exc}")
            mapping = None
        pending = os.path.normpath(layout.cohort_dir) + os.sep if demo else None
        sheet = out.sheet

        def check(sample: Sample) -> Preflight:
            return _check_sample(sheet.path, sample, mapping, config.patches.qupath_bounds, pending)

        # opening slides waits on storage: a few threads, results kept in sheet order
        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            for found in pool.map(check, sheet.samples):
                out.problems += found.problems
                out.unreadable += found.unreadable
                out.notes += found.notes
        if not config.train.checkpoint and not out.sheet.training:
            out.problems.append(
                f"{out.sheet.path}: no slide has annotations outside the test split, so nothing "
                "can be trained; add an annotations column or set the config key train.checkpoint"
            )
    _check_model(config, out, bundled)
    conda_env = resolve_path(config.conda_env, bundled)
    if not os.path.isfile(conda_env):
        out.problems.append(f"config key conda_env: {conda_env}: environment file not found")
    if devices:
        wanted = {"infer.device": config.infer.device}
        if not config.train.checkpoint:  # a given checkpoint trains nothing
            wanted["train.device"] = config.train.device
        out.problems.extend(p for k, d in wanted.items() if (p := device_problem(d, k)))
    return out


def _check_model(config: WorkflowConfig, out: Preflight, bundled: list) -> None:
    """The checkpoint (exists, its classes are the config's) or the training YAML (validates)."""
    if config.train.checkpoint:
        checkpoint = os.path.abspath(resolve_path(config.train.checkpoint, bundled))
        if not os.path.isfile(checkpoint):
            out.problems.append(f"config key train.checkpoint: {checkpoint}: file not found")
            return
        try:
            check_checkpoint_classes(checkpoint, config.classes.model_dump())
        except WsiLpdError as exc:
            out.problems.append(f"config key train.checkpoint: {exc}")
        return
    model_config = os.path.abspath(resolve_path(config.train.model_yaml, bundled))
    if not os.path.isfile(model_config):
        out.problems.append(
            f"config key train.model_config: {model_config}: file not found (the training YAML; "
            "bundled ones: configs/model/*.yaml)"
        )
        return
    from wsi_lpd.train.registry import load_training_config

    try:
        load_training_config(model_config)
    except WsiLpdError as exc:
        out.problems.append(f"config key train.model_config: {exc}")


def run_preflight_in(
    folder: str | os.PathLike,
    config: WorkflowConfig,
    source: str,
    *,
    bundled: Iterable[str | os.PathLike] = (),
    devices: bool = True,
) -> Preflight:
    """:func:`preflight` with ``folder`` as the working directory (where relative paths start:
    the config's folder, as with ``wsi-lpd run``)."""
    with contextlib.chdir(Path(folder)):
        return preflight(config, source, bundled=bundled, devices=devices)
