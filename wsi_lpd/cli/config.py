"""Print the effective workflow config (every section with its defaults), validated."""

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
    config: Annotated[
        Path | None,
        typer.Option(help="Workflow YAML to validate and complete.", show_default="defaults only"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    from wsi_lpd.workflow.config import load_workflow_config

    effective = load_workflow_config(config).model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(effective, indent=2))
    else:
        typer.echo(to_yaml(effective))
