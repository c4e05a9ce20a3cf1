"""Typed configuration: one pydantic model per YAML section, validated in one place.

Every config error becomes one :class:`~wsi_lpd.errors.ConfigError` line naming the file, the
dotted key and the problem (``x.yaml: train.lr: Input should be a valid number (got 'abc')``).
Numbers written as strings that parse as numbers (PyYAML reads ``5e-5`` as a string) are accepted.

Section models subclass :class:`Section` (unknown keys are refused); they live here and in the
modules that own them (e.g. :mod:`wsi_lpd.model.config`), always built with :func:`parse_section`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wsi_lpd.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, defaults live on the fields."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


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


# --- patches section


def _one_or_many(value: Any) -> Any:
    """A single path where a list of paths is expected becomes a one-item list."""
    return [value] if isinstance(value, str | os.PathLike) else value


class PatchesSection(Section):
    """``patches:`` — building the patch store (``wsi-lpd patches``); flags override these.

    Inputs: ``tiles`` + ``annotations`` (+ ``truth`` masks), paired by order, or ``labels_csv`` with
    ``mpp`` (µm/px) and ``patch_px``. Labels: ``min_class_fraction`` of the patch area makes a
    class positive; negatives need the annotations to cover ``min_annotated_fraction`` of the
    patch's tissue, otherwise unknown. ``class_map`` maps annotation class names to model classes
    (QuPath's Tumor/Stroma/Immune cells/Necrosis and case-insensitive model names are accepted
    without it; a null value drops that class); ``unknown_classes`` decides the rest: ``ignore``
    (counted in the log) or ``refuse``. ``qupath_bounds``: annotation coordinates are relative to
    a cropped slide's bounds (QuPath's convention) and are shifted to level-0 px.
    """

    tiles: list[Path] | None = None
    annotations: list[Path] | None = None
    truth: list[Path] | None = None
    labels_csv: Path | None = None
    mpp: float | None = Field(default=None, gt=0)
    patch_px: int | None = Field(default=None, ge=1)
    min_class_fraction: float = Field(default=0.1, gt=0, le=1)
    min_annotated_fraction: float = Field(default=0.9, gt=0, le=1)
    class_map: dict[str, str | None] = Field(default_factory=dict)
    unknown_classes: Literal["ignore", "refuse"] = "ignore"
    qupath_bounds: bool = True

    _paths = field_validator("tiles", "annotations", "truth", mode="before")(_one_or_many)
