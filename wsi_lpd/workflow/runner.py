"""``wsi-lpd run``: the packaged Snakemake workflow on a config, from any folder.

Snakemake runs in the config file's folder (``--directory``), so relative paths in the config
and the sample sheet are taken from there; the Snakefile and profiles come from the install.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from wsi_lpd.errors import ConfigError

PROFILE_FLAG = "--workflow-profile"
DEFAULT_PROFILE = "local"


def workflow_dir() -> Path:
    """The folder holding the Snakefile, snakemake/ and configs/ (the source checkout)."""
    import wsi_lpd

    folder = Path(wsi_lpd.__file__).resolve().parents[1]
    if not (folder / "Snakefile").is_file():
        raise ConfigError(
            f"{folder}: no Snakefile here; the workflow ships with the source checkout "
            "(git clone, then `make install` or `pip install -e .`)"
        )
    return folder


def profile_dir(name: str, repo: Path) -> str:
    """A profile folder: ``local``/``slurm`` (or any name under snakemake/profiles) → the packaged
    one; anything else is a path, as Snakemake takes it."""
    packaged = repo / "snakemake" / "profiles" / name
    if os.sep not in name and packaged.is_dir():
        return str(packaged)
    return name


def _with_profile(args: Sequence[str], repo: Path) -> list[str]:
    """``args`` with ``--workflow-profile NAME`` pointing at the packaged profile (the local one
    when no profile is given)."""
    out: list[str] = []
    given = False
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == PROFILE_FLAG and i + 1 < len(items):
            out += [arg, profile_dir(items[i + 1], repo)]
            given, i = True, i + 2
            continue
        if arg.startswith(PROFILE_FLAG + "="):
            out.append(f"{PROFILE_FLAG}={profile_dir(arg.split('=', 1)[1], repo)}")
            given = True
        else:
            given = given or arg == "--profile" or arg.startswith("--profile=")
            out.append(arg)
        i += 1
    if not given:
        out = [PROFILE_FLAG, profile_dir(DEFAULT_PROFILE, repo), *out]
    return out


def snakemake_command(config: str | os.PathLike, args: Sequence[str] = ()) -> list[str]:
    """The argument list that runs the workflow on ``config`` (no shell involved)."""
    path = Path(os.path.abspath(config))
    if not path.is_file():
        raise ConfigError(f"{config}: config file not found")
    repo = workflow_dir()
    if importlib.util.find_spec("snakemake") is None:
        raise ConfigError(
            f"snakemake is not installed beside {sys.executable} (pip install -e '.[workflow]')"
        )
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(repo / "Snakefile"),
        "--directory", str(path.parent),
        "--configfile", str(path),
        *_with_profile(args, repo),
    ]  # fmt: skip


def run_workflow(config: str | os.PathLike, args: Sequence[str] = ()) -> int:
    """Run Snakemake on ``config`` with ``args`` (its own flags: -n, --cores N, …); its exit
    status."""
    return subprocess.run(snakemake_command(config, args), check=False).returncode
