"""One options object per stage: every field of a stage's section is a command-line option (and
vice versa), and a field added to a section becomes an option, a workflow setting and a library
argument with no other file edited."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from wsi_lpd.cli._common import section_options
from wsi_lpd.cli.app import app
from wsi_lpd.data.options import PatchesSection
from wsi_lpd.evaluate.options import EvaluateSection
from wsi_lpd.export.options import ExportSection
from wsi_lpd.infer.options import InferSection
from wsi_lpd.settings import Section
from wsi_lpd.slide.options import TileSection
from wsi_lpd.synthetic.options import SynthSection
from wsi_lpd.workflow.config import ReportSection, WorkflowConfig

ROOT = Path(__file__).resolve().parents[1]

# stage → (its options model, the command's own arguments: inputs, outputs, --config, -v, ...)
STAGES: dict[str, tuple[type[Section], set[str]]] = {
    "synth": (SynthSection, {"out", "add_cmu", "config", "verbose"}),
    "tile": (TileSection, {"slide", "out", "slide_id", "config", "verbose"}),
    "patches": (PatchesSection, {"out", "config", "verbose"}),
    "infer": (InferSection, {"slide", "model", "out", "slide_id", "tiles", "config", "verbose"}),
    "export": (ExportSection, {"mosaic", "out", "config", "verbose"}),
    "evaluate": (EvaluateSection, {"out", "config", "verbose"}),
    "report": (ReportSection, {"results", "samples", "out", "model", "config", "verbose"}),
}
# `train` reads its options from the training YAML (wsi_lpd.train.training_config), not a
# workflow section; `info` and `config` are not stages.


def _params(command: str) -> dict[str, Any]:
    """The command's click parameters by name (typer may vendor its own click)."""
    group: Any = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params if p.name != "help"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_section_field_is_an_option_and_every_option_a_field_or_argument(
    stage: str,
) -> None:
    model, arguments = STAGES[stage]
    params = _params(stage)
    fields = set(model.model_fields)
    deprecated = set(model.RENAMED_KEYS)
    assert fields <= set(params), f"{stage}: fields without an option: {fields - set(params)}"
    extra = set(params) - fields - deprecated
    assert extra == arguments, f"{stage}: options that are not fields: {extra - arguments}"
    for name in deprecated:  # old key names stay accepted as hidden flags
        assert params[name].hidden, name
    for name in fields:  # shown with their default
        option = params[name]
        assert option.param_type_name == "option" and not option.hidden, name
        assert option.show_default not in (None, False, ""), name
        assert option.help, f"{stage}.{name}: no help (Field description)"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_shows_every_option_with_its_default(stage: str) -> None:
    result = CliRunner().invoke(app, [stage, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    model, _ = STAGES[stage]
    for name in model.model_fields:
        flag = "--" + name.replace("_", "-")
        lines = [ln for ln in result.stdout.splitlines() if f"{flag} " in ln]
        assert lines, f"{flag} missing from `wsi-lpd {stage} --help`"


class _WithNewField(InferSection):
    window_margin_um: float = Field(12.5, ge=0, description="A field added to the section.")


def test_a_field_added_to_a_section_is_an_option_of_the_command(tmp_path: Path) -> None:
    received: list[InferSection] = []

    @section_options(_WithNewField, "infer")
    def command(
        out: Annotated[Path, typer.Option(help="Output.")],
        opts: _WithNewField,
        config: Annotated[Path | None, typer.Option(help="Workflow YAML.")] = None,
    ) -> None:
        received.append(opts)

    fake = typer.Typer()
    fake.command()(command)
    help_text = CliRunner().invoke(fake, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "--window-margin-um" in help_text and "12.5" in help_text
    config = tmp_path / "c.yaml"
    config.write_text("infer:\n  window_margin_um: 3.0\n  batch_size: 4\n")
    result = CliRunner().invoke(fake, ["--out", "o", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert received[-1].window_margin_um == 3.0 and received[-1].batch_size == 4  # from the file
    result = CliRunner().invoke(
        fake, ["--out", "o", "--config", str(config), "--window-margin-um", "7"]
    )
    assert result.exit_code == 0, result.output
    assert received[-1].window_margin_um == 7.0 and received[-1].batch_size == 4  # flag wins
    result = CliRunner().invoke(fake, ["--out", "o", "--window-margin-um", "-1"])
    assert result.exit_code != 0 and "window_margin_um" in str(result.exception)


def test_a_field_added_to_infer_section_reaches_cli_workflow_and_library(tmp_path: Path) -> None:
    """In a fresh interpreter, InferSection gains a field before anything else imports it: the
    field is then an option of `wsi-lpd infer`, a key of the workflow YAML's `infer:` section
    (schema included) and an attribute of the options the library entry point receives."""
    config = tmp_path / "workflow.yaml"
    config.write_text("infer:\n  window_margin_um: 3.0\n")
    script = textwrap.dedent(
        f"""
        import json, sys
        from pydantic import Field, create_model
        import wsi_lpd.infer.options as options

        options.InferSection = create_model(
            "InferSection",
            __base__=options.InferSection,
            window_margin_um=(float, Field(12.5, ge=0, description="Added in a test.")),
        )
        import types
        from typer.testing import CliRunner
        from wsi_lpd.cli.app import app
        from wsi_lpd.workflow.config import load_workflow_config, workflow_json_schema

        got = {{}}
        stage = types.ModuleType("wsi_lpd.infer.stage")  # the entry point, recording its options
        stage.infer_slide = lambda *args, **kwargs: got.update(opts=args[2].model_dump())
        sys.modules["wsi_lpd.infer.stage"] = stage
        help_text = CliRunner().invoke(app, ["infer", "--help"], env={{"COLUMNS": "200"}}).stdout
        result = CliRunner().invoke(
            app,
            ["infer", "s.svs", "--model", "m.pt", "--out", "o", "--config", {str(config)!r},
             "--window-margin-um", "7"],
        )
        schema = workflow_json_schema()["$defs"]["InferSection"]["properties"]
        print(json.dumps({{
            "help": "--window-margin-um" in help_text,
            "exit": result.exit_code,
            "library": got.get("opts", {{}}).get("window_margin_um"),
            "workflow": load_workflow_config({str(config)!r}).infer.window_margin_um,
            "schema": "window_margin_um" in schema,
        }}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"help": True, "exit": 0, "library": 7.0, "workflow": 3.0, "schema": True}


def test_deprecated_flags_still_work(tmp_path: Path) -> None:
    from wsi_lpd.cli import tile

    got: list[TileSection] = []

    def fake_tile_slide(slide: Path, opts: TileSection, out: Path, **_kw: object) -> None:
        got.append(opts)

    import wsi_lpd.slide.stage

    original = wsi_lpd.slide.stage.tile_slide
    wsi_lpd.slide.stage.tile_slide = fake_tile_slide  # type: ignore[assignment]
    try:
        fake = typer.Typer()
        fake.command()(tile.command)
        result = CliRunner().invoke(
            fake, ["s.svs", "--out", "o", "--mpp", "0.5", "--overlap-px", "56", "--patch-px", "112"]
        )
    finally:
        wsi_lpd.slide.stage.tile_slide = original
    assert result.exit_code == 0, result.output
    assert got[-1].tile_mpp == 0.5 and got[-1].overlap == 0.5 and got[-1].patch_px == 112


def test_sections_are_composed_into_the_workflow_config() -> None:
    fields = WorkflowConfig.model_fields
    for stage, (model, _) in STAGES.items():
        assert fields[stage].annotation is model, stage
