"""`wsi-lpd report` on a fabricated results folder: slides, areas, timings, failures, no links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pipelines import report
from wsi_lpd.report import error_line, read_benchmark_s, svg_line_chart

ERROR = "wsi-lpd: error: slides/broken.svs: cannot read the slide (truncated JPEG tile)"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(report.command)
    return app


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _benchmark(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        f"{seconds}\t0:00:{int(seconds):02d}\t100.1\t200.2\t90\t95\t0\t1\t50\t{seconds}\n"
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder: `good` finished, `broken` failed at tiling, `pending` never ran."""
    res = tmp_path / "results"
    _png(res / "tiles" / "good" / "qc.png", (200, 180, 200))
    _png(res / "geojson" / "good.overlay.png", (200, 0, 0))
    (res / "geojson" / "good.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (res / "geojson" / "good.export.json").write_text(
        json.dumps(
            {
                "stage": "export",
                "inputs": {"mpp": 8.0},
                "features": 7,
                "classes": {
                    "TUM": {"components": 3, "area_um2": 1234567.0, "mean_probability": 0.8},
                    "STR": {"components": 4, "area_um2": 250000.0, "mean_probability": 0.7},
                },
            }
        )
    )
    (res / "evaluate" / "good").mkdir(parents=True)
    (res / "evaluate" / "good" / "metrics.json").write_text(
        json.dumps(
            {
                "protocol": "lpd",
                "pooled": {
                    "miou": 0.6123,
                    "mdice": 0.7,
                    "fwiou": 0.65,
                    "pixel_accuracy": 0.8,
                    "per_class": {"TUM": {"iou": 0.71, "dice": 0.8}, "STR": {"iou": 0.5}},
                },
            }
        )
    )
    _benchmark(res / "benchmarks" / "tile" / "good.tsv", 12.5)
    _benchmark(res / "benchmarks" / "infer" / "good.tsv", 95.0)
    _benchmark(res / "benchmarks" / "train" / "_cohort.tsv", 130.0)
    (res / "logs" / "tile").mkdir(parents=True)
    (res / "logs" / "tile" / "broken.log").write_text(
        "12:00:00 INFO wsi_lpd.tile: opening slides/broken.svs\n"
        "wsi-lpd: error: an older line\n"
        f"{ERROR}\n"
    )
    (res / "logs" / "tile" / "good.log").write_text("12:00:00 INFO wsi_lpd.tile: 42 tiles\n")
    model = res / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"\0" * 2048)
    _png(model / "curves.png", (255, 255, 255), (100, 40))
    (model / "train_log.csv").write_text("iteration,total,cls\n2,1.5,1.0\n4,0.9,0.7\n")
    (model / "run.json").write_text(json.dumps({"iterations": 4, "best_val_mIoU": 0.55}))
    return res


@pytest.fixture
def sheet(tmp_path: Path) -> Path:
    path = tmp_path / "samples.csv"
    path.write_text(
        "slide_id,path,mpp,annotations,truth,split\n"
        "good,slides/good.tiff,,good.geojson,good.mask.tiff,train\n"
        "broken,slides/broken.svs,0.25,,,\n"
        "pending,slides/pending.svs,,,,test\n"
    )
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "report:\n  title: Test cohort <b>\n  image_max_px: 64\n"
        "classes:\n  foreground:\n    - {name: TUM, color: [200, 0, 0]}\n"
        "    - {name: STR, color: [255, 165, 0]}\n"
        "  background: {name: BACK, color: [255, 255, 255]}\n"
    )
    return path


def test_report_page(results: Path, sheet: Path, config: Path) -> None:
    out = results / "report.html"
    run = CliRunner().invoke(
        _app(),
        ["--results", str(results), "--samples", str(sheet), "--out", str(out),
         "--config", str(config)],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "Test cohort &lt;b&gt;" in page  # escaped title
    for sid in ("good", "broken", "pending"):
        assert f'id="slide-{sid}"' in page
    # class areas in mm² (1 234 567 µm² -> 1.235 mm²), features, mIoU
    assert "1.235" in page and "0.250" in page
    assert "TUM mm²" in page
    assert "61.2" in page and "71.0" in page
    # wall time per stage and slide, the cohort-level training job
    assert "12.5 s" in page and "1.6 min" in page and "2.2 min" in page
    # the failed slide with its (last) error line and its log
    assert ERROR in page and "an older line" not in page
    assert 'class="failed">failed' in page
    assert str(results / "logs" / "tile" / "broken.log") in page
    assert "<code>pending</code>" in page  # listed as not finished
    # training record
    assert "best_val_mIoU" in page and "final loss" in page
    # self-contained: every image embedded, nothing fetched from elsewhere
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # overlay, tissue QC, training curves
    assert all(re.match(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+$", s) for s in sources)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    assert not [p for p in results.iterdir() if ".partial" in p.name]


def test_report_defaults_to_results_folder(results: Path, sheet: Path) -> None:
    run = CliRunner().invoke(_app(), ["--results", str(results), "--samples", str(sheet)])
    assert run.exit_code == 0, run.output
    assert "wsi-lpd report" in (results / "report.html").read_text()


def test_report_rejects_unknown_config_key(results: Path, sheet: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("report:\n  titel: typo\n")
    run = CliRunner().invoke(
        _app(), ["--results", str(results), "--samples", str(sheet), "--config", str(bad)]
    )
    assert run.exit_code == 1
    assert "wsi-lpd: error:" in run.output and "titel" in run.output and str(bad) in run.output
    assert not (results / "report.html").exists()


def test_report_missing_sheet_is_one_line(results: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    run = CliRunner().invoke(_app(), ["--results", str(results), "--samples", str(missing)])
    assert run.exit_code == 1
    assert f"wsi-lpd: error: {missing}: sample sheet not found" in run.output


def test_error_line_and_benchmark(tmp_path: Path) -> None:
    assert error_line("INFO ok\nwsi-lpd: error: a\nwsi-lpd: error: b\n") == "wsi-lpd: error: b"
    crash = "Traceback (most recent call last):\n  File x\nValueError: boom\n"
    assert error_line(crash) == "ValueError: boom"
    assert error_line("INFO all good\n") is None
    boxed = (
        "Usage: x [OPTIONS]\n╭─ Error ──────╮\n│ No such option: --add-cmu   │\n╰──────────────╯\n"
    )
    assert error_line(boxed) == "usage error: No such option: --add-cmu"
    assert error_line("Usage: x\nError: Missing option '--out'.\n") == (
        "usage error: Missing option '--out'."
    )
    tsv = tmp_path / "b.tsv"
    tsv.write_text("s\th:m:s\n2.0\t0:00:02\n4.0\t0:00:04\n")
    assert read_benchmark_s(tsv) == pytest.approx(3.0)
    tsv.write_text("h:m:s\n0:00:02\n")
    assert read_benchmark_s(tsv) is None
    assert "<polyline" in svg_line_chart([0, 1, 2], [3.0, 2.0, 1.0], "loss")
