"""Scaling of a sweep with the cluster's size: throughput at K logical CPUs against K times K=1.

For each K (default 1, 2, 4, 8, 16) the script starts, in a fresh Python process, a
``ray.cluster_utils.Cluster`` on this machine: a head node with no CPUs (it holds the driver and
its monitor actor, as a head node does on a real cluster) and worker nodes of up to 4 *logical*
CPUs, K in total. The trials are sleeps (the analytic ``synthetic`` task with ``trial_seconds``),
so K may exceed the real cores. The driver is the real one (``sweep.run_sweep``: TPE, one CPU per
trial, concurrency read from ``ray.cluster_resources()``, a SQLite store in a temporary folder).

Per K: a warm-up sweep of 2*K trials first starts the K worker processes (each imports torch once,
seconds on a small machine; the driver reuses workers), then the timed sweep of ``--waves`` * K
trials runs. Its wall time is taken from the store, from the first trial's ``started_at`` (when
the driver submitted it) to the last trial's ``finished_at`` (when the driver collected it): the
sweep proper, without cluster start-up, task description or the warm-up. Throughput = trials /
that time; ``efficiency`` = throughput(K) / (K * throughput(1)); the goal is 0.9 or more.

``bare_ray_*``: the same number of sleeps as bare Ray tasks (K in flight, one CPU each, no
driver, Optuna, monitor or store) on the same cluster, right after: the scaling Ray itself reaches
on this machine, the baseline the sweep's efficiency should be read against.
``driver_busy_s`` adds up, per K, the seconds the driver spent (serially, while trials sleep) in
Optuna's ``ask`` and ``tell``, in submitting trials to Ray (``_submit``), in collecting results
(``_collect``, which includes ``tell``) and in writing the store (``_flush``).

With ``--sampler random`` as well (the default runs both), the same is measured with Optuna's
RandomSampler, whose ask costs almost nothing: the difference from TPE is the driver's
sampling cost, which grows with the number of finished trials and is paid serially by the driver.

Prints one JSON object and writes it to ``scripts/results/bench_scaling.json``.

    python scripts/bench_scaling.py [--ks 1 2 4 8 16] [--seconds 2.0] [--waves 6]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

CPUS_PER_NODE = 4
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scaling.json"


def _config(name: str, trials: int, seconds: float, sampler: str) -> dict[str, Any]:
    return {
        "name": name,
        "task": "synthetic",
        "task_settings": {"trial_seconds": seconds},
        "sampler": sampler,
        "budget": {"n_trials": trials},
        "resources": {"cpus_per_trial": 1},
    }


def _time_calls(owner: Any, names: list[str], totals: dict[str, float]) -> None:
    """Wrap ``owner``'s methods so that the seconds spent in each add up in ``totals``."""
    for name in names:
        original = getattr(owner, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start

        totals[name] = 0.0
        setattr(owner, name, timed)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _bare_ray_wall(k: int, trials: int, seconds: float) -> float:
    """The same trials as bare Ray tasks, K in flight, no driver: what Ray itself achieves here."""
    import ray

    sleep = ray.remote(num_cpus=1, max_calls=0)(_sleep)
    start = time.perf_counter()
    in_flight = [sleep.remote(seconds) for _ in range(min(k, trials))]
    submitted = len(in_flight)
    while in_flight:
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        ray.get(ready)
        if submitted < trials:
            in_flight.append(sleep.remote(seconds))
            submitted += 1
    return time.perf_counter() - start


def measure_one(k: int, seconds: float, waves: int, sampler: str) -> dict[str, Any]:
    """One K on a fresh local cluster (run in its own process: Ray allows one session each)."""
    import ray
    from ray.cluster_utils import Cluster

    from storage import Store
    from sweep import _loop, _writer, parse_config, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for first in range(0, k, CPUS_PER_NODE):
        cluster.add_node(num_cpus=min(CPUS_PER_NODE, k - first))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    cluster_s = time.perf_counter() - start
    try:
        store = Store(f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-scaling-')) / 's.db'}")
        start = time.perf_counter()
        run_sweep(parse_config(_config("warmup", 2 * k, seconds, sampler)), store)
        warmup_s = time.perf_counter() - start
        trials = waves * k
        # Where the driver's own (serial) time goes during the timed sweep: Optuna's ask and
        # tell, submitting to Ray, collecting results; and the store writer's commits (_write),
        # on a thread of their own beside the loop.
        busy: dict[str, float] = {}
        _time_calls(optuna.Study, ["ask", "tell"], busy)
        _time_calls(_loop.TrialLoop, ["_submit", "_collect"], busy)
        _time_calls(_writer.StoreWriter, ["_write"], busy)
        start = time.perf_counter()
        run_sweep(parse_config(_config("timed", trials, seconds, sampler)), store)
        run_sweep_s = time.perf_counter() - start
        frame = store.trials("timed")
        bare_wall = _bare_ray_wall(k, trials, seconds)
    finally:
        ray.shutdown()
        cluster.shutdown()
    states = frame["state"].value_counts().to_dict()
    if states != {"COMPLETE": trials}:
        raise RuntimeError(f"K={k}: expected {trials} COMPLETE trials, got {states}")
    wall = (frame["finished_at"].max() - frame["started_at"].min()).total_seconds()
    # Per trial, driver-side: submitted -> collected, minus the sleep = what the trial waited for.
    held = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
    return {
        "trials": trials,
        "wall_s": wall,
        "throughput_per_s": trials / wall,
        "ideal_wall_s": waves * seconds,
        "mean_trial_held_s": float(held.mean()),
        "run_sweep_s": run_sweep_s,
        "warmup_s": warmup_s,
        "cluster_start_s": cluster_s,
        "driver_busy_s": busy,
        "bare_ray_wall_s": bare_wall,
        "bare_ray_throughput_per_s": trials / bare_wall,
    }


def _run_child(k: int, seconds: float, waves: int, sampler: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(k),
        "--seconds",
        str(seconds),
        "--waves",
        str(waves),
        "--sampler",
        sampler,
    ]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _series(ks: list[int], seconds: float, waves: int, sampler: str) -> dict[str, Any]:
    per_k: dict[str, dict[str, Any]] = {}
    for k in ks:
        per_k[str(k)] = _run_child(k, seconds, waves, sampler)
        print(f"{sampler} K={k}: {json.dumps(per_k[str(k)])}", file=sys.stderr)
    base = per_k[str(ks[0])]["throughput_per_s"] / ks[0]
    bare_base = per_k[str(ks[0])]["bare_ray_throughput_per_s"] / ks[0]
    for k in ks:
        one = per_k[str(k)]
        one["efficiency"] = one["throughput_per_s"] / (k * base)
        one["bare_ray_efficiency"] = one["bare_ray_throughput_per_s"] / (k * bare_base)
    return per_k


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--sampler", choices=["tpe", "random", "both"], default="both")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure_one(args.child, args.seconds, args.waves, args.sampler)))
        return
    if args.ks[0] != 1:
        parser.error("--ks must start with 1 (the baseline)")
    samplers = ["tpe", "random"] if args.sampler == "both" else [args.sampler]
    series = {s: _series(args.ks, args.seconds, args.waves, s) for s in samplers}
    main_series = series[samplers[0]]
    report: dict[str, Any] = {
        "trial_seconds": args.seconds,
        "waves": args.waves,
        "sampler": samplers[0],
        "per_k": main_series,
        "efficiency": {k: v["efficiency"] for k, v in main_series.items()},
        "goal": 0.9,
        "machine": _machine(),
    }
    if len(samplers) > 1:
        report["random_sampler"] = {
            "per_k": series["random"],
            "efficiency": {k: v["efficiency"] for k, v in series["random"].items()},
        }
    text = json.dumps(report, indent=2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
