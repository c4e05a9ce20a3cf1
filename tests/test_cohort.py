"""wsi_lpd.workflow.cohort: sample sheet and its validation, slide roles, results layout, failure
records,
the checkpoint's classes; the workflow config models, their generated schema and the commented
example config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import CheckpointError, ConfigError, SlideReadError
from wsi_lpd.networks.checkpoint import FORMAT
from wsi_lpd.workflow.cohort import (
    FAILURE_RECORD_ENV,
    ResultsLayout,
    check_checkpoint_classes,
    read_failure_record,
    read_sample_sheet,
    record_failure,
    stage_sections,
    write_failure_record,
)
from wsi_lpd.workflow.config import (
    WORKFLOW_KEYS,
    Section,
    WorkflowConfig,
    parse_section,
    workflow_json_schema,
    write_workflow_schema,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("a.svs", "b.svs", "a.geojson", "b.mask.tiff", "roi.geojson"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _sheet(folder: Path, text: str) -> Path:
    path = folder / "samples.csv"
    path.write_text(text.format(d=folder))
    return path


def test_sheet_roles_and_paths(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files)
    path = _sheet(
        files,
        "slide_id,path,mpp,annotations,truth,split,roi\n"
        "a,a.svs,0.25,a.geojson,,,roi.geojson\n"
        "b,{d}/b.svs,,,b.mask.tiff,test,\n"
        "c,b.svs,,a.geojson,b.mask.tiff,test\n",  # a trailing empty cell left out
    )
    sheet = read_sample_sheet(path)
    assert sheet.slide_ids == ["a", "b", "c"]
    a, b, c = sheet.samples
    assert a.path == "a.svs" and a.mpp == 0.25 and a.split == "train" and a.roi == "roi.geojson"
    assert b.path == str(files / "b.svs") and b.mpp is None and b.annotations is None
    assert [s.slide_id for s in sheet.training] == ["a"]  # c is annotated but held out
    assert [s.slide_id for s in sheet.evaluated] == ["b", "c"]
    assert (a.role(True), b.role(True), c.role(True)) == ("train", "test", "test")
    assert a.role(False) == "infer"  # a given checkpoint: nothing trained here
    assert sheet["c"].truth == "b.mask.tiff"
    assert "roi.geojson" in sheet.files() and len(sheet.files()) == 6  # b.svs two ways


def test_sheet_search_dirs_and_pending_files(files: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    path = _sheet(files, "slide_id,path,annotations\nx,a.svs,results/cohort/x.geojson\n")
    with pytest.raises(ConfigError, match="column annotations: file not found"):
        read_sample_sheet(path, search_dirs=[files])
    sheet = read_sample_sheet(path, search_dirs=[files], made_by_workflow=["results/cohort"])
    assert sheet.samples[0].path == str(files / "a.svs")  # found in the workflow's folder
    assert sheet.samples[0].annotations == "results/cohort/x.geojson"  # made by the demo rule
    assert elsewhere.is_dir()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("slide_id,mpp\na,0.5\n", "line 1: missing column(s) path"),
        ("slide_id,path,colour\na,{d}/a.svs,red\n", "line 1: unknown column(s) colour"),
        ("slide_id,path\na,{d}/a.svs\nb,{d}/b.svs\na,{d}/a.svs\n", "line 4: column slide_id: "
         "duplicate 'a' (first on line 2)"),
        ("slide_id,path\nx/y,{d}/a.svs\n", "line 2: column slide_id: 'x/y': contains a path"),
        ("slide_id,path\nx\\y,{d}/a.svs\n", "line 2: column slide_id: 'x\\\\y': contains a path"),
        ("slide_id,path\nmy slide,{d}/a.svs\n", "line 2: column slide_id: 'my slide': ' ' not "
         "allowed (only letters, digits and . _ + -); use 'my_slide'"),
        ("slide_id,path\n_1__first,{d}/a.svs\n", "line 2: column slide_id: '_1__first': the first "
         "character must be a letter or digit; use '1__first'"),
        ("slide_id,path\na,{d}/gone.svs\n", "line 2: column path: file not found"),
        ("slide_id,path,truth\na,{d}/a.svs,{d}/gone.tiff\n", "line 2: column truth: file not"),
        ("slide_id,path,roi\na,{d}/a.svs,{d}/gone.geojson\n", "line 2: column roi: file not"),
        ("slide_id,path,mpp\na,{d}/a.svs,fast\n", "line 2: column mpp: not a number"),
        ("slide_id,path,mpp\na,{d}/a.svs,-0.5\n", "line 2: column mpp: must be a positive"),
        ("slide_id,path,mpp\na,{d}/a.svs,nan\n", "line 2: column mpp: must be a positive"),
        ("slide_id,path,split\na,{d}/a.svs,held out\n", "line 2: column split: 'held out'"),
        ("slide_id,path\na,\n", "line 2: column path: empty"),
        ("slide_id,path\na,{d}/a.svs,extra\n", "line 2: 3 cells, the header has 2"),
        ("slide_id,path\n", "the sample sheet lists no slides"),
    ],
    ids=[
        "missing-column", "unknown-column", "duplicate-id", "slash-id", "backslash-id",
        "space-id", "leading-underscore-id", "missing-slide", "missing-truth", "missing-roi",
        "text-mpp", "negative-mpp", "nan-mpp", "bad-split", "empty-path", "extra-cell", "no-rows",
    ],
)  # fmt: skip
def test_bad_sheet_is_one_line_naming_sheet_line_and_column(
    files: Path, text: str, where: str
) -> None:
    path = _sheet(files, text)
    with pytest.raises(ConfigError) as err:
        read_sample_sheet(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert where in message, message


def test_missing_sheet_and_unchecked_files(files: Path) -> None:
    with pytest.raises(ConfigError, match="sample sheet not found"):
        read_sample_sheet(files / "nope.csv")
    path = _sheet(files, "slide_id,path\na,{d}/gone.svs\n")
    assert read_sample_sheet(path, check_files=False).samples[0].path == str(files / "gone.svs")


def test_results_layout() -> None:
    layout = ResultsLayout("res", ".geojson.gz")
    assert layout.tiles("s1") == "res/tiles/s1"
    assert layout.mosaic("{slide}") == "res/mosaics/{slide}.ome.zarr"
    assert layout.export_files("s1") == [
        "res/geojson/s1.geojson.gz", "res/geojson/s1.overlay.png", "res/geojson/s1.export.json",
    ]  # fmt: skip
    assert layout.metrics("s1") == "res/evaluate/s1/metrics.json"
    assert layout.model == "res/model/model.pt" and layout.train_log == "res/model/train_log.csv"
    assert layout.stage_config("tile") == "res/config/tile.yaml"
    assert layout.log("train", "_cohort") == "res/logs/train/_cohort.log"
    assert layout.failure_record("infer", "s1") == "res/logs/infer/s1.failure.json"
    assert layout.finished("export", "s1") == layout.export_meta("s1")
    assert layout.finished("train", "_cohort") == layout.model
    assert layout.finished("demo_cohort", "_cohort") is None


def test_stage_sections_hold_own_and_shared_sections() -> None:
    config = parse_section(WorkflowConfig, {"samples": "s.csv", "tile": {"mpp": 2.0}}).model_dump(
        mode="json", by_alias=True
    )
    tile = stage_sections(config, "tile", WORKFLOW_KEYS)
    assert set(tile) == {"tile", "classes"} and tile["tile"]["tile_mpp"] == 2.0
    report = stage_sections(config, "report", WORKFLOW_KEYS)
    assert set(report) == {"report", "classes"} and report["report"]["image_max_px"] == 512


def test_failure_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "logs" / "tile" / "a.failure.json"
    write_failure_record(path, "tile", "a.svs", SlideReadError("a.svs: truncated\nsecond"), "a")
    record = json.loads(path.read_text())
    assert record["stage"] == "tile" and record["slide_id"] == "a" and record["input"] == "a.svs"
    assert record["error_type"] == "SlideReadError" and record["message"] == "a.svs: truncated"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["time"])
    monkeypatch.delenv(FAILURE_RECORD_ENV, raising=False)
    assert record_failure("infer", None, ValueError("x")) is None
    target = tmp_path / "b.failure.json"
    monkeypatch.setenv(FAILURE_RECORD_ENV, str(target))
    assert record_failure("infer", None, ValueError("bad window")) == target
    assert read_failure_record(target)["message"] == "bad window"
    target.write_text("{not json")
    assert read_failure_record(target) is None


def _fake_checkpoint(path: Path, classes: ClassList) -> Path:
    payload = {
        "format": FORMAT, "method": "lpd", "classes": classes.to_dict(), "mpp": 1.0,
        "patch_px": 64, "normalisation": {}, "model_config": {}, "predict": {},
        "state_dict": {"w": torch.zeros(1)}, "training": {},
    }  # fmt: skip
    torch.save(payload, path)
    return path


def test_checkpoint_classes_must_match_config(tmp_path: Path) -> None:
    good = _fake_checkpoint(tmp_path / "good.pt", BCSS_CLASSES)
    check_checkpoint_classes(good, BCSS_CLASSES.to_dict())
    names = BCSS_CLASSES.foreground_names
    swapped = ClassList.from_names([names[1], names[0], *names[2:]])
    with pytest.raises(CheckpointError, match="differ from the config's classes"):
        check_checkpoint_classes(good, swapped.to_dict())
    two = _fake_checkpoint(tmp_path / "two.pt", ClassList.from_names(["TUM", "STR"]))
    with pytest.raises(CheckpointError, match=r"\['TUM', 'STR', 'BACK'\] differ"):
        check_checkpoint_classes(two, BCSS_CLASSES.to_dict())
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a wsi-lpd model"):
        check_checkpoint_classes(tmp_path / "foreign.pt", BCSS_CLASSES.to_dict())


# ---- the workflow config models --------------------------------------------------------------


def test_workflow_config_types_and_one_line_errors(tmp_path: Path) -> None:
    cfg = parse_section(WorkflowConfig, {"samples": "s.csv", "train": {"max_iters": "20"}})
    assert cfg.train.max_iters == 20 and cfg.train.model_yaml.endswith("lpd_cpu_small.yaml")
    for data, message in [
        ({"samples": "s.csv", "tiles": {}}, "x.yaml: tiles: unknown key"),
        ({"samples": "s.csv", "train": {"max_iters": 0}}, "x.yaml: train.max_iters: Input"),
        ({"samples": "s.csv", "threads": {"infer": "many"}}, "x.yaml: threads.infer:"),
        ({"samples": "s.csv", "tile": {"tile_mpp": "abc"}}, "x.yaml: tile.tile_mpp: Input"),
        ({"samples": "s.csv", "classes": {"foreground": []}}, "x.yaml: classes.foreground:"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_section(WorkflowConfig, data, "x.yaml")
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    for name in ("demo.yaml", "ci.yaml", "cohort.example.yaml"):
        parse_section(WorkflowConfig, yaml.safe_load((REPO / "configs" / name).read_text()), name)


def test_config_schema_is_generated_from_the_models(tmp_path: Path) -> None:
    """snakemake/schemas/config.schema.yaml is current; regenerate with
    python -c "from wsi_lpd.workflow.config import write_workflow_schema as w; \
w('snakemake/schemas/config.schema.yaml')"."""
    committed = REPO / "snakemake" / "schemas" / "config.schema.yaml"
    fresh = write_workflow_schema(tmp_path / "schema.yaml")
    assert committed.read_text() == fresh.read_text()
    schema = workflow_json_schema()
    assert set(schema["properties"]) == {
        f.alias or name for name, f in WorkflowConfig.model_fields.items()
    }
    for name, field in WorkflowConfig.model_fields.items():
        model = _section_model(field.annotation)
        if model is not None:  # every typed section's keys are in the schema
            ref = schema["$defs"][model.__name__]
            assert set(ref["properties"]) == _keys(model), name


def _section_model(annotation: object) -> type[Section] | None:
    """The Section subclass of a field's type (``X`` or ``X | None``), else None."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _keys(model: type[Section]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_example_config_has_every_key_with_a_comment() -> None:
    """configs/cohort.example.yaml: the keys of every typed section, each with a comment."""
    path = REPO / "configs" / "cohort.example.yaml"
    example = yaml.safe_load(path.read_text())
    assert set(example) == _keys(WorkflowConfig)
    for name, field in WorkflowConfig.model_fields.items():
        model = _section_model(field.annotation)
        key = field.alias or name
        if model is not None and example[key] is not None:
            assert set(example[key]) == _keys(model), f"section {key}"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_]+:", line):
            previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
            commented = "#" in line or previous.lstrip().startswith("#")
            assert commented, f"{path.name}:{i + 1}: key without a comment: {line.strip()}"
