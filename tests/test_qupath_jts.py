"""QuPath reads GeoJSON with JTS: our export must parse with GeoJsonReader and pass IsValidOp.

Needs Java (``java``, ``javac``) and Debian's ``libjts-java`` jars (``apt-get install -y
libjts-java``); skipped with the reason when they are absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.cli.app import app as cli_app
from wsi_lpd.formats.mosaic import write_mosaic

JAR_DIR = Path("/usr/share/java")
JARS = ("jts-core.jar", "jts-io-common.jar", "json-simple.jar")
SOURCE = Path(__file__).parent / "jts" / "ValidateGeoJson.java"
BG = BCSS_CLASSES.background_index


def _missing() -> str | None:
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH"
    absent = [j for j in JARS if not (JAR_DIR / j).is_file()]
    if absent:
        return f"{', '.join(absent)} not in {JAR_DIR} (apt-get install -y libjts-java)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory):
    """Compile ValidateGeoJson.java; return a function running it on a file → (rc, output)."""
    build = tmp_path_factory.mktemp("jts")
    classpath = ":".join(str(JAR_DIR / j) for j in JARS)
    subprocess.run(
        ["javac", "-d", str(build), "-cp", classpath, str(SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )

    def run(path: Path) -> tuple[int, str]:
        proc = subprocess.run(
            ["java", "-cp", f"{build}:{classpath}", "ValidateGeoJson", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc.returncode, proc.stdout + proc.stderr

    return run


def _noisy_labels(height: int = 256, width: int = 320, seed: int = 3) -> np.ndarray:
    """Smooth random classes plus single-pixel noise: diagonal contacts, tiny holes, slivers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / 40.0
    fields = [np.sin(yy * a + xx * b + c) for a, b, c in rng.uniform(0.3, 2.0, (BG + 1, 3))]
    lab = np.argmax(np.stack(fields), axis=0).astype(np.uint8)
    noise = rng.random(lab.shape) < 0.02
    lab[noise] = rng.integers(0, BG + 1, noise.sum())
    return lab


def test_checker_rejects_invalid_geometry(validator, tmp_path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text(
        '{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},'
        '"geometry":{"type":"Polygon","coordinates":[[[0,0],[10,10],[10,0],[0,10],[0,0]]]}}]}'
    )
    rc, out = validator(bad)
    assert rc == 1 and "Self-intersection" in out


@pytest.mark.parametrize("flags", [[], ["--per-class", "--gzip", "--subtract-bounds"]])
def test_export_is_valid_for_jts(validator, tmp_path, flags) -> None:
    lab = _noisy_labels()
    probs = np.zeros((BG + 1, *lab.shape), dtype=np.uint8)
    np.put_along_axis(probs, lab[None].astype(np.int64), 255, axis=0)
    mosaic = write_mosaic(
        tmp_path / "s2.ome.zarr",
        probs,
        classes=BCSS_CLASSES,
        mpp=4.0,
        slide_mpp=0.25,
        level0_width=lab.shape[1] * 16,
        level0_height=lab.shape[0] * 16,
        slide_id="s2",
        bounds=(123, 45, 5000, 4000),
    )
    out = tmp_path / "out"
    args = [str(mosaic), "--out", str(out), "--block-px", "64", "--min-area-um2", "0", *flags]
    res = CliRunner().invoke(cli_app, ["export", *args])
    assert res.exit_code == 0, res.output
    geojson = next(out.glob("s2.geojson*"))
    rc, report = validator(geojson)
    assert rc == 0, report
    n = int(report.split("features=")[1].split()[0])
    if "--per-class" in flags:
        assert n == BG  # one MultiPolygon per foreground class
    else:
        assert n > 10 * BG  # the noise makes many components
    assert f"valid={n}" in report


def test_artefacts_geojson_is_valid_for_jts(validator, tmp_path) -> None:
    # artefact masks traced as the tile stage traces them (noise: diagonal contacts, holes)
    from wsi_lpd.slide.artefacts import write_artefacts_geojson_into
    from wsi_lpd.slide.geometry import polygonize

    lab = _noisy_labels()
    kinds = ("pen", "blur", "fold", "bubble")
    polygons = {k: polygonize(lab == i, (16.0, 16.0)) for i, k in enumerate(kinds)}
    path = tmp_path / "artefacts.geojson"
    n = write_artefacts_geojson_into(path, polygons, 0.25)
    rc, report = validator(path)
    assert rc == 0, report
    assert n > 10 * len(kinds) and f"valid={n}" in report
