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
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


# --- infer section
class InferSection(Section):
    """``infer:`` whole-slide inference into an OME-Zarr mosaic."""

    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    workers: int | None = Field(None, ge=0)
    prefetch: int = Field(4, ge=1)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blend: Literal["gaussian", "cosine"] = "gaussian"
    sigma_frac: float = Field(0.125, gt=0.0)
    output_mpp: float | None = Field(None, gt=0.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    tissue_mpp: float = Field(8.0, gt=0.0)
    slide_mpp: float | None = Field(None, gt=0.0)
    decode: Literal["auto", "cpu", "gpu"] = "auto"


# --- export section
class ExportSection(Section):
    """``export:`` mosaic → QuPath GeoJSON and overlay."""

    slide: str | None = None
    min_area_um2: float = Field(1000.0, ge=0.0)
    simplify_um: float | None = Field(None, ge=0.0)
    object_type: Literal["annotation", "detection"] = "annotation"
    per_class: bool = False
    subtract_bounds: bool = False
    gzip: bool = False
    block_px: int = Field(2048, ge=64)
    min_probability: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict
    )
    workers: int | None = Field(None, ge=1)
    verify: Literal["sizes", "checksums"] = "sizes"
