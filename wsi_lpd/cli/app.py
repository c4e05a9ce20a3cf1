"""``wsi-lpd``: one subcommand per stage, all behind one error boundary.

Every command ends, for any exception, with one line on stderr
``wsi-lpd <stage>: error: <input>: <problem>`` and exit status 1; ``-v/--verbose`` (on every
command, or before it) adds DEBUG logging and the full traceback. Heavy imports happen inside
each command.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from wsi_lpd.cli._common import configure_logging

COMMANDS = (
    "synth",
    "tile",
    "patches",
    "train",
    "infer",
    "export",
    "evaluate",
    "report",
    "info",
    "config",
    "samples",
    "run",
)

# click's error classes as typer exposes them (typer may vendor its own click)
ClickError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Debug logging; full traceback on error.")
]


class OneLineGroup(TyperGroup):
    """The command group: usage errors (bad flag value, missing argument) also end in one line
    ``wsi-lpd <stage>: error: <problem>`` and exit 1, like every other error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except ClickError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wsi-lpd`: the help text
                exc.show()
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "wsi-lpd"
            hint = f" (see '{where} --help')" if isinstance(exc, UsageError) else ""
            print(f"{where}: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
            sys.exit(1)
        except typer.Abort:
            print("wsi-lpd: error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="wsi-lpd",
    cls=OneLineGroup,
    help="Whole-slide LPD: tile, patches, train, infer, export to QuPath, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"show_default": True},
)

_global = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        from wsi_lpd import __version__

        typer.echo(f"wsi-lpd {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: VerboseOption = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Whole-slide LPD: tile, patches, train, infer, export to QuPath, evaluate, report."""
    _global["verbose"] = verbose


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _primary_input(bound: dict[str, Any]) -> str | None:
    """The first path among the command's arguments (its input), for messages without one."""
    for value in bound.values():
        if isinstance(value, list | tuple) and value and isinstance(value[0], Path):
            return str(value[0])
        if isinstance(value, Path):
            return str(value)
    return None


def error_line(stage: str, exc: BaseException, bound: dict[str, Any]) -> str:
    """``wsi-lpd <stage>: error: <input>: <problem>`` for any exception."""
    from wsi_lpd.errors import WsiLpdError

    message = _one_line(str(exc))
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}"
    elif not isinstance(exc, WsiLpdError):
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        named = [str(v) for v in bound.values() if isinstance(v, str | os.PathLike)]
        where = _primary_input(bound)
        if where and not any(message.startswith(n) or f"{n}:" in message for n in named):
            message = f"{where}: {message}"
    return f"wsi-lpd {stage}: error: {message or type(exc).__name__}"


def boundary(stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage command: ``-v/--verbose`` added (or normalised), logging configured, and
    every exception turned into one line on stderr and exit 1 (traceback with ``-v``)."""
    signature = inspect.signature(func, eval_str=True)
    passes_verbose = "verbose" in signature.parameters
    verbose_param = inspect.Parameter(
        "verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOption
    )
    params = [p for p in signature.parameters.values() if p.name != "verbose"]
    params.append(verbose_param)

    @functools.wraps(func)
    def command(*args: Any, verbose: bool = False, **kwargs: Any) -> Any:
        verbose = verbose or _global["verbose"]
        configure_logging(verbose)
        if passes_verbose:
            kwargs["verbose"] = verbose
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, ClickError):
            raise
        except SystemExit as exc:
            if exc.code in (None, 0):
                raise
            raise SystemExit(exc.code if isinstance(exc.code, int) else 1) from None
        except KeyboardInterrupt:
            print(f"wsi-lpd {stage}: error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BaseException as exc:
            if verbose:
                traceback.print_exc(file=sys.stderr)
            bound = dict(kwargs)
            from wsi_lpd.workflow.cohort import record_failure

            record_failure(stage, _primary_input(bound), exc)
            print(error_line(stage, exc, bound), file=sys.stderr)
            raise SystemExit(1) from None

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {**func.__annotations__, "verbose": VerboseOption}
    return command


for _name in COMMANDS:
    _module = importlib.import_module(f"wsi_lpd.cli.{_name}")
    app.command(
        name=_name,
        help=_module.__doc__,
        context_settings=getattr(_module, "CONTEXT_SETTINGS", None),
    )(boundary(_name, _module.command))
