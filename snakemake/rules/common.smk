# Shared by every rule: the validated config, the cohort (wsi_lpd.workflow.cohort: sample sheet, slide
# roles, results layout) and the input/param functions the rules name. No stage logic lives here:
# rules call `wsi-lpd`.

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from wsi_lpd.workflow.cohort import (
    COHORT_KEY,
    FAILURE_RECORD_ENV,
    ResultsLayout,
    read_sample_sheet,
    resolve_path,
    stage_sections,
    write_stage_config,
)
from wsi_lpd.workflow.config import WORKFLOW_KEYS, WorkflowConfig, parse_section
from wsi_lpd.workflow.preflight import preflight
from wsi_lpd.errors import WsiLpdError


envvars:
    "PATH",  # the jobs find `wsi-lpd` on it (see put_cli_on_path)


REPO = Path(workflow.basedir)
CONFIG_SOURCE = " + ".join(map(str, workflow.overwrite_configfiles)) or str(
    REPO / "configs" / "demo.yaml"
)


def stop(*lines: str) -> None:
    """End the run before any job: each problem one line, no traceback."""
    for line in lines:
        logger.error(line)
    sys.exit(1)


try:
    SETTINGS = parse_section(WorkflowConfig, config, CONFIG_SOURCE)
except WsiLpdError as exc:
    stop(str(exc))
config.update(SETTINGS.model_dump(mode="json", by_alias=True))

L = ResultsLayout(
    os.path.normpath(config["results"]),
    ".geojson.gz" if config["export"].get("gzip") else ".geojson",
)
RESULTS = L.root
DEMO = config["demo_cohort"] is not None
THREADS = config["threads"]
STAGES = ("synth", "tile", "patches", "infer", "export", "evaluate", "report")


def put_cli_on_path(name: str = "wsi-lpd") -> None:
    """Make the rules' `wsi-lpd` runnable: on PATH already, else the folder beside the Python
    that runs snakemake (a venv used without activating it) goes first on the jobs' PATH.

    The rules' commands say plain `wsi-lpd`, so how it was found never reruns a finished job.
    """
    if shutil.which(name):
        return
    folder = Path(sys.executable).parent
    if not os.access(folder / name, os.X_OK):
        stop(
            f"{name!r} is neither on PATH nor beside {sys.executable}; install the package "
            "(pip install -e .) or activate its environment"
        )
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


put_cli_on_path()


def check_before_first_job() -> None:
    """wsi_lpd.workflow.preflight in the main process (not in the jobs, which parse this file
    again): every file of the config and the sheet, the annotations' classes, the devices when
    jobs run on this machine. Problems stop the run, one line each; a slide file that does not
    open only warns (its jobs fail, the others run: --keep-going)."""
    found = preflight(SETTINGS, CONFIG_SOURCE, bundled=[REPO], devices=workflow.local_exec)
    for line in found.notes:
        logger.info(f"annotations: {line}")
    for line in found.unreadable:
        logger.warning(f"{line} (its jobs will fail; the other slides run)")
    if found.problems:
        stop(*found.problems, f"{len(found.problems)} problem(s) before the first job; "
             f"`wsi-lpd config --check {CONFIG_SOURCE}` checks again")  # fmt: skip


if workflow.is_main_process:
    check_before_first_job()
try:
    SHEET = read_sample_sheet(
        resolve_path(config["samples"], [REPO]),
        search_dirs=[REPO],
        made_by_workflow=[L.cohort_dir] if DEMO else [],
    )
except WsiLpdError as exc:
    stop(str(exc))
SLIDES = SHEET.slide_ids
TRUTH_SLIDES = [s.slide_id for s in SHEET.evaluated]
TRAIN_SLIDES = [s.slide_id for s in SHEET.training]

# The checkpoint's classes, the training YAML, the conda file: checked by check_before_first_job.
CHECKPOINT = config["train"]["checkpoint"]
MODEL = resolve_path(CHECKPOINT, [REPO]) if CHECKPOINT else L.model
if not CHECKPOINT:
    MODEL_CONFIG = resolve_path(config["train"]["model_config"], [REPO])

# The project's conda environment file (provenance; see snakemake/README.md).
CONDA_ENV = os.path.abspath(resolve_path(config["conda_env"], [REPO]))


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDES),
    stage="|".join(STAGES),


# ---- input and param functions named by the rules ------------------------------------------


def root_of(store: str) -> str:
    """The store's root metadata `zarr.json`, which stands for the store in the DAG."""
    return f"{store}/zarr.json"


def store_of(path: str) -> str:
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
        store_of(store_of(f)) if os.path.basename(f) == "zarr.json" else os.path.dirname(f)
        for f in output
    ]
    return os.path.commonpath(dirs)


def sample_of(wildcards):
    return SHEET[wildcards.slide]


def slide_file(wildcards) -> str:
    return sample_of(wildcards).path


def truth_file(wildcards) -> str:
    return sample_of(wildcards).truth


def roi_file(wildcards) -> list[str]:
    """The slide's region of interest (GeoJSON) when the sheet names one."""
    roi = sample_of(wildcards).roi
    return [roi] if roi else []


def roi_flag(wildcards, input) -> str:
    return f"--roi {shlex.quote(input.roi[0])}" if input.roi else ""


def slide_mpp_flag(wildcards) -> str:
    """`--slide-mpp X` when the sheet overrides the slide's pixel size, else nothing."""
    mpp = sample_of(wildcards).mpp
    return "" if mpp is None else f"--slide-mpp {mpp!r}"


def failure_record(stage: str, key: str = "{slide}") -> str:
    """`VAR=path` that makes the stage write its failure record there (wsi_lpd.workflow.cohort)."""
    return f"{FAILURE_RECORD_ENV}={shlex.quote(L.failure_record(stage, key))}"


def train_tiles() -> list[str]:
    return [L.tiles(s) for s in TRAIN_SLIDES]


def train_annotations() -> list[str]:
    return [SHEET[s].annotations for s in TRAIN_SLIDES]


def train_truths() -> list[str]:
    """Ground-truth masks of the training slides (patch masks for validation), all or none."""
    truths = [SHEET[s].truth for s in TRAIN_SLIDES]
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
        f"--height-px {demo['height_px']} --slide-mpp {demo['mpp']} --seed {demo['seed']} "
        f"--prefix {demo['prefix']}"
    )
    return flags + (" --add-cmu" if demo["add_cmu"] else "")


def demo_outputs() -> list[str]:
    """The sheet's files that lie in the demo cohort folder (what `wsi-lpd synth` must make)."""
    prefix = L.cohort_dir + os.sep
    paths = [p for p in SHEET.files() if p.startswith(prefix)]
    if not paths:
        raise WorkflowError(
            f"{SHEET.path}: demo_cohort is set but no file of the sheet lies under {L.cohort_dir}/"
        )
    return paths


def settings_of(wildcards) -> dict:
    """The config sections `wsi-lpd <stage>` reads (tracked: a change reruns that stage)."""
    return stage_sections(config, wildcards.stage, WORKFLOW_KEYS)


def training_outputs() -> list[str]:
    """The training record beside a model trained here (none when a checkpoint is given)."""
    return [] if CHECKPOINT else [L.train_log, L.curves]


def all_export_files() -> list[str]:
    return [f for s in SLIDES for f in L.export_files(s)]


def all_metrics() -> list[str]:
    return [L.metrics(s) for s in TRUTH_SLIDES]


def final_outputs() -> list[str]:
    """Everything `rule all` asks for."""
    return [*all_export_files(), *all_metrics(), MODEL, *training_outputs(), L.report]


# ---- run-level helper (onerror) ------------------------------------------------------------


def report_after_error() -> None:
    """After a failed run (e.g. with --keep-going) still write the report, listing failures."""
    logger.warning(f"some jobs failed; writing {L.report} with the failed slides")
    settings = L.stage_config("report")
    write_stage_config(settings, stage_sections(config, "report", WORKFLOW_KEYS))
    command = [
        "wsi-lpd", "report", "--results", RESULTS, "--samples", SHEET.path,
        "--model", MODEL, "--out", L.report, "--config", settings,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        logger.warning(f"could not write {L.report}: {done.stderr.strip().splitlines()[-1:]}")
