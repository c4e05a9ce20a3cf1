"""report.html in a real browser (headless Chromium): every image loads, no console errors, and
the page renders to a screenshot that is not blank. Skipped when Chromium is not installed
(`.ci/run` installs Debian's `chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_lpd.errors import SlideReadError
from wsi_lpd.workflow.cohort import ResultsLayout, read_sample_sheet, write_failure_record
from wsi_lpd.workflow.report import collect_report, render_html

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio")

# Injected first into <head> of a copy of the page: records every error event (scripts,
# resources; capture phase) and console.error call, and after `load` writes what it found, with
# each image's load state, into a <pre id="browser-check"> that --dump-dom prints.
CHECKER = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target || {};
    errors.push((t.tagName ? t.tagName + " " + (t.src || t.href || "") : "") + " " +
                (e.message || "resource failed"));
  }, true);
  var consoleError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (img) {
      return {alt: img.alt, complete: img.complete, width: img.naturalWidth};
    });
    var pre = document.createElement("pre");
    pre.id = "browser-check";
    pre.textContent = JSON.stringify({images: images, errors: errors});
    document.body.appendChild(pre);
  });
})();
</script>"""


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize(size, Image.NEAREST).save(path)


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    """A demo-like report: two finished slides (overlay, QC, areas, scores), one failed slide,
    a trained model with curves and a training log that collapsed."""
    layout = ResultsLayout(str(tmp_path / "results"))
    sheet = tmp_path / "samples.csv"
    sheet.write_text(
        "slide_id,path,annotations,truth,split\n"
        "demo_00,demo_00.tiff,demo_00.geojson,demo_00.mask.tiff,train\n"
        "demo_02,demo_02.tiff,,demo_02.mask.tiff,test\n"
        "broken,broken.svs,,,test\n"
    )
    for i, sid in enumerate(("demo_00", "demo_02")):
        _image(Path(layout.overlay(sid)), (400, 300), i)
        _image(Path(layout.tissue_qc(sid)), (400, 300), 10 + i)
        Path(layout.export_meta(sid)).write_text(
            json.dumps(
                {"features": 12, "classes": {"TUM": {"area_um2": 2.5e6}, "STR": {"area_um2": 1e6}}}
            )
        )
        Path(layout.metrics(sid)).parent.mkdir(parents=True)
        Path(layout.metrics(sid)).write_text(
            json.dumps({"protocol": "lpd", "pooled": {"miou": 0.8 + 0.02 * i, "mdice": 0.88}})
        )
    write_failure_record(
        layout.failure_record("tile", "broken"), "tile", "broken.svs",
        SlideReadError("broken.svs: cannot read the slide (truncated JPEG tile)"),
    )  # fmt: skip
    _image(Path(layout.curves), (800, 300), 20)
    Path(layout.model).write_bytes(b"\0" * 1024)
    Path(layout.train_log).write_text(
        "iteration,total,val_mIoU\n"
        + "".join(f"{i},{1 - i / 200},{0.92 if i <= 60 else 0.68}\n" for i in range(15, 121, 15))
    )
    data = collect_report(
        layout,
        read_sample_sheet(sheet, check_files=False),
        layout.model,
        {"title": "wsi-lpd demo", "image_max_px": 256, "embed_qc": True},
        {"TUM": (200, 0, 0), "STR": (255, 165, 0), "BACK": (255, 255, 255)},
    )
    assert data.warnings  # the collapsed validation is flagged
    out = Path(layout.report)
    out.write_text(render_html(data))
    return out


def test_report_in_chromium(report_html: Path, tmp_path: Path) -> None:
    page = report_html.read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", checked.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check did not run: {dom.stdout[-500:]} {dom.stderr[-1000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    expected = len(re.findall(r"<img ", page))
    assert expected == 5  # 2 overlays, 2 QC images, the training curves
    assert len(result["images"]) == expected
    broken = [i["alt"] for i in result["images"] if not i["complete"] or i["width"] == 0]
    assert broken == []

    shot = tmp_path / "report.png"
    run = _chromium(
        f"--screenshot={shot}", "--window-size=1400,2400", "--enable-logging=stderr", "--v=0",
        report_html.as_uri(),
    )  # fmt: skip
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Refused to" in ln]
    assert console == []
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1400)
    assert pixels.std() > 10  # text, tables and images, not a blank page
