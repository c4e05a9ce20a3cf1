"""Plumbing shared by the stages: run metadata, config sections with flags, logging verbosity."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from wsi_lpd.io import write_json
from wsi_lpd.workflow.config import S, load_section, parse_section

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


_state = {"verbose": False}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """Called by the CLI boundary before a command runs: DEBUG with ``verbose``, else WARNING
    until the stage calls :func:`setup_logging` (so input refused up front prints no INFO line)."""
    _state["verbose"] = verbose
    # tifffile logs what it cannot parse; the slide reader turns that into one error line
    logging.getLogger("tifffile").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def setup_logging(verbose: bool = False) -> None:
    """Start INFO logging (DEBUG with ``verbose`` or the boundary's ``-v``) to stderr.

    Stages call it once their inputs are validated."""
    logging.basicConfig(
        level=logging.DEBUG if verbose or _state["verbose"] else logging.INFO,
        format=_FORMAT,
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
    out: str | os.PathLike,
    stage: str,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Any],
    started: float,
    **extra: Any,
) -> Path:
    """Write the run metadata (stage, versions, parameters, inputs, wall time) atomically.

    ``out`` is a folder (written to ``out/run.json``; an existing folder always counts as one) or
    a file path ending in ``.json`` (e.g. ``{slide_id}.run.json``); returns the file written."""
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
    target = Path(out)
    if target.is_dir() or target.suffix.lower() != ".json":
        target = target / "run.json"
    return write_json(target, payload)


def section_with_flags(
    model: type[S], config: str | os.PathLike | None, section: str, /, **flags: Any
) -> S:
    """Section ``section`` of the workflow YAML ``config`` (defaults when None) as ``model``,
    overridden by the flags that were given (not None) and validated again.

    Errors in the file name the file and key; errors in a flag name the option."""
    with _held_back(
        "wsi_lpd.workflow.config"
    ) as held:  # deprecation warnings only for a valid section
        base = load_section(model, config, section)
        given = {k: v for k, v in flags.items() if v is not None}
        if given:
            base = parse_section(model, {**base.model_dump(), **given}, "command line", section)
    for record in held:
        logging.getLogger(record.name).handle(record)
    return base


@contextlib.contextmanager
def _held_back(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of ``logger_name`` instead of emitting them (dropped on error)."""
    held: list[logging.LogRecord] = []
    logger = logging.getLogger(logger_name)

    class _Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    handler, propagate = _Hold(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
