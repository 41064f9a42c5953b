"""Launching and resuming a sweep: describe the task on a worker, create (or claim) the stored
sweep, build the Optuna study, and hand over to the loop (``_loop``).

The store is the source of truth. Trial numbers are the store's: a resumed sweep rebuilds its
Optuna study from the stored trials, re-runs the ones that were in flight with their stored
recipes and numbers, and asks new trials numbered after the last stored one.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any

import optuna
import ray

from storage import FEASIBLE_KEY, METRIC_COLUMNS, Driver, Store
from storage._engine import mask_url
from sweep import _bounds, _ray_session, _remeasure, _remote, _resources, _submission, _target
from sweep._config import ConfigError, SweepConfig, grid_neighbours
from sweep._config_read import parse_config
from sweep._feasible import check_feasible, feasible_where
from sweep._hardware import FP32_LATENCY_KEY, FP32_SIZES_KEY, stored_reference
from sweep._loop import Progress, ProgressFn, TrialLoop, update_best
from sweep._ray_session import one_line
from sweep._samplers import (
    budget_note,
    constraint_attrs,
    enqueue_uniform,
    make_sampler,
    startup_trials,
)
from sweep._space import Space, select_layers
from sweep._status import stale_after_s
from trials import Recipe, TaskError, resolve_task_factory

log = logging.getLogger("sweep")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Keys the driver adds to the stored config beside the SweepConfig fields.
_STORED_EXTRAS = (
    "layers",
    "fp32_metrics",
    FP32_SIZES_KEY,
    FP32_LATENCY_KEY,
    "latency_baseline",
    "kind",
    _bounds.KIND,
    _bounds.BOUNDS_KEY,
    FEASIBLE_KEY,
)


def _phase_reporter(
    progress: Progress, on_progress: ProgressFn | None
) -> Callable[[str | None], None]:
    """Sets ``progress.phase`` and shows it (None: trials are about to run)."""

    def on_phase(text: str | None) -> None:
        progress.phase = text
        if on_progress is not None:
            on_progress(progress)

    return on_phase


def validate_before_ray(config: SweepConfig) -> None:
    """Everything that can be checked without starting Ray: exit 2 before any cluster work."""
    factory = resolve_task_factory(config.task)
    try:
        parameters = inspect.signature(factory)
    except (TypeError, ValueError):  # a callable without a signature (a C builtin): load tells
        parameters = None
    if parameters is not None:
        try:
            parameters.bind(**config.task_settings)
        except TypeError as exc:
            takes = ", ".join(parameters.parameters) or "no settings"
            raise ConfigError(
                f"task_settings: {exc} (the task {config.task!r} takes: {takes}); fix or remove "
                "the setting"
            ) from None
    numeric = set(METRIC_COLUMNS)
    for name in config.objectives:
        if name not in numeric:
            choices = ", ".join(sorted(numeric))
            raise ConfigError(f"objectives: {name!r} is not a trial metric (choose from {choices})")


def _new_study(config: SweepConfig, space: Space) -> optuna.Study:
    return optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=make_sampler(config, space),
    )


# How often the driver looks for what the describing worker reports (a baseline's epochs).
PHASE_POLL_S = 0.5
PhaseFn = Callable[[str], None]


def _describe(
    config: SweepConfig, on_phase: PhaseFn | None = None, *, start_workers: bool = False
) -> tuple[Space, _remote.TaskInfo]:
    """Check that the cluster can run a trial, then describe the task on a worker, passing
    what it reports meanwhile (it may train the baseline for minutes) to ``on_phase``; with
    ``start_workers`` (trials follow), start their worker processes meanwhile."""
    resources = config.resources
    _resources.require(_resources.demand(resources), resources.wait_for_nodes_s)
    describe = ray.remote(num_cpus=config.resources.cpus_per_trial)(_remote.describe_task)
    monitor = _ray_session.monitor() if on_phase is not None else None
    pending = describe.remote(
        config.task, config.task_settings, config.latency.runtime, monitor, config.name
    )
    if start_workers:
        _submission.start_workers(config)
    try:
        while monitor is not None and on_phase is not None:
            ready, _ = ray.wait([pending], timeout=PHASE_POLL_S)
            text = ray.get(monitor.take_phase.remote(config.name))
            if text is not None:
                on_phase(text)
            if ready:
                break
        info: _remote.TaskInfo = ray.get(pending)
    except ray.exceptions.RayTaskError as exc:
        # The user's task failed on the worker: one line, not the remote traceback.
        cause = exc.cause
        if isinstance(cause, TaskError | ConfigError):
            raise type(cause)(str(cause)) from None
        raise TaskError(f"task: {config.task} failed on a worker: {one_line(cause)}") from None
    space = Space(
        tuple(select_layers(info.layers, config.search_space)),
        config.search_space,
        config.trial,
        info.structured_prunable,
        backend=config.latency.backend,
        runtime=config.latency.runtime,
        dynamic_layers=info.dynamic_layers,
        layer_params=info.layer_params,
        model_params=info.params,
        coupled=tuple(tuple(group) for group in info.coupled),
        removable=info.removable,
    )
    return space, info


def run_sweep(
    config: SweepConfig,
    store: Store,
    *,
    replace: bool = False,
    on_progress: ProgressFn | None = None,
) -> Progress:
    """Run ``config`` to its budget. The caller has connected Ray (:func:`connect_ray`)."""
    progress = Progress(total=config.budget.n_trials)
    on_phase = _phase_reporter(progress, on_progress)
    _target.require_target(config)
    space, info = _describe(config, on_phase, start_workers=True)
    space = _bounds.bounded_space(store, config, space)
    check_feasible(space)
    note = budget_note(config, space)
    if note is not None:
        log.warning(note)
    if config.latency.target is not None:
        on_phase(f"timing the fp32 reference on {config.latency.target}")
    target = _target.prepare_target(config, None)
    stored_config = {
        **config.model_dump(mode="json"),
        # The store is readable by everyone who queries it: never keep a password there.
        "storage": None if config.storage is None else mask_url(config.storage),
        "layers": list(space.layers),
        "fp32_metrics": info.fp32_metrics,
        FP32_SIZES_KEY: list(info.fp32_sizes) if info.fp32_sizes else None,
        **({_bounds.BOUNDS_KEY: dict(space.upper)} if space.upper else {}),
        **({FEASIBLE_KEY: feasible_where(space)} if feasible_where(space) else {}),
    }
    if target is not None:
        stored_config["latency_baseline"] = target.stored()
    store.create_sweep(
        config.name,
        stored_config,
        dict(config.objectives),
        replace=replace,
        driver=Driver(),
        stale_after_s=stale_after_s(),
    )
    study = _new_study(config, space)
    seeds, seeding = _bounds.seed_params(store, config, space)
    if seeding is not None:
        (log.info if seeds else log.warning)(seeding)
    for params in seeds:
        study.enqueue_trial(params)
    bounds_from = config.search_space.bounds_from
    if bounds_from is not None and config.search_space.amount_mode == "independent":
        _bounds.enqueue_uniform(study, space, config)
    else:  # in relative mode a level with zero offsets is uniform, capped by any bounds
        count = startup_trials(config, space)[0]
        enqueue_uniform(study, space, bounds_from.enqueue_uniform if bounds_from else count)
    driver = TrialLoop(
        config,
        store,
        space,
        study,
        next_number=0,
        reruns=[],
        progress=progress,
        target=target,
        reference=stored_reference(stored_config),
    )
    on_phase(None)
    driver.run(on_progress)
    _remeasure.after_sweep(config, store, driver.front_models, on_phase)
    return driver.progress


def stored_config(store: Store, name: str) -> SweepConfig:
    """The config a sweep was launched with, as stored."""
    raw = {k: v for k, v in store.get_sweep(name).config.items() if k not in _STORED_EXTRAS}
    search = raw.get("search_space")
    if isinstance(search, dict) and "amount_mode" not in search:
        # Stored before amount modes existed: those sweeps drew each layer's amount on its own.
        search = raw["search_space"] = {**search, "amount_mode": "independent"}
    trial = raw.get("trial")
    if isinstance(trial, dict) and "round_to" not in trial:
        # Stored before round_to existed: those sweeps kept any channel count.
        raw["trial"] = {**trial, "round_to": 1}
    amount = search.get("amount") if isinstance(search, dict) else None
    if (
        isinstance(search, dict)
        and isinstance(amount, dict)
        and {"min", "max", "step"} <= set(amount)
    ):
        # Stored before a max off the step grid was refused: those sweeps searched up to the
        # grid point below it.
        below, _ = grid_neighbours(amount["min"], amount["max"], amount["step"])
        raw["search_space"] = {**search, "amount": {**amount, "max": below}}
    return parse_config(raw, name)


def resume_sweep(
    name: str,
    store: Store,
    *,
    n_trials: int | None = None,
    on_progress: ProgressFn | None = None,
) -> Progress:
    """Finish a stopped sweep: rebuild the study from the store, re-run the trials that were in
    flight (same numbers, same recipes), then ask new trials up to the budget."""
    config = stored_config(store, name)
    if n_trials is not None:
        config = config.model_copy(
            update={"budget": config.budget.model_copy(update={"n_trials": n_trials})}
        )
    progress = Progress(total=config.budget.n_trials)
    on_phase = _phase_reporter(progress, on_progress)
    _target.require_target(config)
    space, _ = _describe(config, on_phase, start_workers=True)
    stored = store.get_sweep(name).config
    target = _target.prepare_target(config, stored.get("latency_baseline"))
    # The bounds the sweep was launched with, even if its scan has been replaced since.
    space = dataclasses.replace(space, upper=stored.get(_bounds.BOUNDS_KEY) or {})
    stored_layers = stored.get("layers")
    if stored_layers is not None and list(stored_layers) != list(space.layers):
        raise ConfigError(
            f"{name}: the task's model no longer has the layers this sweep searched; "
            "launch a new sweep instead"
        )
    study = _new_study(config, space)
    distributions = space.distributions()
    # Owned before its trials are read: no other driver can add one after this point.
    store.claim_sweep(name, Driver(), stale_after_s=stale_after_s())
    trials = store.trials(name)
    progress.total = max(config.budget.n_trials, len(trials))
    hardware_classes = set(trials["measured_on"].dropna()) if len(trials) else set()
    reruns: list[tuple[int, dict[str, Any]]] = []
    for row in trials.to_dict(orient="records"):
        recipe: dict[str, Any] = row["recipe"]
        number, state = int(row["number"]), str(row["state"])
        if state == "RUNNING":
            reruns.append((number, recipe))
            continue
        parsed = Recipe.from_dict(recipe)
        values = None
        if state == "COMPLETE":
            values = [float(row[objective]) for objective in config.objectives]
            update_best(
                progress, config.objectives, dict(zip(config.objectives, values, strict=True))
            )
        try:
            params = space.params_of(parsed)  # ValueError: amounts the space cannot express
            study.add_trial(
                optuna.trial.create_trial(
                    params={k: v for k, v in params.items() if k in distributions},
                    distributions={k: d for k, d in distributions.items() if k in params},
                    values=values,
                    state=optuna.trial.TrialState[state],
                    system_attrs=constraint_attrs(space, parsed),
                )
            )
        except ValueError as exc:
            raise ConfigError(
                f"{name}: stored trial {number} does not fit the search space ({exc})"
            ) from None
        progress.done += 1
        progress.failed += state == "FAIL"
        progress.pruned += state == "PRUNED"
    if n_trials is not None:  # `sweep status` reads the budget from the store
        store.update_sweep_config(name, {"budget": config.budget.model_dump(mode="json")})
    next_number = int(trials["number"].max()) + 1 if len(trials) else 0
    driver = TrialLoop(
        config,
        store,
        space,
        study,
        next_number=next_number,
        reruns=reruns,
        progress=progress,
        target=target,
        hardware_classes=hardware_classes,
        reference=stored_reference(stored),
    )
    on_phase(None)
    driver.run(on_progress)
    _remeasure.after_sweep(config, store, driver.front_models, on_phase)
    return driver.progress
