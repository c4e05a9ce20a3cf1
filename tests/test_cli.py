"""The `wsi-lpd` entry point: --version, -v and defaults on every command, info, config, the
progress reporter's log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wsi_lpd import __version__
from wsi_lpd.cli.app import COMMANDS, app
from wsi_lpd.progress import LogProgress
from wsi_lpd.workflow.config import WorkflowConfig, load_workflow_config

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"wsi-lpd {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_verbose_and_shows_defaults(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "--verbose" in result.stdout and "-v" in result.stdout
    if command in ("tile", "synth", "evaluate"):
        assert "[default:" in result.stdout


def test_info_on_the_real_aperio_slide(cmu_slide_path: Path) -> None:
    result = invoke("info", cmu_slide_path, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["vendor"] == "aperio" and info["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert info["dimensions"] == [2220, 2967] and info["objective_power"] == 20
    assert info["levels"][0]["downsample"] == 1 and "thumbnail" in info["associated_images"]
    text = invoke("info", cmu_slide_path)
    assert "µm/px" in text.stdout and "levels:" in text.stdout


def test_config_prints_every_section_with_defaults(tmp_path: Path) -> None:
    result = invoke("config", "--config", ROOT / "configs" / "demo.yaml")
    assert result.exit_code == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert set(WorkflowConfig.model_fields) <= set(effective)
    assert effective["tile"]["tile_mpp"] == 2.0 and effective["tile"]["patch_px"] == 112
    assert effective["tile"]["tissue_mpp"] == 8.0  # a default the file leaves out
    assert effective["threads"]["report"] == 1 and effective["demo_cohort"]["seed"] == 7
    assert load_workflow_config(None).model_dump()["evaluate"]["protocol"] == "lpd"
    defaults = json.loads(invoke("config", "--json").stdout)
    assert defaults["classes"]["background"]["name"] == "BACK"


def test_deprecated_names_still_work_with_a_warning(tmp_path: Path, caplog) -> None:
    cfg = tmp_path / "old.yaml"
    cfg.write_text("tile:\n  mpp: 0.5\n  patch_px: 100\n  overlap_px: 25\nsynth:\n  mpp: 0.25\n")
    with caplog.at_level(logging.WARNING):
        effective = load_workflow_config(cfg).model_dump()
    assert effective["tile"]["tile_mpp"] == 0.5 and effective["tile"]["overlap"] == 0.25
    assert effective["synth"]["slide_mpp"] == 0.25
    assert "tile.mpp (--mpp) is deprecated" in caplog.text
    assert "synth.mpp (--mpp) is deprecated" in caplog.text


def test_progress_logs_every_tenth_without_repeats(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="wsi_lpd.progress"):
        for _ in LogProgress(range(100), desc="tiles", unit="tile"):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and len(set(lines)) == 10
    assert lines[-1].startswith("tiles: 100/100 tile (100 %)") and "tile/s" in lines[-1]


@pytest.mark.parametrize("config", ["demo.yaml", "cohort.example.yaml"])
def test_config_output_loads_back_as_the_same_effective_config(tmp_path: Path, config: str) -> None:
    source = ROOT / "configs" / config
    printed = tmp_path / "printed.yaml"
    printed.write_text(invoke("config", "--config", source).stdout)
    again = invoke("config", printed)  # its own output, fed back
    assert again.exit_code == 0, again.stderr
    assert "model_config:" in printed.read_text() and "model_yaml" not in printed.read_text()
    assert load_workflow_config(printed) == load_workflow_config(source)


def test_info_on_several_slides_prints_each_id_and_the_path_given(
    tmp_path: Path, cmu_slide_path: Path
) -> None:
    links = [tmp_path / "(1) first.svs", tmp_path / "case 12 (HE).svs"]
    for link in links:
        link.symlink_to(cmu_slide_path)
    result = invoke("info", *links, "--json")
    assert result.exit_code == 0, result.stderr
    infos = json.loads(result.stdout)
    assert [i["slide_id"] for i in infos] == ["1__first", "case_12__HE_"]
    assert [i["path"] for i in infos] == [str(p) for p in links]  # not the symlinks' target
    text = invoke("info", *links).stdout
    assert "slide id:   1__first" in text and "slide id:   case_12__HE_" in text


def test_config_check_passes_then_refuses_in_one_line_each(
    tmp_path: Path, cmu_slide_path: Path
) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a b.svs").symlink_to(cmu_slide_path)
    (tmp_path / "a_b.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    made = invoke("samples", tmp_path / "slides", "--annotations", tmp_path, "--out",
                  tmp_path / "samples.csv")  # fmt: skip
    assert made.exit_code == 0, made.stderr
    assert "wrote" in made.stdout and "1 slides, 1 with annotations" in made.stdout
    config = tmp_path / "my.yaml"
    config.write_text(
        "samples: samples.csv\ntrain: {model_config: configs/model/lpd_tiny_test.yaml, "
        "device: cpu}\ninfer: {device: cpu}\n"
    )
    ok = invoke("config", "--check", config)
    assert ok.exit_code == 0, ok.stderr
    assert "OK (1 slides, 1 train the model)" in ok.stdout
    config.write_text(config.read_text().replace("lpd_tiny_test", "nope"))
    bad = invoke("config", "--check", config)
    assert bad.exit_code == 1
    errors = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "train.model_config:" in errors[0] and "nope.yaml" in errors[0]


@pytest.mark.parametrize("command", ["tile", "infer"])
def test_a_file_name_that_is_no_slide_id_is_refused_with_the_flag_to_pass(
    tmp_path: Path, command: str
) -> None:
    slide = tmp_path / "case 12 (HE).svs"
    slide.write_bytes(b"x")  # refused before the file is opened
    args = [command, slide, "--out", tmp_path / "out"]
    result = invoke(*args) if command == "tile" else invoke(*args, "--model", tmp_path / "m.pt")
    assert result.exit_code == 1
    assert "' ' '(' ')' not allowed" in result.stderr
    assert result.stderr.strip().endswith("pass --slide-id case_12__HE_")
