"""What one trial asks of the cluster, how many trials fit, and failing fast when none can.

A trial runs on one node, so everything here is counted per node: a cluster of two 2-CPU
nodes holds no trial that asks for 4 CPUs, although its total is 4.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping

import ray

from sweep._config import ConfigError, Resources

POLL_S = 2.0
# Ray counts resources in units of 1e-4; this keeps 1.0 / 0.1 from flooring to 9.
_EPSILON = 1e-6
_BOOKKEEPING = ("memory", "object_store_memory")


def demand(resources: Resources) -> dict[str, float]:
    """One trial's resources by Ray name: CPU, GPU if any, and the custom ones."""
    wanted = {"CPU": resources.cpus_per_trial, **resources.custom}
    if resources.gpus_per_trial > 0:
        wanted["GPU"] = resources.gpus_per_trial
    return wanted


def nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster."""
    return [
        {str(k): float(v) for k, v in node["Resources"].items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def _fits(wanted: Mapping[str, float], node: Mapping[str, float]) -> int:
    counts = [
        math.floor(node.get(name, 0.0) / amount + _EPSILON)
        for name, amount in wanted.items()
        if amount > 0
    ]
    return min(counts) if counts else 0


def fitting(wanted: Mapping[str, float], on: list[dict[str, float]]) -> int:
    """How many requests of ``wanted`` the nodes ``on`` hold at once (each on one node)."""
    return sum(_fits(wanted, node) for node in on)


def _describe(on: list[dict[str, float]]) -> str:
    """The cluster's node shapes, e.g. ``2 nodes with CPU 2; 1 node with CPU 1, target_x86 1``."""
    shapes = Counter(
        ", ".join(
            f"{k} {v:g}"
            for k, v in sorted(node.items())
            if not k.startswith("node:")
            and not k.startswith("accelerator_type:")
            and k not in _BOOKKEEPING
        )
        or "nothing"
        for node in on
    )
    return "; ".join(
        f"{count} node{'s' if count > 1 else ''} with {shape}" for shape, count in shapes.items()
    )


def _field(name: str) -> str:
    return {"CPU": "resources.cpus_per_trial", "GPU": "resources.gpus_per_trial"}.get(
        name, "resources.custom"
    )


def _unmet(wanted: Mapping[str, float], on: list[dict[str, float]]) -> str | None:
    """None when some node holds ``wanted``; else the resource that no node has enough of, or
    "" when each is on some node but never all of them together."""
    if fitting(wanted, on) > 0:
        return None
    for name, amount in wanted.items():
        if not any(node.get(name, 0.0) + _EPSILON >= amount for node in on):
            return name
    return ""


def require(wanted: Mapping[str, float], wait_s: float, field: str | None = None) -> None:
    """Return once some node of the cluster holds one request of ``wanted``; else a one-line
    ConfigError that names the config ``field`` (by default the ``resources`` field of the
    missing resource).

    With ``wait_s`` > 0 the autoscaler is asked for the resources and given that long to add a
    node (a cluster whose GPU or target nodes scale from zero); with 0 the check is immediate.
    """
    unmet = _unmet(wanted, nodes())
    if unmet is not None and wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(wanted)])
        deadline = time.monotonic() + wait_s
        while unmet is not None and time.monotonic() < deadline:
            time.sleep(POLL_S)
            unmet = _unmet(wanted, nodes())
    if unmet is None:
        return
    on = nodes()
    fix = (
        "start a node with it (ray start --resources, or resources: in cluster.yaml), or set "
        "resources.wait_for_nodes_s so that an autoscaler can add one"
    )
    if unmet:
        most = max((node.get(unmet, 0.0) for node in on), default=0.0)
        raise ConfigError(
            f"{field or _field(unmet)}: no node of the Ray cluster carries {unmet!r} "
            f"({wanted[unmet]:g} wanted, at most {most:g} on one node; the cluster has "
            f"{_describe(on)}); {fix}"
        )
    asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
    raise ConfigError(
        f"{field or 'resources'}: no node of the Ray cluster has {asked} at once (a trial runs "
        f"on one node; the cluster has {_describe(on)}); ask for less per trial, or {fix}"
    )
