"""Trials as Ray tasks: how many to keep running, submitting one, sending its int8 model to a
latency target, and what the driver keeps about each while it runs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import optuna
import ray

from sweep import _remote, _resources, _target
from sweep._config import SweepConfig
from trials import Reference

SLOTS_REFRESH_S = 5.0
# Back-pressure on a latency target: no new trial starts training while this many int8 models
# per target slot wait for (or are in) their timing. A target slower than training then paces
# the sweep, instead of a backlog of trained models growing in Ray's object store until the end.
TARGET_BACKLOG = 2
# Worker processes started ahead of the first trials (start_workers): a driver on a large cluster
# does not start hundreds of imports at once on the head's request.
MAX_PRESTARTED = 256


@dataclass
class InFlight:
    """A trial between submission and its result."""

    number: int
    study_number: int  # its number in the Optuna study (a resumed sweep's study numbers anew)
    recipe: dict[str, Any]
    started: datetime
    started_monotonic: float
    shadow: optuna.trial.Trial | None  # its twin in the early-stopping study
    # Latency on a target: the int8 model waiting to be timed, then the training outcome.
    model: ray.ObjectRef | None = None
    trained: _remote.TrialOutcome | None = None
    # The int8 model file, kept while the trial may end on the front (to be timed again).
    artifact: ray.ObjectRef | None = None


def trial_slots(config: SweepConfig, nodes: list[dict[str, float]]) -> int:
    """Trials to run at once: ``max_concurrent``, else as many as ``nodes`` hold (at least 1)."""
    resources = config.resources
    if resources.max_concurrent is not None:
        return resources.max_concurrent
    return max(1, _resources.fitting(_resources.demand(resources), nodes))


def start_workers(config: SweepConfig) -> list[ray.ObjectRef]:
    """Start, beside the task's description, the worker processes the first trials will run in:
    each imports the engine (torch, ONNX Runtime) while the baseline is described or trained,
    instead of the first wave of trials each waiting seconds for it. Ray reuses a job's idle
    workers for any of its tasks, and keeps as many idle as the node has CPUs; so one task per
    trial slot but the describing one, with the trial's own resources. Best effort: a worker
    that fails to start here leaves its trial to start one, as it would have anyway."""
    resources = config.resources
    slots = trial_slots(config, _resources.nodes())
    start = ray.remote(
        num_cpus=resources.cpus_per_trial,
        num_gpus=resources.gpus_per_trial,
        resources=dict(resources.custom),
        max_calls=0,
    )(_remote.started_worker)
    return [start.remote() for _ in range(max(0, min(slots, MAX_PRESTARTED) - 1))]


class Submitter:
    """Submits trials (and timings on a latency target) to Ray, and says how many to keep
    running."""

    def __init__(self, config: SweepConfig, target: _target.Target | None, monitor: Any) -> None:
        self.config, self.target, self.monitor = config, target, monitor
        resources = config.resources
        execute_trial: Any = _remote.execute_trial
        self._execute = ray.remote(
            num_cpus=resources.cpus_per_trial,
            num_gpus=resources.gpus_per_trial,
            resources=dict(resources.custom),
            max_calls=0,  # reuse workers: a fresh process costs seconds of imports and CUDA init
            retry_exceptions=False,  # trial errors are results; Ray retries only lost workers
        )(execute_trial).options(num_returns=2)  # the outcome, and the int8 model file
        self._measure = _target.measure_task(target.resource) if target else None
        self._shared: tuple[Reference, ray.ObjectRef] | None = None  # the context, as put
        self.slots = 1
        self.target_slots = 0  # timings the latency target's nodes hold at once
        self._slots_checked = -math.inf
        self.update_slots()

    def update_slots(self) -> None:
        """Trials to keep training: ``max_concurrent``, else as many as the cluster holds now;
        and timings the latency target holds. Re-read every few seconds, so that the sweep
        follows nodes joining or leaving."""
        now = time.monotonic()
        if now - self._slots_checked < SLOTS_REFRESH_S:
            return
        self._slots_checked = now
        nodes = _resources.nodes()
        self.slots = trial_slots(self.config, nodes)
        if self.target is not None:
            unit = {self.target.resource: _target.UNITS_PER_MEASUREMENT}
            self.target_slots = max(1, _resources.fitting(unit, nodes))

    def target_backlogged(self, timing: int) -> bool:
        """Whether ``timing`` models waiting for (or in) their timing hold back new training."""
        return self.target is not None and timing >= TARGET_BACKLOG * self.target_slots

    def submit(
        self,
        number: int,
        study_number: int,
        recipe: dict[str, Any],
        reference: Reference,
        shadow: optuna.trial.Trial | None,
        early_stopping: bool,
    ) -> tuple[ray.ObjectRef, InFlight]:
        """Start training (and evaluating) a trial: its result's ref, and what to keep of it."""
        ref, model = self._execute.remote(self._context(reference, early_stopping), recipe, number)
        now = datetime.now(timezone.utc)
        flight = InFlight(number, study_number, recipe, now, time.monotonic(), shadow)
        flight.model = model if self.target else None
        flight.artifact = model
        return ref, flight

    def _context(self, reference: Reference, early_stopping: bool) -> ray.ObjectRef:
        """The sweep's TrialContext in Ray's object store, put again when ``reference`` (the
        fp32 reference, which learns each hardware class's timing) is a new one."""
        if self._shared is None or self._shared[0] is not reference:
            config = self.config
            context = _remote.TrialContext(
                config.task,
                config.task_settings,
                config.name,
                self.monitor,
                early_stopping,
                config.latency.timing(),
                self.target is None,
                config.resources.cpus_per_trial,
                config.resources.gpus_per_trial > 0,
                reference,
            )
            self._shared = (reference, ray.put(context))
        return self._shared[1]

    def time_on_target(self, flight: InFlight, outcome: _remote.TrialOutcome) -> ray.ObjectRef:
        """Training is done: send the int8 model to the latency target to be timed."""
        if self._measure is None or self.target is None or flight.model is None:
            raise RuntimeError("a trial waits for a latency target that the sweep does not have")
        latency = self.config.latency
        measuring = self._measure.remote(
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
        return measuring
