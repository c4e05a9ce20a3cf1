# Shared by every rule: config and sample-sheet validation, the sample table, path helpers and
# the input/param functions the rules name. No stage logic lives here: rules call `wsi-lpd`.

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

REPO = Path(workflow.basedir)
SCHEMAS = REPO / "snakemake" / "schemas"

validate(config, str(SCHEMAS / "config.schema.yaml"))

RESULTS = os.path.normpath(config["results"])
COHORT = f"{RESULTS}/cohort"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
# The validated config (schema defaults filled in) that every stage reads via `--config`.
CONFIG_COPY = f"{RESULTS}/config.yaml"
DEMO = config["demo_cohort"] is not None
THREADS = config["threads"]

SAMPLE_COLUMNS = ("slide_id", "path", "mpp", "annotations", "truth", "split")
TEXT_COLUMNS = ("slide_id", "path", "annotations", "truth", "split")
FILE_COLUMNS = ("path", "annotations", "truth")
PATH_SEPARATOR = re.compile(r"[\\/]")


def find_cli(name: str) -> str:
    """The `wsi-lpd` executable: on PATH, else beside the Python that runs snakemake."""
    if shutil.which(name):
        return name
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    raise WorkflowError(
        f"config key 'cli': {name!r} is neither on PATH nor beside {sys.executable}; "
        "install the package (pip install -e .) or activate its environment"
    )


def resolve_path(value: str) -> str:
    """A path from the config or the sheet: absolute as given; relative ones from the working
    directory, or from the workflow's folder for files bundled with it (configs/...)."""
    path = Path(os.path.expanduser(str(value)))
    if path.is_absolute() or made_by_workflow(str(path)) or path.exists():
        return os.path.normpath(path)
    bundled = REPO / path
    if bundled.exists():
        return str(bundled)
    return os.path.normpath(path)


def made_by_workflow(path: str) -> bool:
    """True for files the demo rule creates (so they need not exist before the run)."""
    return DEMO and os.path.normpath(path).startswith(COHORT + os.sep)


def _schema_message(exc: WorkflowError) -> str:
    """'line N: column C: problem' from snakemake's data-frame validation error."""
    text = str(exc)
    row = re.search(r"row (\d+)", text)
    where = f"line {int(row.group(1)) + 2}" if row else "a row"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and hasattr(cause, "message") and hasattr(cause, "path"):
        column = ".".join(str(p) for p in cause.path) or "row"
        return f"{where}: column {column}: {cause.message}"
    return text.splitlines()[0] if text else "invalid sample sheet"


def load_samples(sheet: str) -> pd.DataFrame:
    """Read and validate the sample sheet; one row per slide, indexed by slide_id.

    Fails with one message naming the sheet and the problem: missing column, bad slide id,
    duplicate id, a value the schema rejects, or files that do not exist.
    """
    if not os.path.isfile(sheet):
        raise WorkflowError(f"{sheet}: sample sheet not found (config key 'samples')")
    try:
        table = pd.read_csv(
            sheet,
            dtype={c: str for c in TEXT_COLUMNS},
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"{sheet}: not a readable CSV sample sheet ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("slide_id", "path") if c not in table.columns]
    if missing:
        raise WorkflowError(
            f"{sheet}: missing column(s) {', '.join(missing)} "
            f"(required: slide_id, path; optional: mpp, annotations, truth, split)"
        )
    if table.empty:
        raise WorkflowError(f"{sheet}: the sample sheet lists no slides")
    unknown = [c for c in table.columns if c not in SAMPLE_COLUMNS]
    if unknown:
        logger.warning(f"{sheet}: ignoring unknown column(s) {', '.join(unknown)}")
    for i, sid in enumerate(table["slide_id"]):
        if isinstance(sid, str) and PATH_SEPARATOR.search(sid):
            raise WorkflowError(
                f"{sheet}: line {i + 2}: slide_id {sid!r} contains a path separator"
            )
    try:
        validate(table, str(SCHEMAS / "samples.schema.yaml"))
    except WorkflowError as exc:
        raise WorkflowError(f"{sheet}: {_schema_message(exc)}") from None
    duplicated = sorted(set(table.loc[table["slide_id"].duplicated(), "slide_id"]))
    if duplicated:
        raise WorkflowError(f"{sheet}: duplicate slide_id(s) {', '.join(duplicated)}")
    table = table.astype(object).where(table.notna(), None)
    absent = []
    for column in FILE_COLUMNS:
        if column not in table.columns:
            table[column] = None
            continue
        for i, value in enumerate(table[column]):
            if value is None:
                continue
            path = resolve_path(value)
            table.at[i, column] = path
            if not os.path.exists(path) and not made_by_workflow(path):
                absent.append(f"{table.at[i, 'slide_id']}: {column} {path}")
    if absent:
        raise WorkflowError(f"{sheet}: file(s) not found: {'; '.join(absent)}")
    if "mpp" not in table.columns:
        table["mpp"] = None
    return table.set_index("slide_id", drop=False)


SHEET = resolve_path(config["samples"])
SAMPLES = load_samples(SHEET)
SLIDES = list(SAMPLES.index)
TRUTH_SLIDES = [s for s in SLIDES if SAMPLES.at[s, "truth"] is not None]
TRAIN_SLIDES = [
    s for s in SLIDES if SAMPLES.at[s, "annotations"] is not None and SAMPLES.at[s, "split"] != "test"
]

CHECKPOINT = config["train"]["checkpoint"]
if CHECKPOINT:
    MODEL = resolve_path(CHECKPOINT)
    if not os.path.isfile(MODEL):
        raise WorkflowError(f"config key train.checkpoint: {MODEL}: checkpoint not found")
else:
    MODEL = f"{RESULTS}/model/model.pt"
    if not TRAIN_SLIDES:
        raise WorkflowError(
            f"{SHEET}: no slide has annotations outside the test split, so nothing can be "
            "trained; add annotations or set the config key train.checkpoint"
        )
    MODEL_CONFIG = resolve_path(config["train"]["model_config"])
    if not os.path.isfile(MODEL_CONFIG):
        raise WorkflowError(f"config key train.model_config: {MODEL_CONFIG}: file not found")

WSI_LPD = find_cli(config["cli"])
# The project's conda environment file (provenance; see snakemake/README.md).
CONDA_ENV = os.path.abspath(resolve_path(config["conda_env"]))
if not os.path.isfile(CONDA_ENV):
    raise WorkflowError(f"config key conda_env: {CONDA_ENV}: environment file not found")
GEOJSON_SUFFIX = ".geojson.gz" if config["export"].get("gzip") else ".geojson"


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDES),


# ---- paths ---------------------------------------------------------------------------------


def tiles_dir(slide: str) -> str:
    return f"{RESULTS}/tiles/{slide}"


def export_files(slide: str) -> list[str]:
    """The three files `wsi-lpd export` writes for one slide."""
    base = f"{RESULTS}/geojson/{slide}"
    return [f"{base}{GEOJSON_SUFFIX}", f"{base}.overlay.png", f"{base}.export.json"]


def metrics_path(slide: str) -> str:
    return f"{RESULTS}/evaluate/{slide}/metrics.json"


def training_outputs() -> list[str]:
    """The training record beside a model trained here (none when a checkpoint is given)."""
    if CHECKPOINT:
        return []
    return [f"{RESULTS}/model/train_log.csv", f"{RESULTS}/model/curves.png"]


def all_export_files() -> list[str]:
    return [f for s in SLIDES for f in export_files(s)]


def all_metrics() -> list[str]:
    return [metrics_path(s) for s in TRUTH_SLIDES]


def final_outputs() -> list[str]:
    """Everything `rule all` asks for."""
    return [*all_export_files(), *all_metrics(), MODEL, *training_outputs(), f"{RESULTS}/report.html"]


def demo_outputs() -> list[str]:
    """The sheet's files that lie in the demo cohort folder (what `wsi-lpd synth` must make)."""
    paths = sorted(
        {
            os.path.normpath(v)
            for c in FILE_COLUMNS
            for v in SAMPLES[c]
            if v is not None and made_by_workflow(v)
        }
    )
    if not paths:
        raise WorkflowError(
            f"{SHEET}: demo_cohort is set but no file of the sheet lies under {COHORT}/"
        )
    return paths


# ---- input and param functions named by the rules ------------------------------------------


ZARR_ROOT = "zarr.json"


def store_of(path: str) -> str:
    """The zarr store whose root `zarr.json` stands for it in the DAG."""
    return os.path.dirname(path)


def mosaic_store(wildcards, input) -> str:
    return store_of(input.mosaic)


def patch_store(wildcards, input) -> str:
    return store_of(input.patches)


def output_store(wildcards, output) -> str:
    return store_of(output.store)


def output_dir(wildcards, output) -> str:
    """The folder the job's outputs go to (the stage's `--out`); a store counts as its folder."""
    dirs = [
        store_of(store_of(f)) if os.path.basename(f) == ZARR_ROOT else os.path.dirname(f)
        for f in output
    ]
    return os.path.commonpath(dirs)


def slide_file(wildcards) -> str:
    return SAMPLES.at[wildcards.slide, "path"]


def truth_file(wildcards) -> str:
    return SAMPLES.at[wildcards.slide, "truth"]


def slide_mpp_flag(wildcards) -> str:
    """`--slide-mpp X` when the sheet overrides the slide's pixel size, else nothing."""
    mpp = SAMPLES.at[wildcards.slide, "mpp"]
    return "" if mpp is None else f"--slide-mpp {float(mpp)!r}"


def train_tiles() -> list[str]:
    return [tiles_dir(s) for s in TRAIN_SLIDES]


def train_annotations() -> list[str]:
    return [SAMPLES.at[s, "annotations"] for s in TRAIN_SLIDES]


def train_truths() -> list[str]:
    """Ground-truth masks of the training slides (patch masks for validation), all or none."""
    truths = [SAMPLES.at[s, "truth"] for s in TRAIN_SLIDES]
    return truths if all(t is not None for t in truths) else []


def repeated_flag(flag: str, values: list[str]) -> str:
    """`--flag a --flag b` (typer list options take one value per flag)."""
    return " ".join(f"{flag} {shlex.quote(str(v))}" for v in values)


def train_flags() -> str:
    """Optional `wsi-lpd train` overrides from the workflow config."""
    max_iters = config["train"]["max_iters"]
    return "" if max_iters is None else f"--max-iters {int(max_iters)}"


def demo_flags() -> str:
    """`wsi-lpd synth` flags for the demo cohort."""
    demo = config["demo_cohort"]
    flags = (
        f"--n-slides {demo['n_slides']} --width-px {demo['width_px']} "
        f"--height-px {demo['height_px']} --mpp {demo['mpp']} --seed {demo['seed']} "
        f"--prefix {demo['prefix']}"
    )
    return flags + (" --add-cmu" if demo["add_cmu"] else "")


# ---- run-level helpers (onstart / onerror) -------------------------------------------------


def write_config_copy() -> None:
    """Write the validated config to CONFIG_COPY for the stages; untouched when unchanged."""
    plain = json.loads(json.dumps(dict(config)))
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, allow_unicode=True)
    target = Path(CONFIG_COPY)
    if target.is_file() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".config.", suffix=".partial")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, target)


def report_command(out: str) -> list[str]:
    """The `wsi-lpd report` call (the report rule runs the same)."""
    return [
        WSI_LPD, "report", "--results", RESULTS, "--samples", SHEET, "--model", MODEL,
        "--out", out, "--config", CONFIG_COPY,
    ]  # fmt: skip


def report_after_error() -> None:
    """After a failed run (e.g. with --keep-going) still write the report, listing failures."""
    out = f"{RESULTS}/report.html"
    logger.warning(f"some jobs failed; writing {out} with the failed slides")
    write_config_copy()
    done = subprocess.run(report_command(out), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        logger.warning(f"could not write {out}: {done.stderr.strip().splitlines()[-1:]}")
