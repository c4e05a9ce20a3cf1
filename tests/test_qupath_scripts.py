"""The QuPath scripts (qupath/*.groovy): Groovy syntax, and their slide ids against wsi-lpd's rules.

QuPath itself cannot run here: the scripts are parsed (not compiled against QuPath's classes) by
Debian's `groovy`, and their slide-id function is run on tricky image names, then the file names
travel QuPath export -> sample sheet -> workflow results -> QuPath import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wsi_lpd.slide.reader import SLIDE_ID as SHEET_SLIDE_ID
from wsi_lpd.slide.reader import default_slide_id, slide_id_from_name, validate_slide_id

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "qupath" / "export_annotations.groovy", REPO / "qupath" / "import_results.groovy"]
BLOCK = re.compile(r"// --- slide id:.*?// --- end slide id[^\n]*\n", re.S)
GROOVY = shutil.which("groovy")

# Image names as QuPath shows them (file names, multi-series names, odd characters).
NAMES = [
    "CMU-1.svs",
    "CMU-1-Small-Region.svs",
    "case 12 (HE).ndpi",
    "slide#3.mrxs",
    "a+b_c-d.tif",
    "1.2.3.mrxs",
    "TCGA-AA-3518-01Z-00-DX1.9F7AFC4B.svs",
    "tumour.ome.tiff",
    "TUMOUR.OME.TIF",
    "plate.ome.zarr",
    "no_extension",
    "trailing.",
    ".svs",
    "_hidden.svs",
    "--x.svs",
    "Ünïcödé slide.svs",
    "emoji 😀.svs",
    "image.vsi - 20x",
    "...",
    "a b\tc.svs",
    # the awkward names of a real cohort (issue 19)
    "(1) first.svs",
    "case 12 (HE).svs",
    "a, b.svs",
    "é.svs",
    "café au lait.svs",
    "日本語.svs",
    "a&b.svs",
    "#7.svs",
    "x.ome.tiff",
]


python_slide_id = slide_id_from_name  # the one Python implementation (wsi-lpd samples uses it)


def test_python_rule_on_awkward_names() -> None:
    expected = {
        "(1) first.svs": "1__first",
        "case 12 (HE).svs": "case_12__HE_",
        "a, b.svs": "a__b",
        "日本語.svs": "slide",
        "a&b.svs": "a_b",
        "#7.svs": "7",
        "x.ome.tiff": "x",
        "trailing.": "trailing.",
        ".svs": "svs",
        "image.vsi - 20x": "image",
    }
    assert {n: python_slide_id(n) for n in expected} == expected


def test_both_scripts_use_the_original_image_name_and_keep_existing_files() -> None:
    for script in SCRIPTS:
        text = script.read_text(encoding="utf-8")
        assert "getOriginalImageName()" in text and ".getImageName()" not in text, script.name
    export = SCRIPTS[0].read_text(encoding="utf-8")
    assert "boolean OVERWRITE = false" in export and "!OVERWRITE" in export
    assert "'.geojson.gz'" in SCRIPTS[1].read_text(encoding="utf-8")


def test_both_scripts_share_one_slide_id_function() -> None:
    blocks = [BLOCK.findall(p.read_text(encoding="utf-8")) for p in SCRIPTS]
    assert all(len(b) == 1 for b in blocks), "each script holds the slide-id block once"
    assert blocks[0] == blocks[1]


def test_python_rule_gives_valid_ids_equal_to_wsi_lpd_defaults_where_already_valid() -> None:
    pattern = SHEET_SLIDE_ID  # what the sample sheet accepts (wsi_lpd.workflow.cohort)
    for name in NAMES:
        sid = python_slide_id(name)
        assert validate_slide_id(sid) == sid and pattern.fullmatch(sid), name
        try:
            default = validate_slide_id(default_slide_id(name))
        except ValueError:
            continue
        assert sid == default, name  # a valid default id is kept as it is


def java_env() -> dict[str, str]:
    """Debian's groovy launcher needs JAVA_HOME when /usr/lib/jvm/default-java is absent."""
    env = dict(os.environ)
    java = shutil.which("java")
    if not env.get("JAVA_HOME") and java:
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parents[1])
    return env


@pytest.mark.skipif(GROOVY is None, reason="groovy is not installed (apt-get install groovy)")
def test_groovy_parses_the_scripts_and_names_files_as_the_workflow_does(tmp_path: Path) -> None:
    broken = tmp_path / "broken.groovy"
    broken.write_text("def x = { ->\nprintln 'unclosed'\n")
    names_file, out_file = tmp_path / "names.txt", tmp_path / "ids.txt"
    names_file.write_text("\n".join(NAMES), encoding="utf-8")
    block = BLOCK.search(SCRIPTS[0].read_text(encoding="utf-8"))
    assert block is not None
    driver = tmp_path / "driver.groovy"
    driver.write_text(
        "import org.codehaus.groovy.control.CompilationUnit\n"
        "import org.codehaus.groovy.control.Phases\n"
        "for (String p : args.drop(2)) {\n"
        "    def unit = new CompilationUnit()\n"
        "    unit.addSource(new File(p))\n"
        '    try { unit.compile(Phases.CONVERSION); println "PARSED ${p}" }\n'
        '    catch (Exception e) { println "ERROR ${p}" }\n'
        "}\n"
        "def names = new File(args[0]).getText('UTF-8').split('\\n')\n"
        "new File(args[1]).withWriter('UTF-8') { w ->\n"
        "    names.each { w.write(slideId(it) + '\\n') }\n"
        "}\n" + block.group(0),
        encoding="utf-8",
    )
    run = subprocess.run(
        [GROOVY, str(driver), str(names_file), str(out_file), *map(str, SCRIPTS), str(broken)],
        capture_output=True,
        text=True,
        env=java_env(),
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert [line.split()[0] for line in run.stdout.splitlines()] == ["PARSED", "PARSED", "ERROR"]
    groovy_ids = out_file.read_text(encoding="utf-8").splitlines()
    assert groovy_ids == [python_slide_id(n) for n in NAMES]

    # QuPath export -> sample sheet -> workflow results -> QuPath import: the same file names.
    exported = {n: f"{sid}.geojson" for n, sid in zip(NAMES, groovy_ids, strict=True)}
    sheet = {sid: validate_slide_id(sid) for sid in groovy_ids}  # the sheet's slide_id column
    results = {sid: f"geojson/{sid}.geojson" for sid in sheet}  # common.smk export_files()
    for name, sid in zip(NAMES, groovy_ids, strict=True):
        assert exported[name] == Path(results[sheet[sid]]).name
