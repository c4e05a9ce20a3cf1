"""Typed settings: the pydantic :class:`Section` base and the YAML helpers every options model uses.

Every config error becomes one :class:`~wsi_lpd.errors.ConfigError` line naming the file, the
dotted key and the problem (``x.yaml: train.lr: Input should be a valid number (got 'abc')``).
Numbers written as strings that parse as numbers (PyYAML reads ``5e-5`` as a string) are accepted.

Each stage's options model (a :class:`Section`) lives beside the stage's entry point in its domain
package (e.g. :class:`wsi_lpd.slide.options.TileSection`); :mod:`wsi_lpd.workflow.config` composes
them into the workflow YAML. Field descriptions are the command line's help texts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from wsi_lpd.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, defaults live on the fields.

    ``RENAMED_KEYS`` (old key → new key) lists deprecated keys a section still accepts (with a
    warning, see :func:`renamed_keys`); the command line keeps them as hidden flags."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {}


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (``{}`` for an empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML ({first})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def describe_validation_error(
    exc: ValidationError, source: str | os.PathLike | None, prefix: str
) -> str:
    """One line: ``source: dotted.key: message (got value)`` for the first error of ``exc``."""
    err = exc.errors(include_url=False)[0]
    key = _location(prefix, tuple(err.get("loc", ())))
    message = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        message = "unknown key"
    got = err.get("input")
    shown = "" if err.get("type") in ("extra_forbidden", "missing") else f" (got {got!r})"
    more = len(exc.errors()) - 1
    tail = f" [+{more} more]" if more > 0 else ""
    where = f"{source}: " if source is not None else ""
    return f"{where}{key}: {message}{shown}{tail}"


def parse_section(
    model: type[S],
    data: Mapping[str, Any] | None,
    source: str | os.PathLike | None = None,
    section: str = "",
) -> S:
    """Validate ``data`` (one YAML section) into ``model``; errors become one ``ConfigError``."""
    if data is not None and not isinstance(data, Mapping):
        where = f"{source}: " if source is not None else ""
        raise ConfigError(f"{where}{section or '(top level)'}: must be a mapping")
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, section)) from None


def load_section(model: type[S], path: str | os.PathLike | None, section: str) -> S:
    """Read ``section`` of the YAML at ``path`` into ``model`` (defaults when ``path`` is None)."""
    if path is None:
        return parse_section(model, {}, None, section)
    return parse_section(model, read_yaml(path).get(section), path, section)


_deprecation_log = logging.getLogger("wsi_lpd.settings")


def renamed_keys(data: Any, section: str, renames: Mapping[str, str]) -> Any:
    """Move deprecated keys to their new names with a WARNING (the old key wins when both are
    given, so an old-style flag overrides a new-style file)."""
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    for old, new in renames.items():
        if old in out:
            _deprecation_log.warning(
                "%s.%s (--%s) is deprecated, use %s.%s (--%s); the old name goes in the next "
                "release",
                section,
                old,
                old.replace("_", "-"),
                section,
                new,
                new.replace("_", "-"),
            )
            out[new] = out.pop(old)
    return out


def section_with_overrides(
    model: type[S],
    config: str | os.PathLike | None,
    section: str,
    overrides: Mapping[str, Any],
    source: str = "command line",
) -> S:
    """Section ``section`` of the YAML ``config`` (defaults when None) as ``model``, overridden by
    the ``overrides`` that were given (not None, not empty) and validated again.

    Errors in the file name the file and key; errors in an override name ``source``. Deprecation
    warnings are emitted only once the section is valid."""
    with _held_back(_deprecation_log.name) as held:
        base = load_section(model, config, section)
        given = {k: v for k, v in overrides.items() if v is not None and v != [] and v != ()}
        if given:
            base = parse_section(model, {**base.model_dump(), **given}, source, section)
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
