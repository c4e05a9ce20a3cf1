"""The cohort: sample sheet, slide roles, results layout and failure records.

One place for what the workflow (``snakemake/rules/*.smk``) and the report (``wsi-lpd report``)
both need to know about a cohort: which slides exist and where their files are, which slides
train the model and which are evaluated, and where every stage puts its outputs.

Sample sheet (CSV, one row per slide): ``slide_id`` and ``path`` required; ``mpp`` (level-0
µm/px override), ``annotations`` (QuPath GeoJSON for training), ``truth`` (ground truth for
evaluation), ``split`` (default ``train``) and ``roi`` (GeoJSON limiting tiling and inference)
optional. Every problem is one :class:`~wsi_lpd.errors.ConfigError` line naming the sheet, the
line and the column.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.io import write_json
from wsi_lpd.slide.reader import SLIDE_ID

REQUIRED_COLUMNS = ("slide_id", "path")
OPTIONAL_COLUMNS = ("mpp", "annotations", "truth", "split", "roi")
FILE_COLUMNS = ("path", "annotations", "truth", "roi")
SPLIT = re.compile(r"^[A-Za-z0-9_-]+$")
TEST_SPLIT = "test"
COHORT_KEY = "_cohort"  # log, benchmark and failure-record name of cohort-level jobs
SLIDE_STAGES = ("tile", "infer", "export", "evaluate")
COHORT_STAGES = ("demo_cohort", "patches", "train", "report")
FAILURE_RECORD_ENV = "WSI_LPD_FAILURE_RECORD"


@dataclass(frozen=True)
class Sample:
    """One row of the sample sheet; file paths resolved, empty cells None."""

    slide_id: str
    path: str
    mpp: float | None = None
    annotations: str | None = None
    truth: str | None = None
    split: str = "train"
    roi: str | None = None

    @property
    def trains(self) -> bool:
        """Annotated slides outside the test split train the model."""
        return self.annotations is not None and self.split != TEST_SPLIT

    @property
    def evaluated(self) -> bool:
        """Slides with ground truth are scored."""
        return self.truth is not None

    def role(self, trained_here: bool) -> str:
        """``train`` (used to train the model of this run), ``test`` (scored) or ``infer``."""
        if trained_here and self.trains:
            return "train"
        return "test" if self.evaluated else "infer"


@dataclass(frozen=True)
class SampleSheet:
    """The validated sample sheet: its path and its rows in order."""

    path: str
    samples: tuple[Sample, ...]

    @property
    def slide_ids(self) -> list[str]:
        return [s.slide_id for s in self.samples]

    def __getitem__(self, slide_id: str) -> Sample:
        for sample in self.samples:
            if sample.slide_id == slide_id:
                return sample
        raise KeyError(slide_id)

    @property
    def training(self) -> list[Sample]:
        """Slides whose annotations train the model (when the run trains one)."""
        return [s for s in self.samples if s.trains]

    @property
    def evaluated(self) -> list[Sample]:
        """Slides with ground truth."""
        return [s for s in self.samples if s.evaluated]

    def files(self) -> list[str]:
        """Every file the sheet names (slides, annotations, truth, ROI), sorted, no repeats."""
        return sorted({v for s in self.samples for c in FILE_COLUMNS if (v := getattr(s, c))})


def resolve_path(value: str, search_dirs: Iterable[str | os.PathLike] = ()) -> str:
    """A path from the config or the sheet: absolute as given; a relative one from the working
    directory when it exists there, else from the first of ``search_dirs`` that has it."""
    path = Path(os.path.expanduser(value))
    if path.is_absolute() or path.exists():
        return os.path.normpath(path)
    for folder in search_dirs:
        candidate = Path(folder) / path
        if candidate.exists():
            return os.path.normpath(candidate)
    return os.path.normpath(path)


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(os.path.normpath(path).startswith(os.path.normpath(f) + os.sep) for f in folders)


def read_sample_sheet(
    sheet: str | os.PathLike,
    *,
    search_dirs: Iterable[str | os.PathLike] = (),
    made_by_workflow: Iterable[str] = (),
    check_files: bool = True,
) -> SampleSheet:
    """Read and validate the sample sheet.

    ``search_dirs``: where relative paths are also looked up (the workflow's folder for bundled
    files). Files under a folder of ``made_by_workflow`` need not exist yet (the demo cohort).
    Raises ConfigError, one line: ``SHEET: line N: column C: problem``.
    """
    sheet = os.fspath(sheet)
    search_dirs = list(search_dirs)
    pending = [os.path.normpath(f) for f in made_by_workflow]
    if not os.path.isfile(sheet):
        raise ConfigError(f"{sheet}: sample sheet not found")
    try:
        with open(sheet, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = [c.strip() for c in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{sheet}: not a readable CSV sample sheet ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(
            f"{sheet}: line 1: missing column(s) {', '.join(missing)} (required: "
            f"{', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{sheet}: line 1: unknown column(s) {', '.join(unknown)} (known: "
            f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"
        )
    if not rows:
        raise ConfigError(f"{sheet}: the sample sheet lists no slides")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, raw in rows:
        if len(raw) > len(header):
            raise ConfigError(
                f"{sheet}: line {line}: {len(raw)} cells, the header has {len(header)}"
            )
        raw = raw + [""] * (len(header) - len(raw))  # trailing empty cells may be left out
        cells = {c: (v.strip() or None) for c, v in zip(header, raw, strict=True)}

        def bad(column: str, problem: str, _line: int = line) -> ConfigError:
            return ConfigError(f"{sheet}: line {_line}: column {column}: {problem}")

        sid = cells["slide_id"]
        if sid is None:
            raise bad("slide_id", "empty")
        if "/" in sid or "\\" in sid:
            raise bad("slide_id", f"{sid!r} contains a path separator")
        if not SLIDE_ID.match(sid):
            raise bad("slide_id", f"{sid!r}: use letters, digits and . _ + - (no spaces)")
        if sid in seen:
            raise bad("slide_id", f"duplicate {sid!r} (first on line {seen[sid]})")
        seen[sid] = line
        mpp = None
        if cells.get("mpp") is not None:
            try:
                mpp = float(cells["mpp"])
            except ValueError:
                raise bad("mpp", f"not a number (got {cells['mpp']!r})") from None
            if not (math.isfinite(mpp) and mpp > 0):
                raise bad("mpp", f"must be a positive µm/px (got {cells['mpp']!r})")
        split = cells.get("split") or "train"
        if not SPLIT.match(split):
            raise bad("split", f"{split!r}: use letters, digits, _ and - (e.g. train, test)")
        files: dict[str, str | None] = {}
        for column in FILE_COLUMNS:
            value = cells.get(column)
            if value is None:
                if column == "path":
                    raise bad("path", "empty (the slide file is required)")
                files[column] = None
                continue
            as_given = os.path.normpath(os.path.expanduser(value))
            path = as_given if _under(as_given, pending) else resolve_path(value, search_dirs)
            if check_files and not os.path.exists(path) and not _under(path, pending):
                raise bad(column, f"file not found: {path}")
            files[column] = path
        samples.append(Sample(slide_id=sid, mpp=mpp, split=split, **files))  # type: ignore[arg-type]
    return SampleSheet(path=sheet, samples=tuple(samples))


@dataclass(frozen=True)
class ResultsLayout:
    """Every path a workflow run writes, under ``root``.

    Slide methods take a slide id; pass ``"{slide}"`` to get the Snakemake wildcard pattern.
    """

    root: str
    geojson_suffix: str = ".geojson"

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # cohort-level
    @property
    def cohort_dir(self) -> str:
        """Where the demo cohort's synthetic slides are generated."""
        return self._p("cohort")

    def stage_config(self, stage: str) -> str:
        """The config sections one stage reads (its `--config`), written by the workflow."""
        return self._p("config", f"{stage}.yaml")

    def log(self, stage: str, key: str) -> str:
        return self._p("logs", stage, f"{key}.log")

    def benchmark(self, stage: str, key: str) -> str:
        return self._p("benchmarks", stage, f"{key}.tsv")

    def failure_record(self, stage: str, key: str) -> str:
        """The JSON a failed job leaves (see :func:`write_failure_record`)."""
        return self._p("logs", stage, f"{key}.failure.json")

    @property
    def patch_store(self) -> str:
        return self._p("patches", "train.zarr")

    @property
    def model(self) -> str:
        return self._p("model", "model.pt")

    @property
    def train_log(self) -> str:
        return self._p("model", "train_log.csv")

    @property
    def curves(self) -> str:
        return self._p("model", "curves.png")

    @property
    def train_state(self) -> str:
        """The resumable state an interrupted `wsi-lpd train --out MODEL_DIR` leaves
        (``wsi_lpd.train.engine.state_dir``: ``OUT/../.OUT.resume``, with ``last.pt``)."""
        return self._p(".model.resume")

    @property
    def train_run(self) -> str:
        return self._p("model", "run.json")

    @property
    def report(self) -> str:
        return self._p("report.html")

    # per slide
    def tiles(self, slide: str) -> str:
        return self._p("tiles", slide)

    def tissue_qc(self, slide: str) -> str:
        return self._p("tiles", slide, "qc.png")

    def mosaic(self, slide: str) -> str:
        return self._p("mosaics", f"{slide}.ome.zarr")

    def mosaic_meta(self, slide: str) -> str:
        return self._p("mosaics", f"{slide}.run.json")

    def geojson(self, slide: str) -> str:
        return self._p("geojson", f"{slide}{self.geojson_suffix}")

    def overlay(self, slide: str) -> str:
        return self._p("geojson", f"{slide}.overlay.png")

    def export_meta(self, slide: str) -> str:
        return self._p("geojson", f"{slide}.export.json")

    def metrics(self, slide: str) -> str:
        return self._p("evaluate", slide, "metrics.json")

    def metrics_table(self, slide: str) -> str:
        return self._p("evaluate", slide, "metrics.md")

    def export_files(self, slide: str) -> list[str]:
        """The three files `wsi-lpd export` writes for one slide."""
        return [self.geojson(slide), self.overlay(slide), self.export_meta(slide)]

    def finished(self, stage: str, key: str) -> str | None:
        """The output whose presence means the job of ``stage`` for ``key`` finished."""
        return {
            "tile": lambda: self.tiles(key),
            "infer": lambda: self.mosaic_meta(key),
            "export": lambda: self.export_meta(key),
            "evaluate": lambda: self.metrics(key),
            "patches": lambda: self.patch_store,
            "train": lambda: self.model,
            "report": lambda: self.report,
        }.get(stage, lambda: None)()


def stage_sections(config: Mapping[str, Any], stage: str, own: Iterable[str]) -> dict[str, Any]:
    """What ``wsi-lpd <stage> --config`` reads: the stage's section and the shared sections
    (every section that is neither a workflow key in ``own`` nor another stage's)."""
    stages = {*SLIDE_STAGES, *COHORT_STAGES, "synth"}
    own = set(own)
    return {k: v for k, v in config.items() if k == stage or (k not in own and k not in stages)}


def write_stage_config(
    path: str | os.PathLike, sections: Mapping[str, Any], log_path: str | os.PathLike | None = None
) -> Path:
    """Write the sections one stage reads as YAML (atomic); the workflow's per-stage config.
    ``log_path``: a one-line note of what was written (the workflow rule's log)."""
    import yaml

    from wsi_lpd.io import write_text

    plain = json.loads(json.dumps(dict(sections)))
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, allow_unicode=True)
    written = write_text(path, text)
    if log_path is not None:
        write_text(log_path, f"wrote {path}: sections {', '.join(plain)}\n")
    return written


# ---- failure records -----------------------------------------------------------------------


def write_failure_record(
    path: str | os.PathLike,
    stage: str,
    input: str | os.PathLike | None,
    exc: BaseException,
    slide_id: str | None = None,
) -> Path:
    """Write the failure record of a stage that stopped on ``exc`` (JSON, atomic):
    ``{stage, slide_id, input, error_type, message, time}``; ``message`` is the error's one line.
    """
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    record = {
        "stage": stage,
        "slide_id": slide_id,
        "input": None if input is None else os.fspath(input),
        "error_type": type(exc).__name__,
        "message": message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_json(path, record)


def record_failure(
    stage: str,
    input: str | os.PathLike | None,
    exc: BaseException,
) -> Path | None:
    """The CLI boundary's call: write the record where ``$WSI_LPD_FAILURE_RECORD`` says (the
    workflow sets it per job), nothing when it is unset; never raises."""
    target = os.environ.get(FAILURE_RECORD_ENV)
    if not target:
        return None
    try:
        return write_failure_record(target, stage, input, exc)
    except OSError:
        return None


def read_failure_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A failure record, or None when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("message") else None


# ---- contracts -----------------------------------------------------------------------------


def check_checkpoint_classes(checkpoint: str | os.PathLike, classes: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose class list (names, order) differs from the config's
    ``classes`` section; CheckpointError naming both lists."""
    from wsi_lpd.classes import ClassList
    from wsi_lpd.networks.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    try:
        theirs = ClassList.from_dict(ckpt["classes"]).names
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint}: bad classes entry ({exc})") from None
    ours = ClassList.from_dict(dict(classes)).names
    if theirs != ours:
        raise CheckpointError(
            f"{checkpoint}: classes {theirs} differ from the config's classes {ours} "
            "(names and order must match)"
        )
