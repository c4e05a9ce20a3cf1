"""The one run-metadata writer: every stage records what it ran with in a JSON file.

Keys: ``stage``, ``versions`` (of the packages that shape results), ``parameters`` (the stage's
options), ``inputs`` (paths, checksums, sizes), ``wall_time_s``, ``finished_at``, ``host``, then the
stage's own summary keys. A slide's identity is ``slide_sha256_first_mib``
(:func:`sha256_first_mib` of the slide file).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from wsi_lpd.io import write_json

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


def sha256_first_mib(path: str | os.PathLike, first_bytes: int = 1 << 20) -> str:
    """SHA-256 of the first MiB (``first_bytes``) of a file: a cheap identity for slides."""
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

    ``started`` is the ``time.time()`` the stage began at. ``out`` is a folder (written to
    ``out/run.json``; an existing folder always counts as one) or a file path ending in ``.json``
    (e.g. ``{slide_id}.run.json``); returns the file written."""
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
