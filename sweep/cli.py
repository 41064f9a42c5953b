"""The ``sweep`` command line. User mistakes exit 2 with one line; failures outside them exit 1."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from storage import StorageError, Store
from sweep import _driver, _export, _output, _plot
from sweep._config import DEFAULT_STORAGE, ConfigError, load_config
from trials import RecipeError, TaskError

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
    _plot.PlotError,
)

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="SWEEP_STORAGE",
        help=f"Store URL (default {DEFAULT_STORAGE}; PostgreSQL: postgresql+psycopg://...).",
    ),
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
    typer.Option("--where", help='Constraint such as "accuracy >= 0.97", repeatable.'),
]
ObjectiveOption = Annotated[
    list[str] | None,
    typer.Option(
        "--objective", help="METRIC:max|min, repeatable (default: the sweep's objectives)."
    ),
]


class UserError(Exception):
    """A mistake the user can fix; the message says how."""


def _store(url: str | None) -> Store:
    return Store(url or DEFAULT_STORAGE)


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
    updates: dict[str, object] = {}
    if name is not None:
        updates["name"] = name
    if n_trials is not None:
        updates["budget"] = config.budget.model_copy(update={"n_trials": n_trials})
    if address is not None:
        updates["ray_address"] = address
    if updates:
        config = type(config).model_validate({**config.model_dump(), **updates})
    _driver.validate_before_ray(config)
    store = _store(storage or config.storage)
    if not replace and any(s.name == config.name for s in store.list_sweeps()):
        raise UserError(
            f"name: a sweep {config.name!r} already exists in {store.url_display}; "
            "choose another --name, or pass --replace to overwrite it"
        )
    err.print(
        f"sweep [bold]{config.name}[/]: {config.budget.n_trials} trials of task "
        f"{config.task!r}, store {store.url_display}"
    )
    _driver.connect_ray(config.ray_address)
    _run_with_progress(
        config.name,
        store,
        config.budget.n_trials,
        lambda show: _driver.run_sweep(config, store, replace=replace, on_progress=show),
    )


def _run_with_progress(
    name: str,
    store: Store,
    total: int,
    run: Callable[[_driver.ProgressFn], _driver.Progress],
) -> None:
    """Run a sweep under a live progress bar, then print its front."""
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task_id = bar.add_task("trials", total=total, detail="starting")

        def show(p: _driver.Progress) -> None:
            best = ", ".join(f"{k} {_output._cell(k, v)}" for k, v in p.best.items())
            detail = f"running {p.running} failed {p.failed} pruned {p.pruned}" + (
                f" | best {best}" if best else ""
            )
            bar.update(task_id, total=p.total, completed=p.done, detail=detail)

        try:
            result = run(show)
        except KeyboardInterrupt:
            err.print(
                f"interrupted: finished trials are stored in {store.url_display}; "
                f"continue with `sweep resume {name}`"
            )
            raise typer.Exit(130) from None
    elapsed = time.monotonic() - started
    err.print(
        f"{result.done} trials in {elapsed:.1f} s ({60 * result.done / elapsed:.1f} per minute); "
        f"{result.failed} failed, {result.pruned} pruned"
    )
    front = store.pareto_front(name)
    _output.render(front, "table", out, title=f"Pareto front of {name} ({len(front)} trials)")


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
    _driver.validate_before_ray(config)
    total = n_trials or config.budget.n_trials
    err.print(f"resuming sweep [bold]{name}[/] to {total} trials, store {store.url_display}")
    _driver.connect_ray(address or config.ray_address)
    _run_with_progress(
        name,
        store,
        total,
        lambda show: _driver.resume_sweep(name, store, n_trials=n_trials, on_progress=show),
    )


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


def _wrote(frame: pd.DataFrame, output: Path | None) -> None:
    if output is not None:
        err.print(f"wrote {len(frame)} rows to {output}", highlight=False)


def _objectives(specs: list[str]) -> dict[str, str] | None:
    if not specs:
        return None
    parsed: dict[str, str] = {}
    for spec in specs:
        metric, sep, direction = spec.rpartition(":")
        if not sep or not metric or direction not in ("max", "min"):
            raise UserError(f"--objective: {spec!r} must look like METRIC:max or METRIC:min")
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
) -> None:
    """List the non-dominated COMPLETE trials of a sweep."""
    fmt = _output.resolve_format(fmt, output)
    front = _store(storage).pareto_front(name, _objectives(objective or []), where=where or None)
    title = f"Pareto front of {name} ({len(front)} trials)"
    _output.render(front, fmt, out, title=title, output=output)
    _wrote(front, output)


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
) -> None:
    """How much each layer tolerates: min, median and max pruning amount over the front, and
    the amount in its most accurate trial."""
    fmt = _output.resolve_format(fmt, output)
    if compare is not None and compare == name:
        raise UserError(f"--compare: {compare!r} is the sweep itself; name another sweep")
    store = _store(storage)
    objectives = _objectives(objective or [])
    summary = store.layer_summary(name, objectives, where=where or None, front_only=front)
    title = _layers_title(name, summary)
    if compare is not None:
        other = store.layer_summary(compare, objectives, where=where or None, front_only=front)
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
) -> None:
    """Show sweeps and their progress."""
    store = _store(storage)
    sweeps = [store.get_sweep(name)] if name else store.list_sweeps()
    table = Table(title=f"Sweeps in {store.url_display}")
    for column in (
        "name",
        "status",
        "trials",
        "complete",
        "running",
        "failed",
        "pruned",
        "updated",
    ):
        table.add_column(column)
    for info in sweeps:
        budget = info.config.get("budget", {}).get("n_trials", "?")
        c = info.counts
        table.add_row(
            info.name,
            info.status,
            f"{sum(c.values())}/{budget}",
            str(c["COMPLETE"]),
            str(c["RUNNING"]),
            str(c["FAIL"]),
            str(c["PRUNED"]),
            info.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


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
    # As `python -m` does: the user's task module in the working directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app()
    except (*USER_ERRORS, UserError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
