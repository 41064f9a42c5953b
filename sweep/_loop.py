"""The ask/submit/collect loop: Optuna asks, Ray runs, the store keeps.

Each turn: fill the free slots with new trials (re-runs of a resumed sweep's trials first), wait
for a result, judge the trials' reports (early stopping), collect what finished, and fail what
overran its time limit. Writing to the store happens on the writer's thread (``_writer``):
nothing here waits for a commit.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
import ray

from storage import FencedError, Store, TrialRecord
from sweep import _remeasure, _remote, _target
from sweep._config import SweepConfig
from sweep._early_stopping import EarlyStopping
from sweep._hardware import HardwareLedger
from sweep._ray_session import monitor, one_line
from sweep._samplers import ask_recipe, set_constraints
from sweep._space import Space, objective_values
from sweep._status import heartbeat_s
from sweep._submission import InFlight, Submitter
from sweep._writer import StoreWriter
from trials import Recipe, Reference, TrialResult, hardware_class

# Trials submitted beyond the free slots, so that a worker never waits for the driver to ask.
PREFETCH = 1
# Allocations between collections of the youngest generation while the loop runs (Python's
# default: 700). Each trial allocates thousands of short-lived containers (Optuna copies a
# trial's parameters at each suggestion; records, results), so the collector ran about once a
# trial, each pass also tracing the study's long-lived trials now and then: 7-10% of the
# driver's CPU at a thousand zero-length trials (scripts/bench_scaling.py --capacity).
YOUNG_COLLECTION = 10_000
# How often the driver looks at intermediate values and time limits while trials run.
POLL_S = 0.25


@dataclass
class Progress:
    """Counts that the driver updates and a front end renders."""

    total: int
    done: int = 0
    running: int = 0
    timing: int = 0  # trained, waiting for (or in) their timing on the latency target
    failed: int = 0
    pruned: int = 0
    best: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    # What happens before the first trial (the baseline being trained, ...); None once trials run.
    phase: str | None = "starting"


ProgressFn = Callable[[Progress], None]


def update_best(
    progress: Progress, objectives: Mapping[str, str], metrics: Mapping[str, float]
) -> None:
    for name, direction in objectives.items():
        value = metrics[name]
        current = progress.best.get(name)
        if current is None or (value > current if direction == "max" else value < current):
            progress.best[name] = value


class TrialLoop:
    """Runs a sweep's trials to its budget: ``next_number`` and ``reruns`` (trials that were in
    flight when a resumed sweep stopped, with their numbers and recipes) say where to start."""

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
        self.config, self.space, self.study = config, space, study
        self.target = target
        self.hardware = HardwareLedger(reference, target, hardware_classes)
        self.next_number = next_number
        self.reruns = reruns
        self.progress = progress
        self.monitor = monitor()
        self.early_stopping = EarlyStopping(config, self.monitor)
        self.submitter = Submitter(config, target, self.monitor)
        self.in_flight: dict[ray.ObjectRef, InFlight] = {}
        self.by_number: dict[int, InFlight] = {}
        self.front_models = _remeasure.FrontModels(store, config.name, config.objectives)
        self.writer = StoreWriter(store, config.name, on_written=self.front_models.stored)

    # -- submitting ---------------------------------------------------------------------------
    def _submit(self, number: int, study_number: int, recipe: dict[str, Any]) -> None:
        ref, flight = self.submitter.submit(
            number,
            study_number,
            recipe,
            self.hardware.reference,
            self.early_stopping.ask(),
            self.early_stopping.enabled,
        )
        self.in_flight[ref] = flight
        self.by_number[number] = flight

    def _training(self) -> int:
        """Trials holding (or waiting for) training resources; those being timed do not."""
        return sum(flight.trained is None for flight in self.in_flight.values())

    def _fill(self, asked_budget: int, deadline: float) -> None:
        self.submitter.update_slots()
        while self._training() < self.submitter.slots + PREFETCH:
            if self.submitter.target_backlogged(len(self.in_flight) - self._training()):
                return
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
                self._submit(number, trial.number, recipe)
                continue
            if self.next_number >= asked_budget or time.monotonic() >= deadline:
                return
            study_number, asked = ask_recipe(self.study, self.space)
            recipe = asked.to_dict()
            number = self.next_number
            self.next_number += 1
            self._submit(number, study_number, recipe)
            started = self.by_number[number].started
            self.writer.record(
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
            timing = self.config.latency.timing()
            result = self.hardware.timed_on_target(result, measurement, timing)
            latency_node = measurement.node
        elif result.state == "COMPLETE" and outcome is not None:
            latency_node = outcome.node
        measured_on = hardware_class(result.environment) if result.environment else None
        self.hardware.note(flight.number, measured_on, result.reference_latency)
        result = self._tell(flight, result)
        self.early_stopping.tell(flight.shadow, result)
        self.progress.done += 1
        self.writer.record(
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
        updates = self.hardware.config_updates()
        if updates:
            self.writer.update_config(updates)

    def _tell(self, flight: InFlight, result: TrialResult) -> TrialResult:
        """Tell Optuna how the trial ended; a result with a non-finite objective is a FAIL."""
        objectives = self.config.objectives
        if result.state == "COMPLETE":
            values = objective_values(result.metrics, objectives)
            if not all(math.isfinite(v) for v in values):
                reason = f"an objective is not finite: {dict(zip(objectives, values, strict=True))}"
                result = TrialResult("FAIL", result.metrics, result.timings, reason, result.worker)
            else:
                self.study.tell(flight.study_number, values)
                update_best(self.progress, objectives, result.metrics)
                self.front_models.add(flight.number, flight.artifact)
        if result.state == "FAIL":
            self.study.tell(flight.study_number, state=optuna.trial.TrialState.FAIL)
            self.progress.failed += 1
        elif result.state == "PRUNED":
            self.study.tell(flight.study_number, state=optuna.trial.TrialState.PRUNED)
            self.progress.pruned += 1
        return result

    def _collect(self, ready: list[ray.ObjectRef]) -> None:
        for ref in ready:
            flight = self.in_flight[ref]
            try:
                done: _remote.TrialOutcome | _remote.Measurement = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:
                # Lost after Ray's retries (the node died every time) or cancelled: a FAIL.
                where = "timing on the latency target: " if flight.trained else ""
                self._finish(ref, None, where + one_line(exc))
                continue
            if isinstance(done, _remote.Measurement):
                self._finish(ref, flight.trained, "", done)
            elif self.target is not None and done.result.state == "COMPLETE":
                del self.in_flight[ref]
                self.in_flight[self.submitter.time_on_target(flight, done)] = flight
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

    def _shadow_of(self, number: int) -> optuna.trial.Trial | None:
        flight = self.by_number.get(number)
        return None if flight is None else flight.shadow

    # -- the loop -----------------------------------------------------------------------------
    def run(self, on_progress: ProgressFn | None) -> Progress:
        with fewer_collections():
            return self._run(on_progress)

    def _run(self, on_progress: ProgressFn | None) -> Progress:
        budget = self.config.budget
        deadline = math.inf if budget.timeout_s is None else time.monotonic() + budget.timeout_s
        polling = self.early_stopping.enabled or self.config.trial.timeout_s is not None
        status: str | None = "FINISHED"
        try:
            while True:
                self.writer.check()
                self._fill(budget.n_trials, deadline)
                if not self.in_flight:
                    break
                # Running: training (a prefetched trial waits for a slot) or being timed.
                training = self._training()
                self.progress.timing = len(self.in_flight) - training
                self.progress.running = min(training, self.submitter.slots) + self.progress.timing
                if on_progress:
                    on_progress(self.progress)
                refs = list(self.in_flight)
                # Wakes at least every heartbeat, to see a writer that stopped on an error.
                timeout = POLL_S if polling else heartbeat_s()
                ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
                if ready:
                    rest = [r for r in refs if r not in ready]
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                # Reports first: a trial that just finished may still have reports to judge.
                self.early_stopping.judge(self._shadow_of)
                self._collect(ready)
                self._enforce_time_limit()
                if on_progress and ready:
                    on_progress(self.progress)
        except FencedError:
            # Another driver owns the sweep now: not one more write (each would be refused).
            status = None
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
            self.writer.close(status)
        self.progress.running = self.progress.timing = 0
        return self.progress


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect the youngest generation every ``YOUNG_COLLECTION`` allocations while the loop
    runs, then as before (a sweep run from a user's own process leaves its settings as found)."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], YOUNG_COLLECTION), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
