"""Front latencies that can be trusted: the front's trials timed again, with an interval.

A trial is timed once, while other trials train beside it: on a busy machine the same kind of
recipe measured 1.4x to 6.9x within one sweep, and the front ranked by that noise. At the end of
a sweep (and with `sweep remeasure NAME`) each trial of the front is timed again against the
fp32 reference in alternating rounds (:func:`trials.remeasure`) until its speedup's 95% interval
is within ``±latency.remeasure_precision`` or ``latency.remeasure_s`` seconds pass; the figures
replace the trial's ``latency_ms``, ``fp32_latency_ms`` and ``speedup``, and the interval is
stored beside them (``speedup_low``, ``speedup_high``, ``latency_rounds``).

The front's model files are what is timed again: workers return each trial's file as a Ray
object, the driver keeps those of the trials still on the stored front (a trial off the front
never returns to it, so the objects it holds stay few), and the final front's files are stored
(``trial_artifacts``) so that `sweep remeasure` needs no training.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

import ray

from storage import StorageError, Store
from sweep import _remote, _target
from sweep._config import ConfigError, SweepConfig
from trials import (
    LatencySpec,
    Speedup,
    environment,
    from_portable,
    hardware_class,
    remeasure,
    runtime_version,
)

log = logging.getLogger("sweep")
# How often, at most, the driver re-reads the stored front to drop the model files of trials
# that left it (a query per finished trial would slow the driver on large sweeps).
FRONT_REFRESH_S = 10.0
# The figures that timing again replaces; the first ones are kept as ``<name>_once``.
ONCE = ("latency_ms", "fp32_latency_ms", "speedup")
TIMED = ("latency_ms", "speedup")
# How far a trial's timed objectives may lie behind the front's for its file to be kept: a
# single timing beside training trials was off by 10-20% on the demo, and up to 2x when loaded.
TIMING_SLACK = 0.5
# Rounds of timing again: the front's trials, then those that joined it as figures moved.
ROUNDS = 4


class NoModelsError(ConfigError):
    """A sweep with no stored model files of its front: nothing to time again."""


class FrontModels:
    """The model files (Ray objects) of the trials that may still end on the stored front.

    The loop adds a trial's file when it finishes; the store writer's thread says which trials
    are stored (:meth:`stored`), and the files of stored trials off the front are dropped."""

    def __init__(self, store: Store, name: str, objectives: Mapping[str, str]) -> None:
        self.store, self.name = store, name
        # Timing figures may move when timed again: a trial that far behind may then join.
        self.slack = {metric: TIMING_SLACK for metric in objectives if metric in TIMED}
        self.refs: dict[int, ray.ObjectRef] = {}
        self.unstored: set[int] = set()  # added, and not in the store yet: kept whatever the front
        self.checked = -math.inf
        self._lock = threading.Lock()

    def add(self, number: int, ref: ray.ObjectRef | None) -> None:
        if ref is not None:
            with self._lock:
                self.refs[number] = ref
                self.unstored.add(number)

    def stored(self, numbers: Collection[int] | None = None, *, now: bool = False) -> None:
        """Trials ``numbers`` are in the store now (None: every trial added so far); drop the
        files of stored trials not near its front, at most every FRONT_REFRESH_S (unless
        ``now``)."""
        with self._lock:
            self.unstored.difference_update(self.unstored if numbers is None else numbers)
            due = now or time.monotonic() - self.checked >= FRONT_REFRESH_S
            if not self.refs or not due:
                return
            self.checked = time.monotonic()
        try:
            front = set(self.store.near_front(self.name, self.slack))
        except StorageError as exc:
            # Keeping a few more files a while costs memory, not results: the next check drops
            # them, and a store that stays unreachable stops the sweep on its next write.
            log.warning("reading the front failed (%s); the next check tries again", exc)
            return
        with self._lock:
            self.refs = {
                number: ref
                for number, ref in self.refs.items()
                if number in front or number in self.unstored
            }

    def files(self) -> dict[int, bytes]:
        """The model files of the stored front's trials (none for an analytic task)."""
        self.stored(now=True)
        numbers = list(self.refs)
        found: list[bytes | None] = ray.get([self.refs[n] for n in numbers]) if numbers else []
        return {n: data for n, data in zip(numbers, found, strict=True) if data}


@dataclass(frozen=True)
class Timed:
    """What one timing task measured: a speedup per trial, where, and on which node."""

    speedups: dict[int, Speedup]
    environment: dict[str, str]
    node: str


def time_front(
    fp32: bytes,
    batch: Any,  # torch.Tensor: the example batch, already latency.batch_size rows
    models: dict[int, tuple[str, bytes]],
    latency: dict[str, Any],
    backend: str,
    precision: float,
    time_s: float,
) -> Timed:
    """On a worker (or a latency target): time each model file against the fp32 reference,
    one after the other, so that they never compete for the cores."""
    spec = replace(LatencySpec(**latency), batch_size=None)
    speedups: dict[int, Speedup] = {}
    runtime = next(iter(models.values()))[0]
    reference = from_portable(fp32, runtime)
    for number, (model_runtime, data) in sorted(models.items()):
        int8 = from_portable(data, model_runtime)
        speedups[number] = remeasure(
            reference, int8, batch, spec, precision=precision, time_s=time_s
        )
    where = environment(backend, spec.threads, runtime_version(runtime))
    return Timed(speedups, where, str(ray.get_runtime_context().get_node_id()))


def stored_models(store: Store, name: str) -> dict[int, tuple[str, bytes]]:
    """The kept model files of ``name``'s trials (its front and those near it);
    :class:`NoModelsError` when there are none (before any Ray work)."""
    kept = store.artifacts(name)
    if not kept:
        raise NoModelsError(
            f"{name}: no model file of its front is stored (sweeps keep them since they time "
            "their front again; an analytic task has none); launch the sweep again to get them"
        )
    return kept


def remeasure_stored(
    config: SweepConfig,
    store: Store,
    models: Mapping[int, tuple[str, bytes]],
    *,
    precision: float | None = None,
    time_s: float | None = None,
) -> list[int]:
    """Time the stored front's trials again, then those that joined the front as the figures
    moved, until no front trial with a kept file is left untimed (at most ROUNDS rounds); the
    numbers timed. A front trial without a file keeps its single timing, with a warning."""
    timed: list[int] = []
    for _ in range(ROUNDS):
        front = [int(n) for n in store.pareto_front(config.name)["number"]]
        todo = {n: models[n] for n in front if n in models and n not in timed}
        if not todo:
            break
        remeasure_front(config, store, todo, precision=precision, time_s=time_s)
        timed.extend(sorted(todo))
    front = [int(n) for n in store.pareto_front(config.name)["number"]]
    missing = sorted(set(front) - set(timed))
    if missing:
        log.warning(
            "trials %s of the front of %s have no kept model file (they were far behind the "
            "front when it was stored): their speedup stays as timed once",
            ", ".join(map(str, missing)),
            config.name,
        )
    return timed


def remeasure_front(
    config: SweepConfig,
    store: Store,
    models: Mapping[int, tuple[str, bytes]],
    *,
    precision: float | None = None,
    time_s: float | None = None,
) -> Timed:
    """Time ``models`` (the front's files) again where the sweep times its trials (a worker
    with the trial's CPUs, or the latency target) and store the figures."""
    latency = config.latency
    precision = latency.remeasure_precision if precision is None else precision
    time_s = latency.remeasure_s if time_s is None else time_s
    # Any: Ray's stubs do not type a task with several returns.
    build: Any = ray.remote(num_cpus=config.resources.cpus_per_trial, num_returns=3)
    fp32, batch, _ = build(_remote.reference).remote(
        config.task, config.task_settings, latency.timing(), latency.runtime
    )
    if latency.target is None:
        timing = ray.remote(num_cpus=config.resources.cpus_per_trial)(time_front)
    else:  # as trials are timed there: one unit of the target, no CPU
        wanted = {latency.target: _target.UNITS_PER_MEASUREMENT}
        timing = ray.remote(num_cpus=0, resources=wanted)(time_front)
    pending = timing.remote(
        fp32, batch, dict(models), latency.timing(), latency.backend, precision, time_s
    )
    try:
        timed: Timed = ray.get(pending)
    except ray.exceptions.RayTaskError as exc:
        raise _target._remote_error(exc, "timing the front again") from None
    # The single timing's figures stay in the metrics documents (``speedup_once``, ...): how far
    # they were from the trusted ones is how noisy the sweep's timings were.
    numbers = sorted(timed.speedups)
    complete = store.trials(config.name, states=["COMPLETE"])
    documents = {
        int(number): document
        for number, document in zip(complete["number"], complete["metrics"], strict=True)
        if int(number) in timed.speedups
    }
    metrics: dict[int, dict[str, float]] = {}
    for number in numbers:
        once = {
            f"{name}_once": float(documents[number][name])
            for name in ONCE
            if name in documents[number] and f"{name}_once" not in documents[number]
        }
        metrics[number] = {**once, **timed.speedups[number].metrics()}
    store.record_remeasured(
        config.name,
        metrics,
        measured_on=hardware_class(timed.environment),
        latency_node=timed.node,
    )
    return timed


def after_sweep(
    config: SweepConfig,
    store: Store,
    front: FrontModels,
    on_phase: Callable[[str | None], None] | None = None,
) -> None:
    """The end of a sweep: store the front's model files and time them again (unless
    ``latency.remeasure_s`` is 0, or the task is analytic: it has no model files)."""
    if config.latency.remeasure_s == 0:
        return
    files = front.files()
    if not files:
        return
    store.save_artifacts(config.name, config.latency.runtime, files)
    if on_phase is not None:
        on_phase(
            f"timing the front again: {len(files)} trials, up to "
            f"{config.latency.remeasure_s:g} s each"
        )
    # A resumed sweep's earlier front trials kept their files when it first ended.
    remeasure_stored(config, store, stored_models(store, config.name))
    if on_phase is not None:
        on_phase(None)
