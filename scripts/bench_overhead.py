"""Orchestration overhead of a sweep: driver + Optuna + Ray + store, per trial.

Runs sweeps of the analytic ``synthetic`` task, whose trials last exactly ``trial_seconds``, on a
local Ray, and compares with the same trials run through Optuna's own
``study.optimize(n_jobs=...)`` on an RDB (SQLite) storage, in the same run. Prints one JSON object:

- ``overhead_fraction``: (wall - ideal) / ideal for ``--trials`` trials of ``--seconds`` each,
  ``--concurrency`` at a time (ideal = trials * seconds / concurrency);
- ``scheduling_ms_per_trial``: wall time per trial for ``--many`` trials of zero length, split
  into ``sampler_ms_per_trial`` (the default sampler's ask, which grows with the trials it models)
  and ``orchestration_ms_per_trial`` (driver, Ray and store: the rest).

The baseline: the default objectives, with Optuna's multivariate TPE (constant liar), the
sampler an Optuna user would run them with.

    python scripts/bench_overhead.py [--trials 60] [--seconds 1.0] [--many 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from machine import measured_on

import sweep._loop
from storage import Store
from sweep import connect_ray, parse_config, run_sweep
from sweep._config import DEFAULT_OBJECTIVES
from sweep._samplers import DEFAULT_STARTUP_TRIALS
from trials import AnalyticTask, LayerSpec, Recipe, load_task, prunable_layers

ASKS: list[float] = []  # seconds per ask of the sweeps' sampler


def _timed_ask(study: optuna.Study, space: Any) -> Any:
    start = time.perf_counter()
    asked = ASK(study, space)
    ASKS.append(time.perf_counter() - start)
    return asked


ASK = sweep._loop.ask_recipe
sweep._loop.ask_recipe = _timed_ask


def _sweep_wall(store: Store, name: str, trials: int, seconds: float, concurrency: int) -> float:
    config = parse_config(
        {
            "name": name,
            "task": "synthetic",
            "task_settings": {"trial_seconds": seconds},
            "budget": {"n_trials": trials},
            "resources": {"cpus_per_trial": 1, "max_concurrent": concurrency},
        }
    )
    start = time.perf_counter()
    run_sweep(config, store)
    return time.perf_counter() - start


def _optuna_wall(url: str, trials: int, seconds: float, concurrency: int) -> float:
    """The same synthetic trials through Optuna's own threaded optimize on an RDB storage."""
    task = load_task("synthetic", {"trial_seconds": 0.0})
    if not isinstance(task, AnalyticTask):
        raise TypeError("the synthetic task must be analytic")
    layers = prunable_layers(task.build_model())

    def objective(trial: optuna.Trial) -> list[float]:
        recipe = Recipe(
            layers={n: LayerSpec(trial.suggest_float(n, 0.0, 0.95, step=0.05)) for n in layers},
            order=trial.suggest_categorical("order", ["prune_ptq", "prune_qat"]),
            granularity=trial.suggest_categorical("granularity", ["per_tensor", "per_channel"]),
        )
        time.sleep(seconds)
        metrics = task.analytic_metrics(recipe)
        return [metrics[name] for name in DEFAULT_OBJECTIVES]

    sampler = optuna.samplers.TPESampler(
        seed=0, multivariate=True, constant_liar=True, n_startup_trials=DEFAULT_STARTUP_TRIALS
    )
    study = optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in DEFAULT_OBJECTIVES.values()],
        storage=url,
        sampler=sampler,
    )
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=concurrency)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--many", type=int, default=1000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    store = Store(f"sqlite:///{workdir / 'sweep.db'}")
    connect_ray(None)
    ideal = args.trials * args.seconds / args.concurrency
    # Start the worker processes first (importing torch costs seconds, once per worker): the
    # benchmark measures steady-state orchestration, as in a long sweep.
    _sweep_wall(store, "warmup", 4 * args.concurrency, 0.0, args.concurrency)
    wall = _sweep_wall(store, "timed", args.trials, args.seconds, args.concurrency)
    ASKS.clear()
    many_wall = _sweep_wall(store, "many", args.many, 0.0, args.concurrency)
    sampler_ms = 1000 * sum(ASKS) / args.many
    ray.shutdown()
    baseline = _optuna_wall(
        f"sqlite:///{workdir / 'optuna.db'}", args.trials, args.seconds, args.concurrency
    )
    baseline_many = _optuna_wall(
        f"sqlite:///{workdir / 'optuna-many.db'}", args.many, 0.0, args.concurrency
    )
    report: dict[str, Any] = {
        "trials": args.trials,
        "trial_seconds": args.seconds,
        "concurrency": args.concurrency,
        "ideal_s": ideal,
        "wall_s": wall,
        "overhead_fraction": (wall - ideal) / ideal,
        "scheduling_ms_per_trial": 1000 * many_wall / args.many,
        "sampler_ms_per_trial": sampler_ms,
        "orchestration_ms_per_trial": 1000 * many_wall / args.many - sampler_ms,
        "baseline_optuna_rdb": {
            "wall_s": baseline,
            "overhead_fraction": (baseline - ideal) / ideal,
            "scheduling_ms_per_trial": 1000 * baseline_many / args.many,
        },
        "measured_on": measured_on(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
