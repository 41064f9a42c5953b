"""Where a sweep's latencies were measured: hardware classes, and the fp32 reference on each.

Latency compares only within one hardware class (``measured_on``). A trial on a class the sweep
has not timed enough yet times the fp32 reference there too (its speedup is then a paired one);
the ledger keeps those timings, and once it has ``REFERENCE_TIMINGS`` of a class their middle one
is the class's reference: later trials there time only their own model. It hands the stored
config what it learned.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from sweep import _remote, _target
from trials import LatencySpec, LatencyStats, Reference, TrialResult, latency_metrics

log = logging.getLogger("sweep")
# Keys of a sweep's stored config: the fp32 model file's sizes, and the fp32 reference's
# latency per hardware class (median, min, max ms), the middle of the first trials' timings.
FP32_SIZES_KEY = "fp32_sizes"
FP32_LATENCY_KEY = "fp32_latency"
# fp32 timings a class's reference is the median of: trials time the fp32 model beside their own
# until the class has this many. One timing taken in a loaded minute (2.76 ms against 1.36-1.44 ms
# in the same hour) made every later trial's speedup on the class 1.9x; the middle of three is
# off only when two of them are.
REFERENCE_TIMINGS = 3


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


class HardwareLedger:
    """The hardware classes a sweep's latencies come from, and the fp32 reference on each."""

    def __init__(
        self,
        reference: Reference,
        target: _target.Target | None,
        hardware_classes: set[str] | None = None,
    ) -> None:
        # The fp32 baseline, measured once: trials time its latency only on a new class.
        self.reference = reference
        self.target = target
        # Where this sweep's latencies were measured so far (a resumed sweep's stored ones too).
        self.classes: set[str] = set(hardware_classes or ())
        if target is not None:
            self.classes.update(target.baselines)
        self._reference_changed = False  # the stored config must learn a class's fp32 timing
        self._timings: dict[str, list[LatencyStats]] = {}  # per class still being timed
        self._baselines_changed = False  # ... or a latency target's new hardware class

    def timed_on_target(
        self, result: TrialResult, measurement: _remote.Measurement, timing: Mapping[str, Any]
    ) -> TrialResult:
        """A trained trial's result with the latency its int8 model took on the target."""
        if self.target is None:
            raise RuntimeError("a trial was timed on a latency target the sweep does not have")
        baseline, new = self.target.baseline_for(measurement)
        self._baselines_changed |= new
        spec = LatencySpec(**timing)
        timed = latency_metrics(measurement.stats, baseline.stats, spec, measurement.batch)
        timed.update(_target.baseline_metrics(self.target))
        return dataclasses.replace(
            result, metrics={**result.metrics, **timed}, environment=measurement.environment
        )

    def note(self, number: int, measured_on: str | None, timed: LatencyStats | None) -> None:
        """Learn a trial's class (and the fp32 timing it took there, while the class has fewer
        than ``REFERENCE_TIMINGS``: then the reference is their middle one); say so when this
        sweep's latencies stop coming from one class."""
        if measured_on is None:
            return
        if timed is not None and measured_on not in self.reference.latencies:
            timings = self._timings.setdefault(measured_on, [])
            timings.append(timed)
            if len(timings) >= REFERENCE_TIMINGS:
                middle = sorted(timings, key=lambda stats: stats.median_ms)[len(timings) // 2]
                latencies = {**self.reference.latencies, measured_on: middle}
                self.reference = dataclasses.replace(self.reference, latencies=latencies)
                self._reference_changed = True
                del self._timings[measured_on]
        if measured_on in self.classes:
            return
        self.classes.add(measured_on)
        if len(self.classes) > 1:
            log.warning(
                "trial %d: latency measured on %s; this sweep's latencies now come from %d "
                "hardware classes and compare only within one (see the measured_on column; "
                "set latency.target to time every trial on one class)",
                number,
                measured_on,
                len(self.classes),
            )

    def config_updates(self) -> dict[str, Any]:
        """What the stored config has to learn since the last call (empty: nothing)."""
        updates: dict[str, Any] = {}
        if self._baselines_changed and self.target is not None:
            updates["latency_baseline"] = self.target.stored()
        if self._reference_changed:
            updates[FP32_LATENCY_KEY] = stored_latencies(self.reference)
        self._baselines_changed = self._reference_changed = False
        return updates
