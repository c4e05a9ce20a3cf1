"""``wsi-lpd``: one subcommand per stage. Heavy imports happen inside each command."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="wsi-lpd",
    help="Whole-slide LPD: tile, patches, train, infer, export to QuPath, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STAGES = ("synth", "tile", "patches", "train", "infer", "export", "evaluate", "report")

for _stage in STAGES:
    _module = importlib.import_module(f"pipelines.{_stage}")
    app.command(name=_stage, help=_module.__doc__)(_module.command)
