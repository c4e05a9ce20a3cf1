"""Print the effective workflow config (every section with its defaults), validated; it loads
back as it is. --check: also check the files, classes and devices the workflow will need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def to_yaml(data: dict) -> str:
    """Block-style YAML with lists of plain values (colours) on one line."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = all(not isinstance(v, dict | list) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    _Dumper.add_representer(list, _list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True).rstrip()


def command(
    config_file: Annotated[
        Path | None,
        typer.Argument(help="Workflow YAML (the same as --config).", show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Workflow YAML to validate and complete.", show_default="defaults only"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check, as the workflow does before its first job, every file of the config and "
            "the sheet (from the config's folder), the annotations' classes and the devices; one "
            "line per problem, exit status 1.",
        ),
    ] = False,
) -> None:
    from wsi_lpd.workflow.config import load_workflow_config

    path = config_file or config
    settings = load_workflow_config(path)
    if check:
        _check(settings, path)
        return
    effective = settings.model_dump(mode="json", by_alias=True)
    if as_json:
        typer.echo(json.dumps(effective, indent=2))
    else:
        typer.echo(to_yaml(effective))


def _check(settings: object, path: Path | None) -> None:
    """``--check``: notes on stdout, problems on stderr, exit status 1 when there is one."""
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.workflow.preflight import run_preflight_in
    from wsi_lpd.workflow.runner import workflow_dir

    if path is None:
        raise ConfigError("--check needs the config file: wsi-lpd config --check my_cohort.yaml")
    try:
        bundled = [workflow_dir()]
    except ConfigError:
        bundled = []
    found = run_preflight_in(path.parent, settings, str(path), bundled=bundled)
    for line in found.notes:
        typer.echo(line)
    for line in found.problems + found.unreadable:
        typer.echo(f"wsi-lpd config: error: {line}", err=True)
    if not found.ok:
        raise typer.Exit(1)
    sheet = found.sheet
    n = len(sheet.samples) if sheet else 0
    trained = len(sheet.training) if sheet else 0
    typer.echo(f"{path}: OK ({n} slides, {trained} train the model)")
