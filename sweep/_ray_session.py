"""The driver's Ray session: starting a local Ray or joining a cluster (with the user's task code
shipped to it), and the one TrialMonitor actor per Ray job that trials report to."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sweep import _remote, _shipping
from sweep._config import ConfigError

# Set by Ray's job manager in a submitted job's driver (ray._private.runtime_env.constants).
RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RAY_CONNECT_TIMEOUT_S = 5.0


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
        raise ConfigError(f"ray_address: cannot connect to {address!r}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its processes time out
        where = f"connect to Ray at {address}" if address else "start a local Ray"
        raise RayStartError(
            f"could not {where}: {one_line(exc)}; try again when the machine is less loaded"
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


_MONITORS: dict[tuple[str, str], Any] = {}


def monitor() -> Any:
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


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:2000]
