"""I/O plumbing shared by the stages: atomic outputs, run metadata, config sections, logging."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml

from wsi_lpd.cohort import record_failure
from wsi_lpd.errors import ConfigError, WsiLpdError

log = logging.getLogger("wsi_lpd")

P = ParamSpec("P")
R = TypeVar("R")

_PACKAGES = (
    "wsi-lpd",
    "torch",
    "timm",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "zarr",
    "numpy",
    "shapely",
)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps; ``verbose`` switches to DEBUG."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def file_checksum(path: str | os.PathLike, first_bytes: int = 1 << 20) -> str:
    """SHA-256 of the first ``first_bytes`` of a file (cheap identity for slides)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(first_bytes))
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out: dict[str, str] = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_run_metadata(
    out_dir: str | os.PathLike,
    stage: str,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Any],
    started: float,
    **extra: Any,
) -> Path:
    """Write ``run.json`` (stage, versions, parameters, inputs, wall time) into ``out_dir``."""
    payload = {
        "stage": stage,
        "versions": package_versions(),
        "parameters": dict(parameters),
        "inputs": dict(inputs),
        "wall_time_s": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        **extra,
    }
    path = Path(out_dir) / "run.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def load_config_section(
    config: str | os.PathLike | None, section: str, allowed: Iterable[str] | None = None
) -> dict[str, Any]:
    """Read one top-level section of a YAML config (``{}`` when no config is given).

    With ``allowed``, a key outside it raises ``ConfigError`` naming the file, section and key.
    """
    if config is None:
        return {}
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: section {section!r} must be a mapping")
    unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in section {section!r}: {', '.join(unknown)}")
    return value


def merge_options(section: Mapping[str, Any], **flags: Any) -> dict[str, Any]:
    """Config section values overridden by flags that were given (not None)."""
    merged = dict(section)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """CLI decorator: a WsiLpdError (or missing file) becomes one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (WsiLpdError, FileNotFoundError) as exc:
            record_failure(func.__module__.rsplit(".", 1)[-1], None, exc)
            print(f"wsi-lpd: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
