"""Plumbing shared by the commands: options generated from a stage's section, logging verbosity.

:func:`section_options` turns every field of a stage's options model into a command-line option
(type, help from the field's description, default shown), so a field added to the model is an
option with no other file edited."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.settings import S, read_yaml, section_with_overrides

F = TypeVar("F", bound=Callable[..., Any])

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


def config_classes(config: Path | None) -> ClassList:
    """The workflow YAML's ``classes:`` (BCSS's classes without a file or that section)."""
    data = read_yaml(config) if config is not None else {}
    try:
        return ClassList.from_dict(data["classes"]) if data.get("classes") else BCSS_CLASSES
    except ConfigError as exc:
        raise ConfigError(f"{config}: {exc}") from None


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` → X; ``X | None`` → X."""
    if get_origin(annotation) is Annotated:
        return _strip(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def _cli_type(annotation: Any) -> Any:
    """The command-line type of a field: literals as ``str`` (the model names the choices in its
    error), lists of their items, mappings as repeatable ``KEY=VALUE`` strings."""
    annotation = _strip(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin is list:
        return list[_cli_type(get_args(annotation)[0])]  # type: ignore[misc]
    if origin is tuple:
        return tuple[tuple(_cli_type(a) for a in get_args(annotation))]  # type: ignore[misc]
    if origin is dict:
        return list[str]
    if annotation in (str, int, float, bool, Path):
        return annotation
    raise TypeError(f"no command-line type for a field of type {annotation!r}")


def _shown_default(field: FieldInfo) -> str:
    """The default as ``--help`` shows it (``cli_default`` in the field's schema extra wins)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "cli_default" in extra:
        return str(extra["cli_default"])
    value = field.get_default(call_default_factory=True)
    if value is None or value == {} or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _key_values(flag: str, items: list[str]) -> dict[str, str | None]:
    """``["TUM=0.5", "STR="]`` → ``{"TUM": "0.5", "STR": None}`` (an empty value is null)."""
    out: dict[str, str | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag}: expected KEY=VALUE (e.g. TUM=0.5), got {item!r}")
        out[name.strip()] = value.strip() or None
    return out


def _option(name: str, field: FieldInfo, decl: str | None, hidden: bool = False) -> Any:
    """``Annotated[T | None, typer.Option(...)]`` for one field (None: not given)."""
    kind = _cli_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    if decl is None and kind is bool:
        decl = f"{flag}/--no-{flag[2:]}"
    help_text = field.description or ""
    choices = _strip(field.annotation)
    if get_origin(choices) is Literal:
        help_text = f"{help_text} One of: {', '.join(map(str, get_args(choices)))}."
    option = typer.Option(
        decl or flag, help=help_text.strip(), show_default=_shown_default(field), hidden=hidden
    )
    return Annotated[typing.Optional[kind], option]  # noqa: UP045 (a runtime type for typer)


def section_options(
    model: type[S],
    section: str,
    *,
    flags: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Decorator of a stage command: its ``opts: <model>`` parameter becomes one option per field
    of ``model`` (``flags`` gives a field its own declaration, e.g. ``--per-class/--per-component``)
    plus a hidden option per deprecated key (``model.RENAMED_KEYS``); the command receives ``opts``
    built from its ``--config`` file's section ``section`` with the given options on top.

    Options not given are None and leave the file's (or the model's) value."""
    flags = dict(flags or {})

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        if "opts" not in signature.parameters or "config" not in signature.parameters:
            raise TypeError(f"{func.__name__}: a stage command takes `opts` and `config`")
        fields = model.model_fields
        generated = {name: _option(name, field, flags.get(name)) for name, field in fields.items()}
        for old, new in model.RENAMED_KEYS.items():
            hidden = FieldInfo.merge_field_infos(
                fields[new], description=f"Deprecated: --{new.replace('_', '-')}."
            )
            generated[old] = _option(old, hidden, None, hidden=True)
        clash = set(generated) & (set(signature.parameters) - {"opts"})
        if clash:
            raise TypeError(f"{func.__name__}: command arguments shadow section fields {clash}")
        params: list[inspect.Parameter] = []
        keyword_only = False  # the parameters from ``opts`` on are keyword-only
        for p in signature.parameters.values():
            if p.name == "opts":
                keyword_only = True
                params.extend(
                    inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
                    for n, a in generated.items()
                )
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if keyword_only else p)
        mappings = [
            n
            for n in generated
            if get_origin(_strip(fields[model.RENAMED_KEYS.get(n, n)].annotation)) is dict
        ]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n, None) for n in generated}
            for name in mappings:
                if given[name]:
                    given[name] = _key_values("--" + name.replace("_", "-"), list(given[name]))
            opts = section_with_overrides(model, kwargs.get("config"), section, given)
            return func(*args, opts=opts, **kwargs)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate
