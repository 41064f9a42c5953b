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
``driver_busy_s`` adds up, per K, the seconds the driver spent in Optuna's ``ask`` and ``tell``,
asking recipes (``ask_recipe``), filling free slots (``_fill``), submitting trials to Ray
(``_submit``), collecting results (``_collect``), waiting for Ray (``wait``), and the store
writer's commits (``_write``, on a thread of its own beside the loop). ``trials_on_fresh_workers``
counts the timed sweep's trials that ran in a worker process the warm-up had not started;
``cold_sweep_waited_s``: how long the warm-up's trials (the first sweep on the new cluster) waited
beyond their own run, which includes waiting for a worker process to start (``--no-prestart``:
without the workers the driver starts beside the task's description).

``--load N [M ...]``: the whole series again beside N CPU spinners (processes busy all the time,
stopped after each run): the sweep and bare Ray share the same load. ``--capacity K``: instead,
the completions per second the driver sustains with zero-length trials on K logical CPUs, and
where its time goes: wall time per call as above (with ``fit``, the default sampler's model
fits), the same calls' CPU per trial (``cpu_per_trial_ms``), and the driver process's CPU per
trial by thread (``driver_cpu_ms_per_trial_by_thread``: the loop, the store writer, the rest,
Ray's).

With ``--sampler random`` as well (the default runs both), the same is measured with Optuna's
RandomSampler, whose ask costs almost nothing: the difference from TPE is the driver's
sampling cost, which grows with the number of finished trials and is paid serially by the driver.

Prints one JSON object and writes it to ``scripts/results/bench_scaling.json``.

    python scripts/bench_scaling.py [--ks 1 2 4 8 16] [--seconds 2.0] [--waves 6] [--load 0 6]
    python scripts/bench_scaling.py --capacity 32 [--capacity-trials 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from machine import measured_on

CPUS_PER_NODE = 4
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scaling.json"
# A child's result line is marked: Ray's processes write their logs to the same stdout.
RESULT_MARK = "child-result: "


def _config(name: str, trials: int, seconds: float, sampler: str | None) -> dict[str, Any]:
    config = {
        "name": name,
        "task": "synthetic",
        "task_settings": {"trial_seconds": seconds},
        "budget": {"n_trials": trials},
        "resources": {"cpus_per_trial": 1},
    }
    return config if sampler is None else {**config, "sampler": sampler}


def _spin(until: float, duty: float) -> None:
    """Keep one core busy ``duty`` of each 100 ms until ``until`` (time.time())."""
    while time.time() < until:
        busy_until = time.perf_counter() + 0.1 * duty
        while time.perf_counter() < busy_until:
            pass
        time.sleep(0.1 * (1.0 - duty))


class CpuLoad:
    """A bounded CPU load beside the benchmark: ``processes`` spinners, each busy ``duty`` of the
    time, for at most ``limit_s`` (they stop on their own if this process dies)."""

    def __init__(self, processes: int, duty: float = 1.0, limit_s: float = 1800.0) -> None:
        import multiprocessing

        until = time.time() + limit_s
        context = multiprocessing.get_context("spawn")
        self.workers = [
            context.Process(target=_spin, args=(until, duty), daemon=True) for _ in range(processes)
        ]
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.join()


def _time_calls(
    owner: Any, names: list[str], totals: dict[str, float], cpu: dict[str, float] | None = None
) -> None:
    """Wrap ``owner``'s methods so that the seconds spent in each add up in ``totals``, and the
    CPU seconds of the calling thread in ``cpu`` (which a machine's load inflates less)."""
    for name in names:
        original = getattr(owner, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start
                if cpu is not None:
                    cpu[_name] += time.thread_time() - cpu_start

        totals[name] = 0.0
        if cpu is not None:
            cpu[name] = 0.0
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


def _cluster(k: int, cpus_per_node: int) -> Any:
    """A local cluster: a head with no CPU (the driver's node) and worker nodes of up to
    ``cpus_per_node`` logical CPUs, ``k`` in total; Ray connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for first in range(0, k, cpus_per_node):
        cluster.add_node(num_cpus=min(cpus_per_node, k - first))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    return cluster


def _time_driver(busy: dict[str, float], cpu: dict[str, float] | None = None) -> None:
    """Where the driver's time goes: Optuna's ask and tell, asking a recipe (``ask_recipe``:
    ask, then the suggestions, where a sampler may do its work; ``fit``: the default sampler's
    model fits, within it), filling the free slots (``_fill``: asks and submissions),
    submitting to Ray, collecting results (which includes tell), Ray's wait for results (idle
    unless trials are zero-length); and the store writer's commits (``_write``), on a thread of
    their own beside the loop."""
    import ray

    from sweep import _layerwise_fit, _loop, _writer

    _time_calls(optuna.Study, ["ask", "tell"], busy, cpu)
    _time_calls(_loop, ["ask_recipe"], busy, cpu)  # Study.ask, then the recipe's suggestions
    _time_calls(_loop.TrialLoop, ["_fill", "_submit", "_collect"], busy, cpu)
    _time_calls(_writer.StoreWriter, ["_write"], busy, cpu)
    _time_calls(ray, ["wait"], busy, cpu)
    _time_calls(_layerwise_fit.Models, ["fit"], busy, cpu)  # within ask_recipe


def measure_one(k: int, seconds: float, waves: int, sampler: str) -> dict[str, Any]:
    """One K on a fresh local cluster (run in its own process: Ray allows one session each)."""
    import ray

    from storage import Store
    from sweep import parse_config, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    cluster = _cluster(k, CPUS_PER_NODE)
    cluster_s = time.perf_counter() - start
    try:
        store = Store(f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-scaling-')) / 's.db'}")
        start = time.perf_counter()
        run_sweep(parse_config(_config("warmup", 2 * k, seconds, sampler)), store)
        warmup_s = time.perf_counter() - start
        cold = store.trials("warmup")
        warm_workers = set(cold["worker"])
        # The warm-up is a sweep on a cluster no trial ran on yet: its first wave's trials
        # wait for worker processes unless the driver started them ahead (start_workers).
        cold_waited = (cold["finished_at"] - cold["started_at"]).dt.total_seconds() - cold["run_s"]
        trials = waves * k
        busy: dict[str, float] = {}
        _time_driver(busy)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        run_sweep(parse_config(_config("timed", trials, seconds, sampler)), store)
        run_sweep_s = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        busy = dict(busy)  # the sweep's: bare Ray's own ray.wait calls come next
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
    # Trials that ran in a worker process the warm-up had not started: it imported torch first.
    fresh = ~frame["worker"].isin(warm_workers)
    waited = held - frame["run_s"]
    return {
        "trials": trials,
        "wall_s": wall,
        "throughput_per_s": trials / wall,
        "ideal_wall_s": waves * seconds,
        "mean_trial_held_s": float(held.mean()),
        "max_trial_waited_s": float(waited.max()),
        "cold_sweep_waited_s": {
            "mean": float(cold_waited.mean()),
            "max": float(cold_waited.max()),
        },
        "trials_on_fresh_workers": int(fresh.sum()),
        "fresh_workers": int(frame.loc[fresh, "worker"].nunique()),
        "load_avg_1min": [load_before, load_after],
        "run_sweep_s": run_sweep_s,
        "warmup_s": warmup_s,
        "cluster_start_s": cluster_s,
        "driver_busy_s": busy,
        "bare_ray_wall_s": bare_wall,
        "bare_ray_throughput_per_s": trials / bare_wall,
    }


def _time_writer_cpu(cpu: dict[str, float]) -> None:
    """Add up in ``cpu["writer"]`` the CPU seconds of each store writer thread, as it ends."""
    from sweep import _writer

    original = _writer.StoreWriter._run

    def run(self: Any) -> None:
        try:
            original(self)
        finally:
            cpu["writer"] += time.thread_time()  # this thread's, since it started

    setattr(_writer.StoreWriter, "_run", run)  # noqa: B010 - mypy: a method cannot be assigned


def measure_capacity(k: int, trials: int, sampler: str | None) -> dict[str, Any]:
    """Completions per second the driver sustains: zero-length trials on K logical CPUs (nodes of
    16), so that the driver, not the trials, is the bottleneck."""
    import ray

    from storage import Store
    from sweep import parse_config, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cluster = _cluster(k, 16)
    try:
        store = Store(f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-capacity-')) / 's.db'}")
        run_sweep(parse_config(_config("warmup", 2 * k, 0.0, sampler)), store)
        busy: dict[str, float] = {}
        call_cpu: dict[str, float] = {}
        _time_driver(busy, call_cpu)
        threads = {"writer": 0.0}
        _time_writer_cpu(threads)
        start, cpu_start = time.perf_counter(), time.process_time()
        loop_start = time.thread_time()
        run_sweep(parse_config(_config("timed", trials, 0.0, sampler)), store)
        threads["loop"] = time.thread_time() - loop_start
        run_sweep_s = time.perf_counter() - start
        # The driver process's CPU, all its threads (the loop, the store writer, Ray's own):
        # here it shares 2 cores with K workers; on a head node it has cores of its own.
        driver_cpu_s = time.process_time() - cpu_start
        threads["ray_and_other"] = driver_cpu_s - threads["loop"] - threads["writer"]
        frame = store.trials("timed")
    finally:
        ray.shutdown()
        cluster.shutdown()
    wall = (frame["finished_at"].max() - frame["started_at"].min()).total_seconds()
    python_s = threads["loop"] + threads["writer"]
    return {
        "k": k,
        "trials": trials,
        "sampler": sampler or "default (layerwise)",
        "states": frame["state"].value_counts().to_dict(),
        "wall_s": wall,
        "completions_per_s": trials / wall,
        "driver_cpu_ms_per_trial": 1000 * driver_cpu_s / trials,
        "completions_per_driver_cpu_s": trials / driver_cpu_s,
        # The loop's and the writer's CPU: the threads that run Python take turns on the GIL,
        # while Ray's own threads (its IO, its transfers) run beside them. On a head node with
        # cores to spare, this pace is the driver's, unless Ray's threads fall behind.
        "python_threads_ms_per_trial": 1000 * python_s / trials,
        "completions_per_python_thread_cpu_s": trials / python_s,
        # The driver's CPU per trial by thread: the ask/submit/collect loop, the store writer,
        # and the rest (Ray's own threads: its IO, its object transfers).
        "driver_cpu_ms_per_trial_by_thread": {
            name: 1000 * seconds / trials for name, seconds in threads.items()
        },
        "run_sweep_s": run_sweep_s,
        "driver_busy_s": busy,
        "busy_per_trial_ms": {name: 1000 * v / trials for name, v in busy.items()},
        # The same calls' CPU (their thread's), per trial: nested as the calls are (ask_recipe
        # holds ask and fit; _fill holds ask_recipe and _submit; _collect holds tell).
        "cpu_per_trial_ms": {name: 1000 * v / trials for name, v in call_cpu.items()},
    }


def _run_child(args: list[str], load: int) -> dict[str, Any]:
    """Run this script with ``args`` in a process of its own, beside ``load`` CPU spinners."""
    spinners = CpuLoad(load) if load else None
    try:
        done = subprocess.run(
            [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
        )
    finally:
        if spinners is not None:
            spinners.stop()
    marked = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if len(marked) != 1:
        sys.exit(f"the child printed {len(marked)} result lines, expected 1")
    result: dict[str, Any] = json.loads(marked[0].removeprefix(RESULT_MARK))
    return result


def _series(
    ks: list[int], seconds: float, waves: int, sampler: str, load: int, prestart: bool
) -> dict[str, Any]:
    per_k: dict[str, dict[str, Any]] = {}
    for k in ks:
        args = ["--child", str(k), "--seconds", str(seconds), "--waves", str(waves)]
        args += ["--no-prestart"] if not prestart else []
        per_k[str(k)] = _run_child([*args, "--sampler", sampler], load)
        print(f"{sampler} load {load} K={k}: {json.dumps(per_k[str(k)])}", file=sys.stderr)
    base = per_k[str(ks[0])]["throughput_per_s"] / ks[0]
    bare_base = per_k[str(ks[0])]["bare_ray_throughput_per_s"] / ks[0]
    for k in ks:
        one = per_k[str(k)]
        one["efficiency"] = one["throughput_per_s"] / (k * base)
        one["bare_ray_efficiency"] = one["bare_ray_throughput_per_s"] / (k * bare_base)
        one["of_bare_ray"] = one["efficiency"] / one["bare_ray_efficiency"]
    return per_k


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--sampler", choices=["tpe", "random", "both"], default="both")
    parser.add_argument(
        "--load", type=int, nargs="+", default=[0], help="CPU spinners beside each run (0: none)"
    )
    parser.add_argument("--capacity", type=int, help="K logical CPUs of zero-length trials")
    parser.add_argument("--capacity-trials", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-prestart", action="store_true", help="no worker processes started ahead of trials"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-capacity", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.no_prestart:
        from sweep import _submission

        _submission.MAX_PRESTARTED = 0
    if args.child is not None:
        result = measure_one(args.child, args.seconds, args.waves, args.sampler)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return
    if args.child_capacity is not None:
        sampler = None if args.sampler == "both" else args.sampler
        result = measure_capacity(args.child_capacity, args.capacity_trials, sampler)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return
    if args.capacity is not None:
        child = ["--child-capacity", str(args.capacity), "--capacity-trials"]
        child += [str(args.capacity_trials), "--sampler", args.sampler]
        capacity = _run_child(child, 0)
        capacity["measured_on"] = measured_on()
        _write(capacity, args.output)
        return
    if args.ks[0] != 1:
        parser.error("--ks must start with 1 (the baseline)")
    samplers = ["tpe", "random"] if args.sampler == "both" else [args.sampler]
    report: dict[str, Any] = {"trial_seconds": args.seconds, "waves": args.waves, "goal": 0.9}
    report["prestart"] = not args.no_prestart
    for load in args.load:
        series = {
            s: _series(args.ks, args.seconds, args.waves, s, load, not args.no_prestart)
            for s in samplers
        }
        main_series = series[samplers[0]]
        one: dict[str, Any] = {
            "sampler": samplers[0],
            "per_k": main_series,
            "efficiency": {k: v["efficiency"] for k, v in main_series.items()},
            "of_bare_ray": {k: v["of_bare_ray"] for k, v in main_series.items()},
        }
        if len(samplers) > 1:
            one["random_sampler"] = {
                "per_k": series["random"],
                "efficiency": {k: v["efficiency"] for k, v in series["random"].items()},
            }
        report[f"load_{load}"] = one
    report["measured_on"] = measured_on()
    _write(report, args.output)


def _write(report: dict[str, Any], path: Path) -> None:
    text = json.dumps(report, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
