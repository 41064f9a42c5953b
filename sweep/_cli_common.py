"""What the ``sweep`` commands share: options, consoles, the store, user errors and the
working-directory task import."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console

from storage import Store
from sweep import _output
from sweep._config import DEFAULT_STORAGE
from trials import BUILTIN_TASKS

# Outside a terminal (pipes, CI logs) rich would wrap tables at 80 columns: give them room.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="SWEEP_STORAGE",
        help=f"Store URL (default {DEFAULT_STORAGE}; PostgreSQL: postgresql+psycopg://...).",
    ),
]
ShortFormatOption = Annotated[
    str, typer.Option("--format", help="table, csv or json (default table).")
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="table, csv, json or parquet (default: the -o file's extension, else table).",
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="Write to FILE (parquet needs one) instead."
    ),
]
WhereOption = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help='Constraint such as "accuracy >= 0.97", repeatable; at most 100 comparisons and '
        "10,000 characters in all.",
    ),
]
ObjectiveOption = Annotated[
    list[str] | None,
    typer.Option(
        "--objective", help="METRIC:max|min, repeatable (default: the sweep's objectives)."
    ),
]
InfeasibleOption = Annotated[
    bool,
    typer.Option(
        "--infeasible",
        help="Also trials outside the sweep's search_space.constraints (left out by default).",
    ),
]


class UserError(Exception):
    """A mistake the user can fix; the message says how."""


class _WorkingDirTasks(importlib.abc.MetaPathFinder):
    """Imports the user's task module (``package.module:factory``) from the working directory,
    and nothing else from there: a stray ``matplotlib.py`` beside a config must never run in
    place of the library. Last on ``sys.meta_path``, so installed modules win."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.names: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None or self.folder is None or fullname not in self.names:
            return None  # a submodule is found through its package's own __path__
        return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])


_TASK_MODULES = _WorkingDirTasks()


def _task_importable(spec: object) -> None:
    """Let the top-level module of a ``package.module:factory`` task come from the working
    directory, as the README promises (built-in names and ``file.py:factory`` need nothing)."""
    if not isinstance(spec, str) or spec in BUILTIN_TASKS:
        return  # not a task name (loading it says so), or one of ours
    module = spec.partition(":")[0]
    if not module or module.endswith(".py"):
        return
    _TASK_MODULES.names.add(module.split(".")[0])


def _store(url: str | None, *, create: bool = False) -> Store:
    """The store at ``url``; only commands that start sweeps create one (``create``)."""
    return Store(url or DEFAULT_STORAGE, create=create)


def _wrote(frame: pd.DataFrame, output: Path | None) -> None:
    if output is not None:
        err.print(f"wrote {len(frame)} rows to {output}", highlight=False)


def _short_format(fmt: str) -> None:
    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format: {fmt!r} is not one of table, csv, json")


def _note_hardware(frame: pd.DataFrame) -> None:
    """Latencies from several hardware classes are said to be so, on stderr (scripts reading
    stdout are not disturbed)."""
    note = _output.mixed_hardware_note(frame)
    if note is not None:
        err.print(note, highlight=False, markup=False, soft_wrap=True)


def _objectives(specs: list[str]) -> dict[str, str] | None:
    if not specs:
        return None
    parsed: dict[str, str] = {}
    for spec in specs:
        metric, sep, direction = spec.rpartition(":")
        if not sep or not metric or direction not in ("max", "min"):
            raise UserError(f"--objective: {spec!r} must look like METRIC:max or METRIC:min")
        if parsed.get(metric, direction) != direction:
            raise UserError(f"--objective: {metric!r} is given as both max and min; give it once")
        parsed[metric] = direction
    return parsed
