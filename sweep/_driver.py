"""The ask/tell loop: Optuna in the driver, trials as Ray tasks, results into the store."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
import ray

from storage import METRIC_COLUMNS, Store, TrialRecord
from sweep import _remote
from sweep._config import ConfigError, SweepConfig
from sweep._space import Space, objective_values, select_layers
from trials import TrialResult, resolve_task_factory

log = logging.getLogger("sweep")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Trials submitted beyond the free slots, so that a worker never waits for the driver to ask.
PREFETCH = 1


@dataclass
class Progress:
    """Counts that the driver updates and a front end renders."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    pruned: int = 0
    best: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


ProgressFn = Callable[[Progress], None]


def validate_before_ray(config: SweepConfig) -> None:
    """Everything that can be checked without starting Ray: exit 2 before any cluster work."""
    resolve_task_factory(config.task)
    numeric = set(METRIC_COLUMNS)
    for name in config.objectives:
        if name not in numeric:
            choices = ", ".join(sorted(numeric))
            raise ConfigError(f"objectives: {name!r} is not a trial metric (choose from {choices})")


def _sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    # constant_liar: trials in flight count as pessimistic guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, constant_liar=True)


def connect_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    ray.init(
        address=address or None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )


def _record(
    number: int, recipe: dict[str, Any], result: TrialResult, started: datetime
) -> TrialRecord:
    finished = datetime.now(timezone.utc)
    return TrialRecord(
        number=number,
        state=result.state,
        recipe=recipe,
        metrics=dict(result.metrics),
        timings=dict(result.timings),
        started_at=started,
        finished_at=finished,
        worker=result.worker,
        error=result.error,
        intermediate=dict(result.intermediate),
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:2000]


@dataclass
class _InFlight:
    trial: optuna.trial.Trial
    recipe: dict[str, Any]
    started: datetime


def run_sweep(
    config: SweepConfig,
    store: Store,
    *,
    replace: bool = False,
    on_progress: ProgressFn | None = None,
) -> Progress:
    """Run ``config`` to its budget. The caller has connected Ray (:func:`connect_ray`)."""
    describe = ray.remote(num_cpus=config.resources.cpus_per_trial)(_remote.describe_task)
    info: _remote.TaskInfo = ray.get(describe.remote(config.task, config.task_settings))
    space = Space(
        tuple(select_layers(info.layers, config.search_space)),
        config.search_space,
        config.trial,
        info.structured_prunable,
    )
    stored_config = {
        **config.model_dump(mode="json"),
        "layers": list(space.layers),
        "fp32_metrics": info.fp32_metrics,
    }
    store.create_sweep(config.name, stored_config, dict(config.objectives), replace=replace)

    study = optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=_sampler(config),
    )
    resources = config.resources
    execute = ray.remote(
        num_cpus=resources.cpus_per_trial,
        num_gpus=resources.gpus_per_trial,
        max_calls=0,  # reuse workers: a fresh process costs seconds of imports and CUDA init
        retry_exceptions=False,
    )(_remote.execute_trial)
    slots = resources.max_concurrent or max(
        1, int(ray.available_resources().get("CPU", 1) // resources.cpus_per_trial)
    )
    progress = Progress(total=config.budget.n_trials)
    in_flight: dict[ray.ObjectRef, _InFlight] = {}
    asked = 0
    deadline = (
        math.inf if config.budget.timeout_s is None else time.monotonic() + config.budget.timeout_s
    )
    status = "FINISHED"
    try:
        while True:
            started_now: list[TrialRecord] = []
            while (
                len(in_flight) < slots + PREFETCH
                and asked < config.budget.n_trials
                and time.monotonic() < deadline
            ):
                trial = study.ask()
                recipe = space.suggest(trial).to_dict()
                ref = execute.remote(
                    config.task,
                    config.task_settings,
                    recipe,
                    config.trial.latency_threads,
                    config.trial.latency_repeats,
                    resources.cpus_per_trial,
                )
                now = datetime.now(timezone.utc)
                in_flight[ref] = _InFlight(trial, recipe, now)
                started_now.append(
                    TrialRecord(number=trial.number, state="RUNNING", recipe=recipe, started_at=now)
                )
                asked += 1
            if started_now:
                store.record_trials(config.name, started_now)
            if not in_flight:
                break
            progress.running = min(len(in_flight), slots)
            if on_progress:
                on_progress(progress)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ready += ray.wait(
                [r for r in in_flight if r not in ready],
                num_returns=len(in_flight) - len(ready),
                timeout=0,
            )[0]
            finished = [_finish(study, in_flight.pop(ref), ref, config, progress) for ref in ready]
            store.record_trials(config.name, finished)
            if on_progress:
                on_progress(progress)
    except KeyboardInterrupt:
        status = "INTERRUPTED"
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        store.set_sweep_status(config.name, status)
    progress.running = 0
    return progress


def _finish(
    study: optuna.Study,
    flight: _InFlight,
    ref: ray.ObjectRef,
    config: SweepConfig,
    progress: Progress,
) -> TrialRecord:
    try:
        result: TrialResult = ray.get(ref)
    except (ray.exceptions.RayError, OSError) as exc:
        # The worker or its node died after Ray's retries: the trial failed, the sweep goes on.
        result = TrialResult("FAIL", error=_one_line(exc), worker="")
    progress.done += 1
    if result.state == "COMPLETE":
        values = objective_values(result.metrics, config.objectives)
        if all(math.isfinite(v) for v in values):
            study.tell(flight.trial, values)
            _update_best(progress, result.metrics, config.objectives)
        else:
            result = TrialResult(
                "FAIL",
                result.metrics,
                result.timings,
                f"an objective is not finite: {dict(zip(config.objectives, values, strict=True))}",
                result.worker,
            )
    if result.state == "FAIL":
        study.tell(flight.trial, state=optuna.trial.TrialState.FAIL)
        progress.failed += 1
    elif result.state == "PRUNED":
        study.tell(flight.trial, state=optuna.trial.TrialState.PRUNED)
        progress.pruned += 1
    return _record(flight.trial.number, flight.recipe, result, flight.started)


def _update_best(
    progress: Progress, metrics: Mapping[str, float], objectives: Mapping[str, str]
) -> None:
    for name, direction in objectives.items():
        value = metrics[name]
        current = progress.best.get(name)
        if current is None or (value > current if direction == "max" else value < current):
            progress.best[name] = value
