"""Print the effective workflow config (every section with its defaults), validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def command(
    config: Annotated[
        Path | None,
        typer.Option(help="Workflow YAML to validate and complete.", show_default="defaults only"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    import yaml

    from wsi_lpd.config import load_workflow_config

    effective = load_workflow_config(config).model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(effective, indent=2))
    else:
        typer.echo(yaml.safe_dump(effective, sort_keys=False, allow_unicode=True).rstrip())
