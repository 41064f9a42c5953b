"""The ``sweep`` command line. User mistakes exit 2 with one line; failures outside them exit 1."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer

from storage import FencedError, StorageError, StorageFullError
from sweep import (
    _apply,
    _cli_apply,
    _cli_query,
    _cli_run,
    _export,
    _output,
    _plot,
    _ray_session,
    _recommend,
)
from sweep._cli_common import _TASK_MODULES, UserError, err
from sweep._config import ConfigError
from trials import RecipeError, TaskError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search per-layer pruning and int8 quantization recipes on Ray; query the Pareto front.",
)
USER_ERRORS = (
    ConfigError,
    StorageError,
    TaskError,
    RecipeError,
    _output.OutputError,
    _export.ExportError,
    _recommend.RecommendError,
    _plot.PlotError,
    _apply.DeviceError,
)
# Failures outside the user's control that still deserve one line (exit 1, no traceback).
FAILURES = (StorageFullError, FencedError, _output.DiskFullError, _ray_session.RayStartError)
# click's own errors (usage errors exit 2). typer >= 0.20 raises those of the click it vendors,
# older typer those of click itself: the public typer.BadParameter leads to their base class.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    c
    for c in typer.BadParameter.__mro__
    if issubclass(c, Exception) and c.__name__ == "ClickException"
)


# The commands, in the order `sweep --help` lists them.
app.command()(_cli_run.launch)
app.command()(_cli_run.resume)
app.command()(_cli_run.remeasure)
app.command()(_cli_query.trials)
app.command()(_cli_query.pareto)
app.command()(_cli_query.layers)
app.command()(_cli_query.export)
app.command()(_cli_query.status)
app.command()(_cli_query.best)
app.command()(_cli_apply.recommend)
app.command(name="apply")(_cli_apply.apply_command)
app.command()(_cli_run.sensitivity)
app.command()(_cli_apply.plot)
app.command()(_cli_query.dashboard)


def main() -> None:
    # As `python -m` does, a `package.module:factory` task may live in the working directory;
    # nothing else is imported from there (see _WorkingDirTasks).
    _TASK_MODULES.folder, _TASK_MODULES.names = os.getcwd(), set()
    sys.meta_path.append(_TASK_MODULES)
    try:
        code = _run(sys.argv[1:])
    finally:
        sys.meta_path.remove(_TASK_MODULES)
    sys.exit(code)


def _run(args: list[str]) -> int:
    """Run the command line; its exit code. Every mistake, click's own usage errors among
    them, ends in one ``error:`` line through :func:`_fail`."""
    command = typer.main.get_command(app)
    try:
        # Not standalone: click's usage errors come here instead of as a multi-line box.
        result = command.main(args=args, standalone_mode=False)
    except _CLICK_ERRORS as exc:
        code = int(getattr(exc, "exit_code", 2))
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `sweep`: its help was printed
            return code
        _fail(UserError(_click_message(exc, code)), code)
    except typer.Abort:  # end of input at a prompt, or an explicit abort
        _fail(UserError("aborted"), 1)
    except FAILURES as exc:
        _fail(exc, 1)
    except (*USER_ERRORS, UserError) as exc:
        _fail(exc, 2)
    # typer.Exit, --help and Ctrl-C (130) come back as their exit code; a command returns None.
    return result if isinstance(result, int) else 0


def _click_message(exc: BaseException, code: int) -> str:
    """click's message on one line; for a usage error (exit 2), the help to read."""
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    message = " ".join(str(text).split()).rstrip(".")
    if code != 2:
        return message
    ctx = getattr(exc, "ctx", None)
    parent = getattr(ctx, "parent", None)
    command = f"sweep {ctx.info_name}" if ctx is not None and parent is not None else "sweep"
    return f"{message}; see {command} --help"


def _fail(exc: BaseException, code: int) -> NoReturn:
    # Ray first: its processes log their own shutdown (tasks still in flight), and the
    # user's last line on screen must be the one that says what went wrong.
    _ray_session.disconnect_ray()
    err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)
