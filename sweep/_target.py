"""Latency measured on the target hardware: nodes that carry a Ray custom resource time every
trial's int8 model, against an fp32 reference timed once per hardware class of those nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from sweep import _remote, _resources
from sweep._config import ConfigError, SweepConfig
from trials import LatencyStats, TaskError, hardware_class

# Each timing holds one unit of the target resource: a node that carries {target: 1} times one
# model at a time. It asks for no CPU, so that a node reserved for timing can advertise none
# (CPU: 0) and no trial ever trains there; threads are pinned with torch.set_num_threads.
UNITS_PER_MEASUREMENT = 1.0


@dataclass(frozen=True)
class Target:
    """The latency target of a running sweep.

    Nodes carrying the resource may differ (an autoscaler adds another instance type): each
    hardware class gets its own fp32 baseline, timed by the first measurement that lands on it,
    so a speedup never divides timings taken on different hardware.
    """

    resource: str
    reference: ray.ObjectRef  # the fp32 reference model file, in the object store
    example: ray.ObjectRef  # the batch models are timed on (its size is latency.batch_size)
    baselines: dict[str, _remote.Measurement]  # hardware class -> the fp32 reference timed there
    bn_folded: bool

    def baseline_for(self, measurement: _remote.Measurement) -> tuple[_remote.Measurement, bool]:
        """The fp32 baseline of the hardware class ``measurement`` was taken on, and whether it
        is new (timed with this very measurement, so the stored config must learn it)."""
        measured_on = hardware_class(measurement.environment)
        known = self.baselines.get(measured_on)
        if known is not None:
            return known, False
        if measurement.reference is None:
            raise RuntimeError(f"no fp32 baseline was timed on {measured_on}")
        baseline = _remote.Measurement(
            measurement.reference, measurement.environment, measurement.node, measurement.batch
        )
        self.baselines[measured_on] = baseline
        return baseline, True

    def stored(self) -> dict[str, Any]:
        """What the sweep's stored config keeps of the baselines: the first one's fields at the
        top, and every hardware class's under ``classes`` (the spread shows a noisy target)."""
        classes = {name: _fields(m) for name, m in self.baselines.items()}
        first = next(iter(classes.values()))
        return {"target": self.resource, "bn_folded": self.bn_folded, **first, "classes": classes}


def _fields(baseline: _remote.Measurement) -> dict[str, Any]:
    stats = baseline.stats
    return {
        "median_ms": stats.median_ms,
        "min_ms": stats.min_ms,
        "max_ms": stats.max_ms,
        "batch": baseline.batch,
        "node": baseline.node,
        "measured_on": hardware_class(baseline.environment),
        "environment": baseline.environment,
    }


def _from_fields(fields: dict[str, Any]) -> _remote.Measurement:
    return _remote.Measurement(
        LatencyStats(fields["median_ms"], fields["min_ms"], fields["max_ms"]),
        dict(fields["environment"]),
        str(fields["node"]),
        int(fields["batch"]),
    )


def measure_task(resource: str) -> Any:
    """The remote function that times a model on a node carrying ``resource``."""
    return ray.remote(
        num_cpus=0,
        resources={resource: UNITS_PER_MEASUREMENT},
        max_calls=0,
    )(_remote.measure)


def require_target(config: SweepConfig) -> None:
    """Fail before any trial runs when no node carries the latency target."""
    target = config.latency.target
    if target is None:
        return
    wanted = {target: UNITS_PER_MEASUREMENT}
    _resources.require(wanted, config.resources.wait_for_nodes_s, field="latency.target")


def _remote_error(exc: ray.exceptions.RayTaskError, doing: str) -> Exception:
    """A task's failure on a worker as one line: the user's own error as it is, else what failed."""
    cause = exc.cause
    if isinstance(cause, ConfigError | TaskError):
        return type(cause)(str(cause))
    first = str(cause or exc).strip().splitlines()
    return ConfigError(f"latency.target: {doing} failed: {first[0] if first else exc}")


def prepare_target(config: SweepConfig, stored: dict[str, Any] | None) -> Target | None:
    """Ship the fp32 reference to the object store and time it on the target, once; a resumed
    sweep reuses the stored baselines, so that its speedups stay comparable, and a hardware
    class it has not seen gets its own baseline with its first measurement."""
    resource = config.latency.target
    if resource is None:
        return None
    # Any: Ray's stubs do not type a task with several returns.
    build: Any = ray.remote(num_cpus=config.resources.cpus_per_trial, num_returns=3)
    latency = config.latency
    reference, example, folded = build(_remote.reference).remote(
        config.task, config.task_settings, latency.timing(), latency.runtime
    )
    try:
        bn_folded = bool(ray.get(folded))
    except ray.exceptions.RayTaskError as exc:
        raise _remote_error(exc, "building the fp32 reference model") from None
    baselines: dict[str, _remote.Measurement] = {}
    if stored is not None and stored.get("target") == resource:
        for name, fields in (stored.get("classes") or {stored["measured_on"]: stored}).items():
            baselines[name] = _from_fields(fields)
    else:
        measure = measure_task(resource)
        try:
            timed: _remote.Measurement = ray.get(
                measure.remote(
                    reference, example, latency.timing(), latency.runtime, latency.backend, [], []
                )
            )
        except ray.exceptions.RayTaskError as exc:
            raise _remote_error(exc, f"timing the fp32 model on {resource!r}") from None
        baselines[hardware_class(timed.environment)] = timed
    return Target(resource, reference, example, baselines, bn_folded)


def baseline_metrics(target: Target) -> dict[str, float]:
    return {"fp32_bn_folded": 1.0 if target.bn_folded else 0.0}
