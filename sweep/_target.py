"""Latency measured on the target hardware: nodes that carry a Ray custom resource time every
trial's int8 model, against an fp32 reference timed there once per sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from sweep import _remote, _resources
from sweep._config import ConfigError, SweepConfig
from trials import LatencyStats, hardware_class

# Each timing holds one unit of the target resource: a node that carries {target: 1} times one
# model at a time, so that two measurements never share its cores.
UNITS_PER_MEASUREMENT = 1.0


@dataclass(frozen=True)
class Target:
    """The latency target of a running sweep."""

    resource: str
    reference: ray.ObjectRef  # the fp32 reference model as TorchScript, in the object store
    example: ray.ObjectRef  # the batch models are timed on (its size is latency.batch_size)
    baseline: _remote.Measurement  # the fp32 reference, timed on the target
    bn_folded: bool

    def stored(self) -> dict[str, Any]:
        """What the sweep's stored config keeps of the baseline (its spread shows noise)."""
        stats = self.baseline.stats
        return {
            "target": self.resource,
            "median_ms": stats.median_ms,
            "min_ms": stats.min_ms,
            "max_ms": stats.max_ms,
            "batch": self.baseline.batch,
            "node": self.baseline.node,
            "measured_on": hardware_class(self.baseline.environment),
            "environment": self.baseline.environment,
            "bn_folded": self.bn_folded,
        }


def measure_task(config: SweepConfig, resource: str) -> Any:
    """The remote function that times a model on a node carrying ``resource``."""
    return ray.remote(
        num_cpus=config.latency.threads,
        resources={resource: UNITS_PER_MEASUREMENT},
        max_calls=0,
    )(_remote.measure)


def require_target(config: SweepConfig) -> None:
    """Fail before any trial runs when no node carries the latency target."""
    target = config.latency.target
    if target is None:
        return
    wanted = {target: UNITS_PER_MEASUREMENT, "CPU": float(config.latency.threads)}
    _resources.require(wanted, config.resources.wait_for_nodes_s, field="latency.target")


def prepare_target(config: SweepConfig, stored: dict[str, Any] | None) -> Target | None:
    """Ship the fp32 reference to the object store and time it on the target, once; a resumed
    sweep reuses the stored baseline timing so that its speedups stay comparable."""
    resource = config.latency.target
    if resource is None:
        return None
    # Any: Ray's stubs do not type a task with several returns.
    build: Any = ray.remote(num_cpus=config.resources.cpus_per_trial, num_returns=3)
    latency = config.latency
    reference, example, folded = build(_remote.reference).remote(
        config.task, config.task_settings, latency.timing()
    )
    baseline: _remote.Measurement
    if stored is not None and stored.get("target") == resource:
        baseline = _remote.Measurement(
            LatencyStats(stored["median_ms"], stored["min_ms"], stored["max_ms"]),
            dict(stored["environment"]),
            str(stored["node"]),
            int(stored["batch"]),
        )
    else:
        measure = measure_task(config, resource)
        try:
            baseline = ray.get(
                measure.remote(reference, example, latency.timing(), latency.backend)
            )
        except ray.exceptions.RayTaskError as exc:
            raise ConfigError(
                f"latency.target: timing the fp32 model on {resource!r} failed: "
                f"{str(exc.cause).splitlines()[0] if exc.cause else exc}"
            ) from None
    return Target(resource, reference, example, baseline, bool(ray.get(folded)))


def baseline_metrics(target: Target) -> dict[str, float]:
    return {"fp32_bn_folded": 1.0 if target.bn_folded else 0.0}
