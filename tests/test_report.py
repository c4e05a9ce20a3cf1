"""`wsi-lpd report` on a fabricated results folder: slides, areas, timings, failures, no links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from wsi_lpd.cli.app import app as cli_app
from wsi_lpd.errors import SlideReadError
from wsi_lpd.workflow.cohort import write_failure_record
from wsi_lpd.workflow.report import read_benchmark_s, svg_line_chart, training_warnings

ERROR = "slides/broken.svs: cannot read the slide (truncated JPEG tile)"


def _invoke(*args: str):
    """``wsi-lpd report ARGS`` through the real CLI (its one error boundary)."""
    return CliRunner().invoke(cli_app, ["report", *args])


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
    (res / "logs" / "tile" / "broken.log").write_text("Traceback ... a line nobody parses\n")
    write_failure_record(
        res / "logs" / "tile" / "broken.failure.json", "tile", "slides/broken.svs",
        SlideReadError(ERROR),
    )  # fmt: skip
    # a stale record of a job that later finished is not a failure
    (res / "tiles" / "good" / "tiles.npz").write_bytes(b"x")
    write_failure_record(
        res / "logs" / "tile" / "good.failure.json", "tile", "good", OSError("old failure")
    )
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
    run = _invoke(
        *["--results", str(results), "--samples", str(sheet), "--out", str(out),
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
    assert ERROR in page and "SlideReadError" in page and "old failure" not in page
    assert "nobody parses" not in page
    assert 'class="failed">failed' in page
    assert str(results / "logs" / "tile" / "broken.log") in page
    assert "<code>pending</code>" in page  # listed as not finished
    assert "Training trouble" not in page
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
    run = _invoke(*["--results", str(results), "--samples", str(sheet)])
    assert run.exit_code == 0, run.output
    assert "wsi-lpd report" in (results / "report.html").read_text()


def test_report_rejects_unknown_config_key(results: Path, sheet: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("report:\n  titel: typo\n")
    run = _invoke(*["--results", str(results), "--samples", str(sheet), "--config", str(bad)])
    assert run.exit_code == 1
    assert (
        "wsi-lpd report: error:" in run.output and "titel" in run.output and str(bad) in run.output
    )
    assert not (results / "report.html").exists()


def test_report_missing_sheet_is_one_line(results: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    run = _invoke(*["--results", str(results), "--samples", str(missing)])
    assert run.exit_code == 1
    assert f"wsi-lpd report: error: {missing}: sample sheet not found" in run.output


def test_benchmark_and_chart(tmp_path: Path) -> None:
    tsv = tmp_path / "b.tsv"
    tsv.write_text("s\th:m:s\n2.0\t0:00:02\n4.0\t0:00:04\n")
    assert read_benchmark_s(tsv) == pytest.approx(3.0)
    tsv.write_text("h:m:s\n0:00:02\n")
    assert read_benchmark_s(tsv) is None
    assert "<polyline" in svg_line_chart([0, 1, 2], [3.0, 2.0, 1.0], "loss")


def _rows(losses: list[float], val: dict[int, float]) -> list[dict[str, float]]:
    rows = []
    for i, loss in enumerate(losses):
        it = 5 * (i + 1)
        row = {"iteration": float(it), "total": loss}
        if it in val:
            row["val_mIoU"] = val[it]
        rows.append(row)
    return rows


def test_training_warnings() -> None:
    steady = [1.0 - 0.05 * i for i in range(16)]
    # the demo's failure: 0.92 until iteration 60, 0.68 from iteration 75 on
    collapse = _rows(steady, {15: 0.8, 30: 0.9, 60: 0.92, 75: 0.68, 80: 0.68})
    (only,) = training_warnings(collapse)
    assert "Validation collapse" in only and "0.92" in only and "iteration 75" in only
    recovered = _rows(steady, {30: 0.9, 60: 0.92, 75: 0.68, 80: 0.85})
    assert training_warnings(recovered) == []
    nan = _rows([1.0, 0.8, float("nan")], {})
    assert "not finite from iteration 15" in training_warnings(nan)[0]
    rising = _rows([1.0, 0.5, 0.4, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2], {})
    assert "rose" in training_warnings(rising)[0]
    (untrained,) = training_warnings(_rows(steady, {}), ["NEC"])
    assert "never trained" in untrained and "NEC" in untrained


def test_report_flags_training_trouble(results: Path, sheet: Path) -> None:
    (results / "model" / "train_log.csv").write_text(
        "iteration,total,val_mIoU\n"
        + "".join(f"{i},{1 - i / 200},{0.9 if i <= 60 else 0.6}\n" for i in range(10, 101, 10))
    )
    run = _invoke(*["--results", str(results), "--samples", str(sheet)])
    assert run.exit_code == 0, run.output
    page = (results / "report.html").read_text()
    top = page[: page.index('<h2 id="slides">')]
    assert "Training trouble" in top and "Validation collapse" in top


def test_report_lists_artefacts_per_slide(results: Path, sheet: Path, config: Path) -> None:
    (results / "tiles" / "good" / "run.json").write_text(
        json.dumps(
            {
                "stage": "tile",
                "artefacts": {
                    "pen": {"class": "Artefact: pen", "color": [230, 0, 230], "area_mm2": 0.0421},
                    "blur": {"class": "Artefact: blur", "color": [255, 200, 0], "area_mm2": 0.0},
                },
            }
        )
    )
    out = results / "report.html"
    run = _invoke(
        *["--results", str(results), "--samples", str(sheet), "--out", str(out),
         "--config", str(config)],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    page = out.read_text()
    assert "Artefact: pen mm²" in page and "Artefact: blur mm²" in page
    assert "0.042" in page and "rgb(230,0,230)" in page
