"""The ``sweep`` command line. User mistakes exit 2 with one line; failures outside them exit 1."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, NoReturn

import pandas as pd
import typer
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from storage import FencedError, StorageError, StorageFullError, Store
from sweep import (
    _apply,
    _bounds,
    _driver,
    _export,
    _output,
    _plot,
    _recommend,
    _remeasure,
    _sensitivity,
    _status,
)
from sweep._config import DEFAULT_STORAGE, ConfigError, SweepConfig
from sweep._config_read import check_name, load_config, parse_config
from trials import BUILTIN_TASKS, STANDALONE_LOAD, RecipeError, TaskError, task_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search per-layer pruning and int8 quantization recipes on Ray; query the Pareto front.",
)
# Outside a terminal (pipes, CI logs) rich would wrap tables at 80 columns: give them room.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
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
FAILURES = (StorageFullError, FencedError, _output.DiskFullError, _driver.RayStartError)
# click's own errors (usage errors exit 2). typer >= 0.20 raises those of the click it vendors,
# older typer those of click itself: the public typer.BadParameter leads to their base class.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    c
    for c in typer.BadParameter.__mro__
    if issubclass(c, Exception) and c.__name__ == "ClickException"
)

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


FRONT_REFRESH_S = 3.0


def _store(url: str | None, *, create: bool = False) -> Store:
    """The store at ``url``; only commands that start sweeps create one (``create``)."""
    return Store(url or DEFAULT_STORAGE, create=create)


@app.command()
def launch(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="The sweep's YAML config.")],
    name: Annotated[
        str | None, typer.Option(help="Sweep name (default: the config's name).")
    ] = None,
    storage: StorageOption = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", min=1, help="Trial budget.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address; none starts a local Ray.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Delete a stored sweep of the same name first.")
    ] = False,
) -> None:
    """Run a sweep and print its Pareto front."""
    config = load_config(config_path)
    _task_importable(config.task)
    updates: dict[str, object] = {}
    if name is not None:
        updates["name"] = check_name(name)
    if n_trials is not None:
        updates["budget"] = config.budget.model_copy(update={"n_trials": n_trials})
    if address is not None:
        updates["ray_address"] = address
    task_path = task_file(config.task)
    if task_path is not None:  # workers run elsewhere: they get the file the user meant, absolute
        updates["task"] = f"{task_path}:{config.task.rpartition(':')[2]}"
    if updates:
        config = parse_config({**config.model_dump(), **updates}, str(config_path))
    _driver.validate_before_ray(config)
    store = _store(storage or config.storage, create=True)
    if not replace and any(s.name == config.name for s in store.list_sweeps()):
        raise UserError(
            f"name: a sweep {config.name!r} already exists in {store.url_display}; "
            "choose another --name, or pass --replace to overwrite it"
        )
    if replace:  # refused before Ray starts; create_sweep checks again, atomically
        store.check_driver(config.name, stale_after_s=_status.stale_after_s(), action="replace")
    err.print(
        f"sweep [bold]{config.name}[/]: {config.budget.n_trials} trials of task "
        f"{config.task!r}, store {store.url_display}"
    )
    _driver.connect_ray(config.ray_address, config.task)
    config = _scan_first(config, store)
    _run_with_progress(
        config.name,
        store,
        config.budget.n_trials,
        lambda show: _driver.run_sweep(config, store, replace=replace, on_progress=show),
    )


class _FrontCount:
    """The size of the stored Pareto front, re-read at most every FRONT_REFRESH_S seconds (a
    query per finished trial would slow the driver on large sweeps)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        self.read_at = -math.inf
        self.value = 0

    def size(self, *, now: bool = False) -> int:
        if now or time.monotonic() - self.read_at >= FRONT_REFRESH_S:
            self.read_at = time.monotonic()
            self.value = len(self.store.pareto_front(self.name))
        return self.value


def _run_with_progress(
    name: str,
    store: Store,
    total: int,
    run: Callable[[_driver.ProgressFn], _driver.Progress],
    *,
    show_front: bool = True,
) -> None:
    """Run a sweep under a live progress bar, then print its front (unless not wanted)."""
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    front_count = _FrontCount(store, name)
    with Progress(*columns, console=err, transient=False) as bar:
        task_id = bar.add_task("trials", total=total, detail="starting")
        done_before: int | None = None
        trials_started = started

        def show(p: _driver.Progress) -> None:
            if p.phase is not None:  # before the first trial: what takes the time
                bar.update(task_id, total=p.total, completed=p.done, detail=p.phase)
                return
            # Counted from the first trial, as `sweep status` counts from the sweep's creation:
            # Ray's start-up is not trial time. A resumed sweep's old trials are not this rate.
            nonlocal done_before, trials_started
            if done_before is None:
                done_before, trials_started = p.done, time.monotonic()
            state = _status.progress(
                name,
                "RUNNING",
                total=p.total,
                done=p.done,
                running=p.running,
                failed=p.failed,
                pruned=p.pruned,
                front_size=front_count.size(now=p.done >= p.total),
                best=p.best,
                elapsed_s=time.monotonic() - trials_started,
                done_before=done_before,
            )
            detail = _status.bar_detail(state, _output._cell)
            bar.update(task_id, total=state.total, completed=p.done, detail=detail)

        try:
            result = run(show)
        except KeyboardInterrupt:
            err.print(
                f"interrupted: finished trials are stored in {store.url_display}; "
                f"continue with `sweep resume {name}`"
            )
            raise typer.Exit(130) from None
        except StorageFullError as exc:
            raise StorageFullError(f"{exc}; `sweep resume {name}` continues this sweep") from None
        show(result)  # once more, now that every result is stored: the exact front size
    elapsed = time.monotonic() - started
    err.print(
        f"{result.done} trials in {elapsed:.1f} s ({60 * result.done / elapsed:.1f} per minute); "
        f"{result.failed} failed, {result.pruned} pruned"
    )
    if not show_front:
        return
    front = store.pareto_front(name)
    _output.render(front, "table", out, title=f"Pareto front of {name} ({len(front)} trials)")
    _note_hardware(store.trials(name, states=["COMPLETE"]))


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="The sweep to finish.")],
    storage: StorageOption = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="New total trial budget.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address; none uses the sweep's, else a local Ray.")
    ] = None,
) -> None:
    """Finish a stopped sweep: re-run the trials in flight, then the rest of the budget."""
    store = _store(storage)
    config = _driver.stored_config(store, name)
    info = store.get_sweep(name)
    done = sum(count for state, count in info.counts.items() if state != "RUNNING")
    if n_trials is not None and n_trials < done:
        raise ConfigError(
            f"--n-trials: {n_trials} is below the {done} trials sweep {name} has done; "
            f"give at least {done}"
        )
    total = n_trials or config.budget.n_trials
    store.check_driver(name, stale_after_s=_status.stale_after_s(), action="resume")
    if info.status == "FINISHED" and not info.counts.get("RUNNING") and done >= total:
        # Nothing to run: no Ray, and not a byte written (timestamps and budget stay as stored).
        err.print(f"nothing to resume: {done}/{total} trials done")
        return
    _task_importable(config.task)
    _driver.validate_before_ray(config)
    err.print(f"resuming sweep [bold]{name}[/] to {total} trials, store {store.url_display}")
    _driver.connect_ray(address or config.ray_address, config.task)
    _run_with_progress(
        name,
        store,
        total,
        lambda show: _driver.resume_sweep(name, store, n_trials=n_trials, on_progress=show),
    )


@app.command()
def remeasure(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOption = None,
    time_s: Annotated[
        float | None,
        typer.Option("--time-s", help="Seconds per trial at most (default: latency.remeasure_s)."),
    ] = None,
    precision: Annotated[
        float | None,
        typer.Option(help="Interval half-width to reach, relative (default 0.1: ±10%)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address; none uses the sweep's, else a local Ray.")
    ] = None,
    fmt: ShortFormatOption = "table",
) -> None:
    """Time the front's trials again against the fp32 reference until each speedup's 95%
    interval is within ±precision (or the time bound passes); store and print the front."""
    _short_format(fmt)
    store = _store(storage)
    config = _driver.stored_config(store, name)
    if time_s is not None and not time_s > 0:
        raise UserError(f"--time-s: must be > 0, got {time_s:g}")
    if time_s is None and config.latency.remeasure_s == 0:
        raise UserError(f"--time-s: {name} does not time its front again (latency.remeasure_s 0)")
    if precision is not None and not 0 < precision < 1:
        raise UserError(f"--precision: must be between 0 and 1, got {precision:g}")
    models = _remeasure.stored_models(store, name)
    _task_importable(config.task)
    err.print(f"timing the front of {name} again, store {store.url_display}")
    _driver.connect_ray(address or config.ray_address, config.task)
    _remeasure.remeasure_stored(config, store, models, precision=precision, time_s=time_s)
    front = store.pareto_front(name)
    _output.render(front, fmt, out, title=f"Pareto front of {name} ({len(front)} trials)")


@app.command()
def trials(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    where: WhereOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="RUNNING, COMPLETE, PRUNED or FAIL, repeatable."),
    ] = None,
    storage: StorageOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """List the trials of a sweep, optionally filtered."""
    fmt = _output.resolve_format(fmt, output)
    frame = _store(storage).trials(name, states=state or None, where=where or None)
    _output.render(frame, fmt, out, title=f"Trials of {name}", output=output)
    _wrote(frame, output)
    _note_hardware(frame)


def _wrote(frame: pd.DataFrame, output: Path | None) -> None:
    if output is not None:
        err.print(f"wrote {len(frame)} rows to {output}", highlight=False)


def _stream(
    states: list[_status.SweepProgress], fmt: str, header: list[str] | None
) -> list[str] | None:
    """One refresh of ``status --watch`` as a stream: JSON Lines (an object per sweep), or CSV
    rows under a header that is printed again only when the columns change; the header shown."""
    frame = _status.frame(states)
    if fmt == "json":
        for record in _output.records(frame):
            out.out(json.dumps(record), highlight=False)
        return header
    columns = [str(c) for c in frame.columns]
    out.out(frame.to_csv(index=False, header=columns != header).rstrip("\n"), highlight=False)
    return columns


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


@app.command()
def pareto(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    objective: ObjectiveOption = None,
    where: WhereOption = None,
    storage: StorageOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
    infeasible: InfeasibleOption = False,
) -> None:
    """List the non-dominated COMPLETE trials of a sweep (those that meet its constraints)."""
    fmt = _output.resolve_format(fmt, output)
    front = _store(storage).pareto_front(
        name, _objectives(objective or []), where=where or None, feasible_only=not infeasible
    )
    title = f"Pareto front of {name} ({len(front)} trials)"
    _output.render(front, fmt, out, title=title, output=output)
    _wrote(front, output)
    _note_hardware(front)


def _layers_title(name: str, summary: pd.DataFrame) -> str:
    over = "its Pareto front" if summary.attrs.get("front_only") else "its COMPLETE trials"
    best = summary.attrs.get("best_number")
    text = f"{name}: pruning amount per layer over {over} ({summary.attrs.get('trials', 0)} trials"
    if best is not None:
        accuracy = summary.attrs.get("best_accuracy")
        shown = "" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"
        text += f"; at_best = trial {best}{shown}"
    return text + ")"


@app.command()
def layers(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    front: Annotated[
        bool,
        typer.Option(
            "--front/--all", help="Over the Pareto front (default) or every COMPLETE trial."
        ),
    ] = True,
    compare: Annotated[
        str | None,
        typer.Option("--compare", metavar="OTHER", help="Another sweep, side by side."),
    ] = None,
    objective: ObjectiveOption = None,
    where: WhereOption = None,
    storage: StorageOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
    infeasible: InfeasibleOption = False,
) -> None:
    """How much each layer tolerates: min, median and max pruning amount over the front, and
    the amount in its most accurate trial."""
    fmt = _output.resolve_format(fmt, output)
    if compare is not None and compare == name:
        raise UserError(f"--compare: {compare!r} is the sweep itself; name another sweep")
    store = _store(storage)
    objectives = _objectives(objective or [])

    def summary_of(sweep: str) -> pd.DataFrame:
        return store.layer_summary(
            sweep, objectives, where=where or None, front_only=front, feasible_only=not infeasible
        )

    summary = summary_of(name)
    title = _layers_title(name, summary)
    if compare is not None:
        other = summary_of(compare)
        joined = _output.side_by_side(summary, name, other, compare)
        if joined.empty:
            mine = ", ".join(summary["layer"][:5]) or "none"
            theirs = ", ".join(other["layer"][:5]) or "none"
            raise UserError(
                f"--compare: sweeps {name!r} and {compare!r} have no layer in common "
                f"({name}: {mine}; {compare}: {theirs})"
            )
        title += f" vs {_layers_title(compare, other)}"
        summary = joined
    _output.render(summary, fmt, out, title=title, output=output, columns=list(summary.columns))
    _wrote(summary, output)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Sweep name; also the Optuna study's name.")],
    optuna_storage: Annotated[
        str,
        typer.Option(
            "--optuna-storage",
            metavar="URL",
            help="Optuna storage URL, e.g. sqlite:///optuna.db (optuna-dashboard reads it).",
        ),
    ],
    replace: Annotated[
        bool, typer.Option(help="Overwrite a study of the same name in that storage.")
    ] = False,
    storage: StorageOption = None,
) -> None:
    """Write a sweep as an Optuna study, for optuna-dashboard and Optuna's own tools."""
    done = _export.export_study(_store(storage), name, optuna_storage, replace=replace)
    left_out = f"; {done.running_left_out} RUNNING trials left out" if done.running_left_out else ""
    err.print(
        f"exported {done.trials} trials of {name} to Optuna study {done.study!r} in "
        f"{done.url}{left_out}; browse it with: optuna-dashboard {done.url}",
        highlight=False,
    )


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="One sweep (default: all).")] = None,
    storage: StorageOption = None,
    fmt: ShortFormatOption = "table",
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Refresh until no shown sweep is RUNNING (Ctrl-C stops watching, exit 0).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between --watch refreshes.")
    ] = 2.0,
) -> None:
    """Show sweeps and their progress: done, running, failed, pruned, front size, best value
    of each objective, elapsed and (while RUNNING) an estimate of the time remaining."""
    _short_format(fmt)
    store = _store(storage)

    def read() -> list[_status.SweepProgress]:
        infos = [store.get_sweep(name)] if name else store.list_sweeps()
        return [_status.from_store(store, info) for info in infos]

    def render(states: list[_status.SweepProgress]) -> RenderableType | None:
        title = f"Sweeps in {store.url_display}"
        if fmt == "table":
            frame = _status.table_frame(states, _output._cell)
            return _output.table(frame, title, _status.TABLE_COLUMNS)
        _output.render(_status.frame(states), fmt, out)
        return None

    states = read()
    if not watch:
        shown = render(states)
        if shown is not None:
            out.print(shown)
        return
    try:
        if fmt != "table":
            header: list[str] | None = None
            while True:  # csv/json: a stream for a log or a pipe, parseable as it grows
                header = _stream(states, fmt, header)
                if not any(s.status == "RUNNING" for s in states):
                    return
                time.sleep(interval)
                states = read()
        with Live(render(states), console=out, auto_refresh=False) as live:
            while any(s.status == "RUNNING" for s in states):
                time.sleep(interval)
                states = read()
                live.update(render(states) or "", refresh=True)
    except KeyboardInterrupt:
        return  # stopping to watch is not a failure: the sweep runs on


@app.command()
def best(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    objective: ObjectiveOption = None,
    storage: StorageOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """The best COMPLETE trial for each objective on its own (default: the sweep's)."""
    fmt = _output.resolve_format(fmt, output)
    chosen = _objectives(objective or [])
    frame = _recommend.best_per_objective(_store(storage), name, chosen)
    columns = ["best_for", *(c for c in _output.TABLE_COLUMNS if c in frame)]
    title = f"Best trial of {name} per objective"
    _output.render(frame, fmt, out, title=title, output=output, columns=columns)
    _wrote(frame, output)
    _note_hardware(frame)


@app.command()
def recommend(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", help="Largest accuracy drop vs fp32, a fraction (0.01 = 1 pt)."),
    ] = None,
    minimize: Annotated[
        str | None, typer.Option("--minimize", metavar="METRIC", help="Metric to minimize.")
    ] = None,
    maximize: Annotated[
        str | None, typer.Option("--maximize", metavar="METRIC", help="Metric to maximize.")
    ] = None,
    where: WhereOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the trial's recipe (JSON)."),
    ] = None,
    storage: StorageOption = None,
    fmt: ShortFormatOption = "table",
    infeasible: InfeasibleOption = False,
) -> None:
    """The trial that meets the constraints (and the sweep's own) and is best on one metric;
    -o writes its recipe. Exits 1, writing nothing, when no trial meets the constraints."""
    _short_format(fmt)
    if (minimize is None) == (maximize is None):
        raise UserError("give exactly one of --minimize METRIC or --maximize METRIC")
    if output is not None:
        # Before the query: not a recommendation shown, then an error.
        _output.check_output_file(output, example="recipe.json")
    metric, direction = (minimize, "min") if minimize is not None else (maximize, "max")
    goal = _recommend.Goal(str(metric), direction, max_drop, tuple(where or ()))
    store = _store(storage)
    try:
        trial = _recommend.recommend(store, name, goal, feasible_only=not infeasible)
    except _recommend.NoMatchError as exc:
        err.print(f"no match: {exc}", highlight=False, markup=False, soft_wrap=True)
        _output.render(exc.closest, "table", err, title=f"Closest trials of {name}")
        raise typer.Exit(1) from None
    frame = trial.to_frame().T
    _output.render(frame, fmt, out, title=f"Recommended: trial {trial['number']} of {name}")
    _note_hardware(store.trials(name, states=["COMPLETE"]))
    if output is not None:
        _recommend.write_recipe(_recommend.recipe_document(store, name, trial), output)
        err.print(f"wrote the recipe of trial {trial['number']} to {output}", highlight=False)


def _stored_metrics(
    source: dict[str, object], from_trial: str | None, storage: str | None
) -> tuple[dict[str, float], str]:
    """The stored trial to compare with: ``--from SWEEP:NUMBER``, else the recipe's source."""
    if from_trial is None:
        metrics = source.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            return {}, ""
        return metrics, f"trial {source.get('trial')} of {source.get('sweep')}"
    sweep_name, sep, number = from_trial.rpartition(":")
    if not sep or not sweep_name or not number.isdigit():
        raise UserError(f"--from: {from_trial!r} must look like SWEEP:NUMBER")
    rows = _store(storage).trials(sweep_name, where=f"number == {int(number)}")
    if rows.empty:
        raise UserError(f"--from: sweep {sweep_name!r} has no trial {number}")
    row = rows.iloc[0]
    metrics = {k: float(row[k]) for k in _recommend.SOURCE_METRICS if pd.notna(row.get(k))}
    return metrics, f"trial {number} of {sweep_name}"


@app.command(name="apply")
def apply_command(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe JSON file.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to save the int8 model.")
    ],
    task: Annotated[
        str | None,
        typer.Option(help="Task (built-in name or module:factory); default: the recipe's own."),
    ] = None,
    task_setting: Annotated[
        list[str] | None,
        typer.Option("--task-setting", metavar="NAME=VALUE", help="Task setting, repeatable."),
    ] = None,
    from_trial: Annotated[
        str | None,
        typer.Option("--from", metavar="SWEEP:NUMBER", help="Stored trial to compare with."),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(help="Accept a recipe that leaves some prunable layers out (kept as is)."),
    ] = False,
    device: Annotated[str, typer.Option(help="Fine-tuning device: cpu or cuda.")] = "cpu",
    storage: StorageOption = None,
    fmt: ShortFormatOption = "table",
) -> None:
    """Run a recipe once more on its task, save the int8 model as its runtime's file (an .onnx
    for onnxruntime), and compare accuracy, size and latency with the stored trial."""
    _short_format(fmt)
    recipe_file = _apply.read_recipe(recipe_path)
    settings = _apply.parse_settings(task_setting or [])
    _task_importable(task or recipe_file.source.get("task"))
    stored, label = _stored_metrics(recipe_file.source, from_trial, storage)
    err.print(f"applying {recipe_path} ...", highlight=False)
    applied = _apply.apply_file(
        recipe_file,
        output,
        task=task,
        settings=settings,
        allow_missing=allow_missing,
        device=device,
    )
    shown = [name for name in _recommend.SOURCE_METRICS if name in applied.metrics]
    if fmt != "table":  # for scripts: one row per metric, the stored trial's value beside
        rows = pd.DataFrame(
            {
                "metric": shown,
                "applied": [applied.metrics[name] for name in shown],
                "stored": [stored.get(name) if stored else None for name in shown],
            }
        )
        _output.render(rows, fmt, out)
    else:
        table = Table(title=f"{recipe_path} on task {applied.task!r}, saved to {output}")
        table.add_column("metric")
        table.add_column("applied", justify="right")
        if stored:
            table.add_column(f"stored ({label})", justify="right")
        for name in shown:
            if name in ("speedup_low", "speedup_high"):
                continue  # shown with the speedup: "3.30x (3.10-3.50)"
            like = name.removeprefix("fp32_")  # formatted as the int8 metric it matches
            cells = [_apply.cell(name, like, applied.metrics)]
            if stored:
                cells.append(_apply.cell(name, like, stored))
            table.add_row(name, *cells)
        out.print(table)
    runtime = recipe_file.recipe.runtime
    err.print(
        f"run it: {STANDALONE_LOAD[runtime].format(path=str(output))} "
        f"(nothing of sweep needed), or trials.load_int8({str(output)!r})",
        highlight=False,
    )


def _scan_first(config: SweepConfig, store: Store) -> SweepConfig:
    """Run the sensitivity scan a sweep at a sparsity constraint seeds from, if it has none
    (:func:`_sensitivity.planned_scan`); the scan's trials come out of the sweep's budget."""
    plan = _sensitivity.planned_scan(config, store)
    if plan is None:
        return config
    left = config.budget.n_trials - plan.trials
    err.print(
        f"no sensitivity scan to seed a search at {plan.target:.0%} sparsity: scanning "
        f"{plan.layers} layers alone at {', '.join(f'{a:g}' for a in plan.amounts)} first as "
        f"[bold]{plan.name}[/] ({plan.trials} trials without fine-tuning, within the budget: "
        f"the search gets {left})"
    )
    _run_with_progress(
        plan.name,
        store,
        0,
        lambda show_progress: _sensitivity.run_scan(
            config,
            store,
            name=plan.name,
            amounts=plan.amounts,
            granularities=(config.search_space.granularities[0],),
            finetune_epochs=0,
            on_progress=show_progress,
        ),
        show_front=False,
    )
    return config.model_copy(update={"budget": config.budget.model_copy(update={"n_trials": left})})


@app.command()
def sensitivity(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="The sweep's YAML config.")],
    name: Annotated[
        str | None, typer.Option(help="Scan name (default: <config name>-sensitivity).")
    ] = None,
    amounts: Annotated[
        str | None,
        typer.Option(help="Amounts to scan, e.g. 0.3,0.5,0.7 (default: the config's grid)."),
    ] = None,
    granularities: Annotated[
        list[str] | None,
        typer.Option(
            "--granularities",
            help="per_tensor or per_channel, repeatable (default: config's first).",
        ),
    ] = None,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", min=0, help="Fine-tuning after pruning (0: none).")
    ] = 0,
    max_drop: Annotated[
        float, typer.Option("--max-drop", min=0, max=1, help="Accuracy drop a safe amount keeps.")
    ] = 0.01,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="PNG plot (default: <scan name>.png)."),
    ] = None,
    show: Annotated[
        bool, typer.Option(help="Show a stored scan of that name; run nothing.")
    ] = False,
    storage: StorageOption = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address; none starts a local Ray.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Delete a stored scan of the same name first.")
    ] = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Prune each layer alone at increasing amounts; table and plot of accuracy drop per layer,
    most sensitive first. The scan is stored as a sweep (`sweep trials NAME` lists it)."""
    fmt = _output.resolve_format(fmt, output)
    config = load_config(config_path)
    _task_importable(config.task)
    scan = check_name(name or _sensitivity.scan_name(config))
    store = _store(storage or config.storage, create=True)
    if not show:
        chosen = _sensitivity.check_granularities(config, granularities or [])
        grid = (
            _sensitivity.parse_amounts(amounts) if amounts else _sensitivity.default_amounts(config)
        )
        _driver.validate_before_ray(config)
        if not replace and any(s.name == scan for s in store.list_sweeps()):
            raise UserError(
                f"--name: a sweep {scan!r} already exists in {store.url_display}; pass --replace "
                "to run the scan again, or --show to show it"
            )
        err.print(
            f"scan [bold]{scan}[/]: each layer alone at {len(grid)} amounts, "
            f"{', '.join(chosen)}, {finetune_epochs} fine-tuning epoch(s); "
            f"store {store.url_display}"
        )
        if address is not None:
            config = config.model_copy(update={"ray_address": address})
        _run_with_progress(
            scan,
            store,
            0,
            lambda show_progress: _sensitivity.run_scan(
                config,
                store,
                name=scan,
                amounts=grid,
                granularities=chosen,
                finetune_epochs=finetune_epochs,
                replace=replace,
                on_progress=show_progress,
            ),
            show_front=False,
        )
    results = _bounds.scan_results(store, scan)
    table = _sensitivity.sensitivity_table(results, max_drop)
    title = (
        f"{scan}: accuracy lost to pruning each layer alone (vs unpruned int8), most sensitive "
        f"first; amount_safe keeps it <= {max_drop:g}"
    )
    _output.render(table, fmt, out, title=title, output=output, columns=list(table.columns))
    _wrote(table, output)
    target = plot or Path(f"{scan}.png")
    _sensitivity.plot(results, table, max_drop, target)
    err.print(f"plot: {target}", highlight=False)


@app.command()
def plot(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for NAME.png/.html.")
    ] = Path("."),
    storage: StorageOption = None,
) -> None:
    """Plot the front (accuracy vs size and latency) and the hypervolume over trials."""
    for path in _plot.plot_sweep(_store(storage), name, output):
        err.print(f"wrote {path}", highlight=False)


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
    _driver.disconnect_ray()
    err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)
