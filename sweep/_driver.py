"""The ask/tell loop: Optuna in the driver, trials as Ray tasks, results into the store.

The store is the source of truth. Trial numbers are the store's: a resumed sweep rebuilds its
Optuna study from the stored trials, re-runs the ones that were in flight with their stored
recipes and numbers, and asks new trials numbered after the last stored one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import optuna
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from storage import (
    FEASIBLE_KEY,
    METRIC_COLUMNS,
    Driver,
    FencedError,
    StorageError,
    StorageFullError,
    Store,
    TrialRecord,
)
from storage._engine import mask_url
from sweep import _bounds, _remeasure, _remote, _resources, _shipping, _target
from sweep._config import ConfigError, SweepConfig, grid_neighbours
from sweep._config_read import parse_config
from sweep._feasible import check_feasible, feasible_where
from sweep._samplers import (
    ask_recipe,
    budget_note,
    enqueue_uniform,
    make_sampler,
    set_constraints,
    startup_trials,
)
from sweep._space import Space, objective_values, select_layers
from sweep._status import heartbeat_s, stale_after_s
from trials import (
    LatencySpec,
    LatencyStats,
    Recipe,
    Reference,
    TaskError,
    TrialResult,
    hardware_class,
    latency_metrics,
    resolve_task_factory,
)

log = logging.getLogger("sweep")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Trials submitted beyond the free slots, so that a worker never waits for the driver to ask.
PREFETCH = 1
# How often the driver looks at intermediate values and time limits while trials run.
POLL_S = 0.25
# Keys of a sweep's stored config: the fp32 model file's sizes, and the fp32 reference's
# latency per hardware class (median, min, max ms), timed by the first trial on each class.
FP32_SIZES_KEY = "fp32_sizes"
FP32_LATENCY_KEY = "fp32_latency"
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
_WRITE_RETRIES = 8
SLOTS_REFRESH_S = 5.0
# Set by Ray's job manager in a submitted job's driver (ray._private.runtime_env.constants).
RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RAY_CONNECT_TIMEOUT_S = 5.0


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
    # What happens before the first trial (the baseline being trained, ...); None once trials run.
    phase: str | None = "starting"


ProgressFn = Callable[[Progress], None]


def stored_latencies(reference: Reference) -> dict[str, list[float]]:
    return {
        name: [stats.median_ms, stats.min_ms, stats.max_ms]
        for name, stats in reference.latencies.items()
    }


def stored_reference(stored: Mapping[str, Any]) -> Reference:
    """The fp32 baseline a stored sweep measured (a sweep stored before this kept only its
    task metrics: its trials measure the rest again)."""
    sizes = stored.get(FP32_SIZES_KEY)
    latencies = stored.get(FP32_LATENCY_KEY) or {}
    return Reference(
        metrics=dict(stored.get("fp32_metrics") or {}),
        sizes=(int(sizes[0]), int(sizes[1])) if sizes else None,
        latencies={name: LatencyStats(*map(float, values)) for name, values in latencies.items()},
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


class RayStartError(RuntimeError):
    """Ray did not start or answer in time: not the user's mistake (the command exits 1)."""


def _resolve_auto() -> str | None:
    """The head that ``auto`` means to Ray here: ``$RAY_ADDRESS``, else the cluster that the
    last ``ray start`` on this machine wrote down (None: this Ray cannot tell; no probe)."""
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # a private helper: a later Ray may move it
        return None
    try:
        resolved = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise ConfigError(
            "ray_address: auto finds no running Ray cluster on this machine; start one "
            "(ray start --head), give its HOST:PORT, or leave it out for a local Ray"
        ) from None
    return None if resolved in (None, "auto") else str(resolved)


def _check_answers(address: str) -> None:
    """Fail fast on a head address nothing listens at: ray.init would retry it for minutes
    (also ``auto`` pointing at a cluster that has stopped since it was started)."""
    if address == "local":
        return
    target = address
    if address == "auto":
        resolved = _resolve_auto()
        if resolved is None:
            return
        target = resolved
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"ray_address: {target!r} is not auto, HOST:PORT or ray://HOST:PORT; "
            "leave it out to start a local Ray"
        )
    try:
        socket.create_connection(
            (host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S
        ).close()
    except OSError as exc:
        via = " (auto: $RAY_ADDRESS or the last `ray start` here)" if target != address else ""
        raise ConfigError(
            f"ray_address: nothing answers at {target}{via} ({exc.strerror or exc}); start the "
            "cluster there (ray start --head), fix the address, or leave it out for a local Ray"
        ) from None


_CONNECTED_HERE: list[bool] = []  # whether connect_ray started this process's Ray connection


def disconnect_ray() -> None:
    """Shut down the Ray connection that :func:`connect_ray` made (none made by others)."""
    if _CONNECTED_HERE and ray.is_initialized():
        ray.shutdown()
    _CONNECTED_HERE.clear()


def connect_ray(address: str | None, task: str | None = None) -> None:
    """Start a local Ray (``address`` None) or join a cluster (``auto``, ``host:port``,
    ``ray://host:port``). On a cluster, the user's task code is shipped to the workers."""
    if ray.is_initialized():
        return
    if address:
        _check_answers(address)
    runtime_env = _runtime_env(address, task)
    try:
        ray.init(
            # "local" always starts a new Ray: without it ray.init() joins any Ray that
            # `ray start` (or another program) left running on this machine.
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
            runtime_env=runtime_env,
        )
        _CONNECTED_HERE.append(True)
    except ConnectionError as exc:  # e.g. "auto" with no cluster on this machine
        raise ConfigError(f"ray_address: cannot connect to {address!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its processes time out
        where = f"connect to Ray at {address}" if address else "start a local Ray"
        raise RayStartError(
            f"could not {where}: {_one_line(exc)}; try again when the machine is less loaded"
        ) from None


def _runtime_env(address: str | None, task: str | None) -> dict[str, Any] | None:
    # A local Ray's workers share this machine's files and working directory: nothing to ship.
    if not address or task is None:
        return None
    # Under `ray job submit --working-dir .` (or --py-modules) the job already carries the code.
    job = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if job and {"working_dir", "py_modules"} & set(json.loads(job).get("runtime_env") or {}):
        return None
    return _shipping.runtime_env(task)


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


_MONITORS: dict[tuple[str, str], Any] = {}


def _monitor() -> Any:
    """This driver's TrialMonitor actor (a handle), started once per Ray job.

    It lives on the driver's node, so it survives the loss of any worker node.
    """
    context = ray.get_runtime_context()
    here = context.get_node_id()
    # Job ids restart with every Ray: the node id tells this Ray from an earlier one.
    key = (context.get_job_id(), here)
    if key not in _MONITORS:
        placement = NodeAffinitySchedulingStrategy(here, soft=False)
        actor = ray.remote(_remote.TrialMonitor).options(num_cpus=0, scheduling_strategy=placement)
        _MONITORS[key] = actor.remote()
    return _MONITORS[key]


# How often the driver looks for what the describing worker reports (a baseline's epochs).
PHASE_POLL_S = 0.5
PhaseFn = Callable[[str], None]


def _describe(
    config: SweepConfig, on_phase: PhaseFn | None = None
) -> tuple[Space, _remote.TaskInfo]:
    """Check that the cluster can run a trial, then describe the task on a worker, passing
    what it reports meanwhile (it may train the baseline for minutes) to ``on_phase``."""
    resources = config.resources
    _resources.require(_resources.demand(resources), resources.wait_for_nodes_s)
    describe = ray.remote(num_cpus=config.resources.cpus_per_trial)(_remote.describe_task)
    monitor = _monitor() if on_phase is not None else None
    pending = describe.remote(
        config.task, config.task_settings, config.latency.runtime, monitor, config.name
    )
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
        raise TaskError(f"task: {config.task} failed on a worker: {_one_line(cause)}") from None
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
    # Latency on a target: the int8 model waiting to be timed, then the training outcome.
    model: ray.ObjectRef | None = None
    trained: _remote.TrialOutcome | None = None
    # The int8 model file, kept while the trial may end on the front (to be timed again).
    artifact: ray.ObjectRef | None = None


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
        target: _target.Target | None = None,
        hardware_classes: set[str] | None = None,
        reference: Reference = Reference(),
    ) -> None:
        self.config, self.store, self.space, self.study = config, store, space, study
        self.target = target
        # The fp32 baseline, measured once: trials time its latency only on a new hardware class.
        self.reference = reference
        self.reference_changed = False  # the stored config must learn a class's fp32 timing
        # Where this sweep's latencies were measured so far (a resumed sweep's stored ones too).
        self.hardware_classes: set[str] = set(hardware_classes or ())
        if target is not None:
            self.hardware_classes.update(target.baselines)
        self.baselines_changed = False  # the stored config must learn a new hardware class
        self.next_number = next_number
        self.reruns = reruns
        self.progress = progress
        self.shadow = _pruning_study(config)
        self.pending: list[TrialRecord] = []
        self.write_failures = 0
        self.retry_at = 0.0
        self.beat_at = time.monotonic()  # the sweep's row was last written (a sign of life)
        self.in_flight: dict[ray.ObjectRef, _InFlight] = {}
        self.by_number: dict[int, _InFlight] = {}
        resources = config.resources
        # Any: Ray's stubs type remote functions of at most ten arguments.
        execute_trial: Any = _remote.execute_trial
        self.execute = ray.remote(
            num_cpus=resources.cpus_per_trial,
            num_gpus=resources.gpus_per_trial,
            resources=dict(resources.custom),
            max_calls=0,  # reuse workers: a fresh process costs seconds of imports and CUDA init
            retry_exceptions=False,  # trial errors are results; Ray retries only lost workers
        )(execute_trial).options(num_returns=2)  # the outcome, and the int8 model file
        self.front_models = _remeasure.FrontModels(store, config.name, config.objectives)
        self.measure = _target.measure_task(target.resource) if target else None
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
        self.slots = max(1, _resources.fitting(_resources.demand(resources), _resources.nodes()))

    # -- submitting ---------------------------------------------------------------------------
    def _submit(self, number: int, trial: optuna.trial.Trial, recipe: dict[str, Any]) -> None:
        refs = self.execute.remote(
            self.config.task,
            self.config.task_settings,
            recipe,
            self.config.name,
            number,
            self.monitor,
            self.shadow is not None,
            self.config.latency.timing(),
            self.target is None,
            self.config.resources.cpus_per_trial,
            self.config.resources.gpus_per_trial > 0,
            self.reference,
        )
        ref, model = refs
        shadow = self.shadow.ask() if self.shadow is not None else None
        now = datetime.now(timezone.utc)
        flight = _InFlight(number, trial, recipe, now, time.monotonic(), shadow)
        flight.model = model if self.target else None
        flight.artifact = model
        self.in_flight[ref] = flight
        self.by_number[number] = flight

    def _training(self) -> int:
        """Trials holding (or waiting for) training resources; those being timed do not."""
        return sum(flight.trained is None for flight in self.in_flight.values())

    def _fill(self, asked_budget: int, deadline: float) -> None:
        self._update_slots()
        while self._training() < self.slots + PREFETCH:
            if self.reruns:
                number, recipe = self.reruns.pop(0)
                parsed = Recipe.from_dict(recipe)
                self.study.enqueue_trial(self.space.params_of(parsed))
                trial = self.study.ask()
                # Suggesting the enqueued values makes them the trial's parameters: a sampler
                # that models finished trials reads them (the recipe run is the stored one). A
                # sensitivity scan's recipes may lie outside the space: they keep none.
                if self.space.holds(parsed):
                    self.space.suggest(trial)
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
    def _finish(
        self,
        ref: ray.ObjectRef,
        outcome: _remote.TrialOutcome | None,
        error: str,
        measurement: _remote.Measurement | None = None,
    ) -> None:
        flight = self.in_flight.pop(ref)
        del self.by_number[flight.number]
        if outcome is None:
            result, attempt, worker = TrialResult("FAIL", error=error), 1, ""
        else:
            result, attempt = outcome.result, outcome.attempt
            worker = f"{outcome.node[:12]}/{outcome.result.worker}"
        # Seconds the trial ran on workers (training, then any timing on the target): the rest
        # of its time since submission it waited (for a worker, a target, Ray).
        run_s = None if outcome is None else outcome.run_s
        if run_s is not None and measurement is not None:
            run_s += measurement.run_s
        latency_node = None
        if measurement is not None and self.target is not None and result.state == "COMPLETE":
            baseline, new = self.target.baseline_for(measurement)
            self.baselines_changed |= new
            spec = LatencySpec(**self.config.latency.timing())
            timed = latency_metrics(measurement.stats, baseline.stats, spec, measurement.batch)
            timed.update(_target.baseline_metrics(self.target))
            result = replace(
                result,
                metrics={**result.metrics, **timed},
                environment=measurement.environment,
            )
            latency_node = measurement.node
        elif result.state == "COMPLETE" and outcome is not None:
            latency_node = outcome.node
        measured_on = hardware_class(result.environment) if result.environment else None
        self._note_hardware(flight.number, measured_on)
        self._learn_reference(measured_on, result.reference_latency)
        objectives = self.config.objectives
        if result.state == "COMPLETE":
            values = objective_values(result.metrics, objectives)
            if all(math.isfinite(v) for v in values):
                self.study.tell(flight.trial, values)
                _update_best(self.progress, objectives, result.metrics)
            else:
                reason = f"an objective is not finite: {dict(zip(objectives, values, strict=True))}"
                result = TrialResult("FAIL", result.metrics, result.timings, reason, result.worker)
        if result.state == "COMPLETE":
            self.front_models.add(flight.number, flight.artifact)
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
                measured_on=measured_on,
                latency_node=latency_node if measured_on else None,
                run_s=run_s,
            )
        )

    def _learn_reference(self, measured_on: str | None, timed: LatencyStats | None) -> None:
        """Keep the fp32 timing a trial took on a hardware class that had none: later trials
        on that class time only their own model."""
        if measured_on is None or timed is None or measured_on in self.reference.latencies:
            return
        latencies = {**self.reference.latencies, measured_on: timed}
        self.reference = dataclasses.replace(self.reference, latencies=latencies)
        self.reference_changed = True

    def _note_hardware(self, number: int, measured_on: str | None) -> None:
        """Say so when this sweep's latencies stop coming from one hardware class."""
        if measured_on is None or measured_on in self.hardware_classes:
            return
        self.hardware_classes.add(measured_on)
        if len(self.hardware_classes) > 1:
            log.warning(
                "trial %d: latency measured on %s; this sweep's latencies now come from %d "
                "hardware classes and compare only within one (see the measured_on column; "
                "set latency.target to time every trial on one class)",
                number,
                measured_on,
                len(self.hardware_classes),
            )

    def _timed(self, ref: ray.ObjectRef, outcome: _remote.TrialOutcome) -> None:
        """Training is done: send the int8 model to the latency target to be timed."""
        flight = self.in_flight.pop(ref)
        if self.measure is None or self.target is None or flight.model is None:
            raise RuntimeError("a trial waits for a latency target that the sweep does not have")
        latency = self.config.latency
        measuring = self.measure.remote(
            flight.model,
            self.target.example,
            latency.timing(),
            latency.runtime,
            latency.backend,
            [self.target.reference],  # nested: fetched only if the node's class needs a baseline
            sorted(self.target.baselines),
        )
        flight.trained, flight.model = outcome, None
        # trial.timeout_s counts training, then the timing on its own: a trial queued behind
        # others on a busy target is not failed for the target's queue.
        flight.started_monotonic = time.monotonic()
        self.in_flight[measuring] = flight

    def _collect(self, ready: list[ray.ObjectRef]) -> None:
        for ref in ready:
            flight = self.in_flight[ref]
            try:
                done: _remote.TrialOutcome | _remote.Measurement = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:
                # Lost after Ray's retries (the node died every time) or cancelled: a FAIL.
                where = "timing on the latency target: " if flight.trained else ""
                self._finish(ref, None, where + _one_line(exc))
                continue
            if isinstance(done, _remote.Measurement):
                self._finish(ref, flight.trained, "", done)
            elif self.target is not None and done.result.state == "COMPLETE":
                self._timed(ref, done)
            else:
                self._finish(ref, done, "")

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
            if flight is None or flight.shadow is None:  # finished meanwhile: nothing to stop
                self.monitor.decide.remote(self.config.name, number, step, False)
                continue
            flight.shadow.report(value, step)
            stop = flight.shadow.should_prune()
            self.monitor.decide.remote(self.config.name, number, step, stop)

    # -- the store ----------------------------------------------------------------------------
    def _flush(self, final: bool = False) -> None:
        """Write what is pending, in one transaction.

        A failed write keeps the records and is tried again after a growing pause (0.5 s
        doubling to 30 s; on the last flush the driver waits it out), so a store that is
        unreachable for a while loses nothing. A write still failing after _WRITE_RETRIES
        pauses (about 90 s) stops the sweep with the store's error.
        """
        while self.pending or self.baselines_changed or self.reference_changed:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                if not final:
                    return
                time.sleep(wait)
            # After an outage a trial's RUNNING record and its result may both wait here: the
            # later record supersedes the earlier (the store takes each number once per call).
            self.pending = list({record.number: record for record in self.pending}.values())
            try:
                if self.baselines_changed and self.target is not None:
                    update = {"latency_baseline": self.target.stored()}
                    self.store.update_sweep_config(self.config.name, update)
                    self.baselines_changed = False
                if self.reference_changed:
                    update = {FP32_LATENCY_KEY: stored_latencies(self.reference)}
                    self.store.update_sweep_config(self.config.name, update)
                    self.reference_changed = False
                if self.pending:
                    self.store.record_trials(self.config.name, self.pending)
            except (StorageFullError, FencedError):
                # Waiting does not free disk space (trials left RUNNING are resumable), nor
                # give back a sweep another driver took over.
                raise
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
                self.beat_at = time.monotonic()
                self.front_models.stored()

    def _heartbeat(self) -> None:
        """Touch the sweep's row when nothing else wrote it for HEARTBEAT_S: `sweep status`
        tells a sweep whose driver died (STALE) from one whose trials are just long."""
        if time.monotonic() - self.beat_at < heartbeat_s() or self.pending:
            return  # pending records are retried by _flush, which reports the store's errors
        self.beat_at = time.monotonic()
        try:
            self.store.set_sweep_status(self.config.name, "RUNNING")
        except FencedError:
            raise
        except StorageError as exc:
            log.warning("store heartbeat failed (%s); the next write tries again", exc)

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
                self._heartbeat()
                if not self.in_flight:
                    break
                self.progress.running = min(len(self.in_flight), self.slots)
                if on_progress:
                    on_progress(self.progress)
                refs = list(self.in_flight)
                timeout = POLL_S if polling else heartbeat_s()
                ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
                if ready:
                    rest = [r for r in refs if r not in ready]
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                # Reports first: a trial that just finished may still have reports to judge.
                self._early_stopping()
                self._collect(ready)
                self._enforce_time_limit()
                if on_progress and ready:
                    on_progress(self.progress)
        except FencedError:
            # Another driver owns the sweep now: not one more write (each would be refused).
            status = ""
            raise
        except KeyboardInterrupt:
            # Trials still running stay RUNNING in the store: `sweep resume` re-runs them. Their
            # tasks end with the driver's Ray job; cancelling them here raced Ray's bookkeeping
            # of tasks that finished at the same moment (a fatal "task that was not pending").
            status = "INTERRUPTED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self.monitor.forget.remote(self.config.name)
            if status:
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
    progress = Progress(total=config.budget.n_trials)
    on_phase = _phase_reporter(progress, on_progress)
    _target.require_target(config)
    space, info = _describe(config, on_phase)
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
    driver = _Driver(
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
    space, _ = _describe(config, on_phase)
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
    if n_trials is not None:  # `sweep status` reads the budget from the store
        store.update_sweep_config(name, {"budget": config.budget.model_dump(mode="json")})
    next_number = int(trials["number"].max()) + 1 if len(trials) else 0
    driver = _Driver(
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
