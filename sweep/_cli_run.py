"""The ``sweep`` commands that run trials: launch, resume, remeasure and sensitivity."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from storage import StorageFullError, Store
from sweep import _bounds, _driver, _loop, _output, _ray_session, _remeasure, _sensitivity, _status
from sweep._cli_common import (
    FormatOption,
    OutputOption,
    ShortFormatOption,
    StorageOption,
    UserError,
    _note_hardware,
    _short_format,
    _store,
    _task_importable,
    _wrote,
    err,
    out,
)
from sweep._config import ConfigError, SweepConfig
from sweep._config_read import check_name, load_config, parse_config
from trials import task_file

FRONT_REFRESH_S = 3.0


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
    _ray_session.connect_ray(config.ray_address, config.task)
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
    run: Callable[[_loop.ProgressFn], _loop.Progress],
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

        def show(p: _loop.Progress) -> None:
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
    _ray_session.connect_ray(address or config.ray_address, config.task)
    _run_with_progress(
        name,
        store,
        total,
        lambda show: _driver.resume_sweep(name, store, n_trials=n_trials, on_progress=show),
    )


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
    _ray_session.connect_ray(address or config.ray_address, config.task)
    _remeasure.remeasure_stored(config, store, models, precision=precision, time_s=time_s)
    front = store.pareto_front(name)
    _output.render(front, fmt, out, title=f"Pareto front of {name} ({len(front)} trials)")


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
