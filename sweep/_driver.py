"""The ask/tell loop: Optuna in the driver, trials as Ray tasks, results into the store.

The store is the source of truth. Trial numbers are the store's: a resumed sweep rebuilds its
Optuna study from the stored trials, re-runs the ones that were in flight with their stored
recipes and numbers, and asks new trials numbered after the last stored one.
"""

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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from storage import METRIC_COLUMNS, StorageError, Store, TrialRecord
from sweep import _remote
from sweep._config import ConfigError, SweepConfig, parse_config
from sweep._samplers import ask_recipe, enqueue_uniform, make_sampler, set_constraints
from sweep._space import Space, objective_values, select_layers
from trials import Recipe, TrialResult, resolve_task_factory

log = logging.getLogger("sweep")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Trials submitted beyond the free slots, so that a worker never waits for the driver to ask.
PREFETCH = 1
# How often the driver looks at intermediate values and time limits while trials run.
POLL_S = 0.25
# Keys the driver adds to the stored config beside the SweepConfig fields.
_STORED_EXTRAS = ("layers", "fp32_metrics")
_WRITE_RETRIES = 8
SLOTS_REFRESH_S = 5.0


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


def _new_study(config: SweepConfig, space: Space) -> optuna.Study:
    return optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=make_sampler(config, space),
    )


def _pruning_study(config: SweepConfig) -> optuna.Study | None:
    """Optuna's pruners work on single-objective studies only: this shadow study holds each
    trial's intermediate validation accuracy and decides whether to stop it."""
    settings = config.early_stopping
    pruner: optuna.pruners.BasePruner
    if settings.pruner == "none":
        return None
    if settings.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
        )
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_early_stopping_rate=0)
    return optuna.create_study(direction="maximize", pruner=pruner)


_MONITORS: dict[str, Any] = {}


def _monitor() -> Any:
    """This driver's TrialMonitor actor (a handle), started once per Ray job.

    It lives on the driver's node, so it survives the loss of any worker node.
    """
    job = ray.get_runtime_context().get_job_id()
    if job not in _MONITORS:
        here = ray.get_runtime_context().get_node_id()
        placement = NodeAffinitySchedulingStrategy(here, soft=False)
        actor = ray.remote(_remote.TrialMonitor).options(num_cpus=0, scheduling_strategy=placement)
        _MONITORS[job] = actor.remote()
    return _MONITORS[job]


def _describe(config: SweepConfig) -> tuple[Space, _remote.TaskInfo]:
    describe = ray.remote(num_cpus=config.resources.cpus_per_trial)(_remote.describe_task)
    info: _remote.TaskInfo = ray.get(describe.remote(config.task, config.task_settings))
    space = Space(
        tuple(select_layers(info.layers, config.search_space)),
        config.search_space,
        config.trial,
        info.structured_prunable,
        info.layer_params,
        info.params,
    )
    return space, info


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:2000]


def _update_best(
    progress: Progress, objectives: Mapping[str, str], metrics: Mapping[str, float]
) -> None:
    for name, direction in objectives.items():
        value = metrics[name]
        current = progress.best.get(name)
        if current is None or (value > current if direction == "max" else value < current):
            progress.best[name] = value


@dataclass
class _InFlight:
    number: int
    trial: optuna.trial.Trial
    recipe: dict[str, Any]
    started: datetime
    started_monotonic: float
    shadow: optuna.trial.Trial | None


class _Driver:
    def __init__(
        self,
        config: SweepConfig,
        store: Store,
        space: Space,
        study: optuna.Study,
        *,
        next_number: int,
        reruns: list[tuple[int, dict[str, Any]]],
        progress: Progress,
    ) -> None:
        self.config, self.store, self.space, self.study = config, store, space, study
        self.next_number = next_number
        self.reruns = reruns
        self.progress = progress
        self.shadow = _pruning_study(config)
        self.pending: list[TrialRecord] = []
        self.write_failures = 0
        self.retry_at = 0.0
        self.in_flight: dict[ray.ObjectRef, _InFlight] = {}
        self.by_number: dict[int, _InFlight] = {}
        resources = config.resources
        # Any: Ray's stubs type remote functions of at most ten arguments.
        execute_trial: Any = _remote.execute_trial
        self.execute = ray.remote(
            num_cpus=resources.cpus_per_trial,
            num_gpus=resources.gpus_per_trial,
            max_calls=0,  # reuse workers: a fresh process costs seconds of imports and CUDA init
            retry_exceptions=False,  # trial errors are results; Ray retries only lost workers
        )(execute_trial)
        self.monitor = _monitor()
        self.slots = 1
        self.slots_checked = -math.inf
        self._update_slots()

    def _update_slots(self) -> None:
        """Trials to keep running: ``max_concurrent``, else as many as the cluster holds now,
        re-read every few seconds so that the sweep follows nodes joining or leaving."""
        resources = self.config.resources
        if resources.max_concurrent is not None:
            self.slots = resources.max_concurrent
            return
        now = time.monotonic()
        if now - self.slots_checked < SLOTS_REFRESH_S:
            return
        self.slots_checked = now
        total = ray.cluster_resources()
        fits = [total.get("CPU", 0.0) // resources.cpus_per_trial]
        if resources.gpus_per_trial > 0:
            fits.append(total.get("GPU", 0.0) // resources.gpus_per_trial)
        self.slots = max(1, int(min(fits)))

    # -- submitting ---------------------------------------------------------------------------
    def _submit(self, number: int, trial: optuna.trial.Trial, recipe: dict[str, Any]) -> None:
        settings = self.config.trial
        ref = self.execute.remote(
            self.config.task,
            self.config.task_settings,
            recipe,
            self.config.name,
            number,
            self.monitor,
            self.shadow is not None,
            settings.latency_threads,
            settings.latency_repeats,
            self.config.resources.cpus_per_trial,
            self.config.resources.gpus_per_trial > 0,
        )
        shadow = self.shadow.ask() if self.shadow is not None else None
        now = datetime.now(timezone.utc)
        flight = _InFlight(number, trial, recipe, now, time.monotonic(), shadow)
        self.in_flight[ref] = flight
        self.by_number[number] = flight

    def _fill(self, asked_budget: int, deadline: float) -> None:
        self._update_slots()
        while len(self.in_flight) < self.slots + PREFETCH:
            if self.reruns:
                number, recipe = self.reruns.pop(0)
                parsed = Recipe.from_dict(recipe)
                self.study.enqueue_trial(self.space.params_of(parsed))
                trial = self.study.ask()
                set_constraints(trial, self.space, parsed)
                self._submit(number, trial, recipe)
                continue
            if self.next_number >= asked_budget or time.monotonic() >= deadline:
                return
            trial, asked = ask_recipe(self.study, self.space)
            recipe = asked.to_dict()
            number = self.next_number
            self.next_number += 1
            self._submit(number, trial, recipe)
            started = self.by_number[number].started
            self.pending.append(
                TrialRecord(number=number, state="RUNNING", recipe=recipe, started_at=started)
            )

    # -- finishing ----------------------------------------------------------------------------
    def _finish(self, ref: ray.ObjectRef, outcome: _remote.TrialOutcome | None, error: str) -> None:
        flight = self.in_flight.pop(ref)
        del self.by_number[flight.number]
        if outcome is None:
            result, attempt, worker = TrialResult("FAIL", error=error), 1, ""
        else:
            result, attempt = outcome.result, outcome.attempt
            worker = f"{outcome.node[:12]}/{outcome.result.worker}"
        objectives = self.config.objectives
        if result.state == "COMPLETE":
            values = objective_values(result.metrics, objectives)
            if all(math.isfinite(v) for v in values):
                self.study.tell(flight.trial, values)
                _update_best(self.progress, objectives, result.metrics)
            else:
                reason = f"an objective is not finite: {dict(zip(objectives, values, strict=True))}"
                result = TrialResult("FAIL", result.metrics, result.timings, reason, result.worker)
        if result.state == "FAIL":
            self.study.tell(flight.trial, state=optuna.trial.TrialState.FAIL)
            self.progress.failed += 1
        elif result.state == "PRUNED":
            self.study.tell(flight.trial, state=optuna.trial.TrialState.PRUNED)
            self.progress.pruned += 1
        if flight.shadow is not None and self.shadow is not None:
            if result.state == "COMPLETE":
                self.shadow.tell(flight.shadow, result.metrics["accuracy"])
            else:
                state = optuna.trial.TrialState[result.state]
                self.shadow.tell(flight.shadow, state=state)
        self.progress.done += 1
        self.pending.append(
            TrialRecord(
                number=flight.number,
                state=result.state,
                recipe=flight.recipe,
                metrics=dict(result.metrics),
                timings=dict(result.timings),
                started_at=flight.started,
                finished_at=datetime.now(timezone.utc),
                worker=worker,
                attempt=attempt,
                error=result.error,
                intermediate=dict(result.intermediate),
            )
        )

    def _collect(self, ready: list[ray.ObjectRef]) -> None:
        for ref in ready:
            try:
                outcome: _remote.TrialOutcome = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:
                # Lost after Ray's retries (the node died every time) or cancelled: a FAIL.
                self._finish(ref, None, _one_line(exc))
            else:
                self._finish(ref, outcome, "")

    def _enforce_time_limit(self) -> None:
        limit = self.config.trial.timeout_s
        if limit is None:
            return
        now = time.monotonic()
        for ref, flight in list(self.in_flight.items()):
            if now - flight.started_monotonic > limit:
                ray.cancel(ref, force=True)
                self._finish(ref, None, f"exceeded trial.timeout_s ({limit:g} s); cancelled")

    def _early_stopping(self) -> None:
        if self.shadow is None:
            return
        for number, step, value in ray.get(self.monitor.drain.remote(self.config.name)):
            flight = self.by_number.get(number)
            if flight is None or flight.shadow is None:
                continue
            flight.shadow.report(value, step)
            if flight.shadow.should_prune():
                self.monitor.stop.remote(self.config.name, number)

    # -- the store ----------------------------------------------------------------------------
    def _flush(self, final: bool = False) -> None:
        """Write what is pending, in one transaction.

        A failed write keeps the records and is tried again after a growing pause (0.5 s
        doubling to 30 s; on the last flush the driver waits it out), so a store that is
        unreachable for a while loses nothing. A write still failing after _WRITE_RETRIES
        pauses (about 90 s) stops the sweep with the store's error.
        """
        while self.pending:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                if not final:
                    return
                time.sleep(wait)
            try:
                self.store.record_trials(self.config.name, self.pending)
            except StorageError as exc:
                self.write_failures += 1
                if self.write_failures > _WRITE_RETRIES:
                    raise
                pause = min(30.0, 0.5 * 2 ** (self.write_failures - 1))
                self.retry_at = time.monotonic() + pause
                log.warning("store write failed (%s); retrying in %.1f s", exc, pause)
            else:
                self.pending = []
                self.write_failures = 0

    # -- the loop -----------------------------------------------------------------------------
    def run(self, on_progress: ProgressFn | None) -> Progress:
        budget = self.config.budget
        deadline = math.inf if budget.timeout_s is None else time.monotonic() + budget.timeout_s
        polling = self.shadow is not None or self.config.trial.timeout_s is not None
        status = "FINISHED"
        try:
            while True:
                self._fill(budget.n_trials, deadline)
                self._flush()
                if not self.in_flight:
                    break
                self.progress.running = min(len(self.in_flight), self.slots)
                if on_progress:
                    on_progress(self.progress)
                refs = list(self.in_flight)
                ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S if polling else None)
                if ready:
                    rest = [r for r in refs if r not in ready]
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                self._collect(ready)
                self._early_stopping()
                self._enforce_time_limit()
                if on_progress and ready:
                    on_progress(self.progress)
        except KeyboardInterrupt:
            # Trials still running stay RUNNING in the store: `sweep resume` re-runs them.
            status = "INTERRUPTED"
            for ref in self.in_flight:
                ray.cancel(ref, force=True)
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self.monitor.forget.remote(self.config.name)
            try:
                self._flush(final=True)
            finally:
                self.store.set_sweep_status(self.config.name, status)
        self.progress.running = 0
        return self.progress


def run_sweep(
    config: SweepConfig,
    store: Store,
    *,
    replace: bool = False,
    on_progress: ProgressFn | None = None,
) -> Progress:
    """Run ``config`` to its budget. The caller has connected Ray (:func:`connect_ray`)."""
    _monitor()  # starts now, while the task is described
    space, info = _describe(config)
    stored_config = {
        **config.model_dump(mode="json"),
        "layers": list(space.layers),
        "fp32_metrics": info.fp32_metrics,
    }
    store.create_sweep(config.name, stored_config, dict(config.objectives), replace=replace)
    study = _new_study(config, space)
    enqueue_uniform(study, space, config.sampler_settings.uniform_startup)
    driver = _Driver(
        config,
        store,
        space,
        study,
        next_number=0,
        reruns=[],
        progress=Progress(total=config.budget.n_trials),
    )
    return driver.run(on_progress)


def stored_config(store: Store, name: str) -> SweepConfig:
    """The config a sweep was launched with, as stored."""
    raw = store.get_sweep(name).config
    return parse_config({k: v for k, v in raw.items() if k not in _STORED_EXTRAS}, name)


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
    _monitor()
    space, _ = _describe(config)
    stored_layers = store.get_sweep(name).config.get("layers")
    if stored_layers is not None and list(stored_layers) != list(space.layers):
        raise ConfigError(
            f"{name}: the task's model no longer has the layers this sweep searched; "
            "launch a new sweep instead"
        )
    study = _new_study(config, space)
    distributions = space.distributions()
    trials = store.trials(name)
    progress = Progress(total=max(config.budget.n_trials, len(trials)))
    reruns: list[tuple[int, dict[str, Any]]] = []
    for row in trials.to_dict(orient="records"):
        recipe: dict[str, Any] = row["recipe"]
        number, state = int(row["number"]), str(row["state"])
        if state == "RUNNING":
            reruns.append((number, recipe))
            continue
        parsed = Recipe.from_dict(recipe)
        constraints = {
            f"constraints:{key}": value for key, value in space.constraint_values(parsed).items()
        }
        values = None
        if state == "COMPLETE":
            values = [float(row[objective]) for objective in config.objectives]
            _update_best(
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
                    system_attrs=constraints,  # where Trial.set_constraint keeps them
                )
            )
        except ValueError as exc:
            raise ConfigError(
                f"{name}: stored trial {number} does not fit the search space ({exc})"
            ) from None
        progress.done += 1
        progress.failed += state == "FAIL"
        progress.pruned += state == "PRUNED"
    store.set_sweep_status(name, "RUNNING")
    next_number = int(trials["number"].max()) + 1 if len(trials) else 0
    driver = _Driver(
        config, store, space, study, next_number=next_number, reruns=reruns, progress=progress
    )
    return driver.run(on_progress)
