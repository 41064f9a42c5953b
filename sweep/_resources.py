"""What one trial asks of the cluster, how many trials fit, and failing fast when none can."""

from __future__ import annotations

import time
from collections.abc import Mapping

import ray

from sweep._config import ConfigError, Resources

POLL_S = 2.0


def demand(resources: Resources) -> dict[str, float]:
    """One trial's resources by Ray name: CPU, GPU if any, and the custom ones."""
    wanted = {"CPU": resources.cpus_per_trial, **resources.custom}
    if resources.gpus_per_trial > 0:
        wanted["GPU"] = resources.gpus_per_trial
    return wanted


def fitting(wanted: Mapping[str, float], total: Mapping[str, float]) -> int:
    """How many trials of ``wanted`` the resources ``total`` hold at once."""
    return int(min(total.get(name, 0.0) // amount for name, amount in wanted.items()))


def _missing(wanted: Mapping[str, float]) -> list[str]:
    total = ray.cluster_resources()
    return [name for name, amount in wanted.items() if total.get(name, 0.0) < amount]


def _field(name: str) -> str:
    return {"CPU": "resources.cpus_per_trial", "GPU": "resources.gpus_per_trial"}.get(
        name, "resources.custom"
    )


def require(wanted: Mapping[str, float], wait_s: float, field: str | None = None) -> None:
    """Return once the cluster holds one trial of ``wanted``; else a one-line ConfigError that
    names the config ``field`` (by default the ``resources`` field of the missing resource).

    With ``wait_s`` > 0 the autoscaler is asked for the resources and given that long to add a
    node (a cluster whose GPU or target nodes scale from zero); with 0 the check is immediate.
    """
    missing = _missing(wanted)
    if missing and wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(wanted)])
        deadline = time.monotonic() + wait_s
        while missing and time.monotonic() < deadline:
            time.sleep(POLL_S)
            missing = _missing(wanted)
    if not missing:
        return
    total = ray.cluster_resources()
    have = ", ".join(
        f"{k} {v:g}"
        for k, v in sorted(total.items())
        if not k.startswith("node:") and k not in ("memory", "object_store_memory")
    )
    name = missing[0]
    raise ConfigError(
        f"{field or _field(name)}: no node of the Ray cluster carries {name!r} "
        f"({wanted[name]:g} wanted, {total.get(name, 0.0):g} present; the cluster has {have}); "
        "start a node with it (ray start --resources, or resources: in cluster.yaml), or set "
        "resources.wait_for_nodes_s so that an autoscaler can add one"
    )
