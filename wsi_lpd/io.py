"""The one atomic writer: files, folders and zarr stores appear whole or not at all.

Everything a stage writes goes through :func:`atomic_file` or :func:`atomic_dir` (a zarr store is a
folder): the content is written under a hidden temporary sibling name and renamed onto the final
path when complete. On any exception the temporary is removed and the final path keeps what it had
(an earlier finished result, or nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path`` keeping its suffix (``.x.partial-ab12cd34.json``)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.partial-{uuid.uuid4().hex[:8]}{p.suffix}")


def remove_stale_partials(path: str | os.PathLike) -> None:
    """Remove temporaries of ``path`` that killed runs left behind (called after a success)."""
    p = Path(path)
    for stale in p.parent.glob(f".{p.stem}.partial-*{p.suffix}"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = temporary_sibling(final)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    remove_stale_partials(final)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; renamed onto ``path`` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, final)
    remove_stale_partials(final)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (non-JSON values via ``str``)."""
    return write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
