"""The ``sweep`` commands that read a store: trials, pareto, layers, export, status, best."""

from __future__ import annotations

import json
import time
from typing import Annotated

import pandas as pd
import typer
from rich.console import RenderableType
from rich.live import Live

from sweep import _export, _output, _recommend, _status
from sweep._cli_common import (
    FormatOption,
    InfeasibleOption,
    ObjectiveOption,
    OutputOption,
    ShortFormatOption,
    StorageOption,
    UserError,
    WhereOption,
    _note_hardware,
    _objectives,
    _short_format,
    _store,
    _wrote,
    err,
    out,
)


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


def dashboard(
    storage: StorageOption = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; off loopback a token is required."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            help="Token every request must carry (default: none on loopback, else a new one).",
            envvar="SWEEP_DASHBOARD_TOKEN",
            show_envvar=False,
        ),
    ] = None,
) -> None:
    """Serve a live, read-only web dashboard of the store's sweeps (Ctrl-C stops it)."""
    from sweep import _dashboard  # the web stack loads only for this command

    store = _store(storage)

    def announce(listening: _dashboard.Listening) -> None:
        address = listening.url
        if listening.token_generated:
            address += f"?token={listening.token}"
        err.print(f"dashboard of {store.url_display}: {address}", highlight=False)
        if listening.token_generated:
            err.print(
                "the token above is shown once; anyone who has it can read this store",
                highlight=False,
            )

    try:
        _dashboard.serve(store, host, port, token, on_listening=announce)
    except KeyboardInterrupt:
        return
