"""Search quality: does the sweep find better models than the alternatives, at a fixed budget?

For each task, sampler and seed, runs a sweep of ``--trials`` trials and scores its trials by
normalized hypervolume (``sweep._quality``: accuracy as the drop from fp32 with the reference at
a 10-point drop; size and latency divided by the fp32 model's, reference 1.0). Compared:

- the samplers ``layerwise`` (sweep/_layerwise.py), ``tpe`` (multivariate, constant liar),
  ``nsga2``, ``gp`` (only where asked: its asks take longer than a trial here) and ``random``, and
  ``random`` given twice the budget (``random_2x_hypervolume``);
- the best uniform recipes: every layer the same amount (0, 0.1, ..., 0.9), at every order,
  granularity and method (a ``grid`` sweep over one tied amount).

Tasks: ``synthetic`` (12 analytic layers, objectives accuracy and compressed_bytes, so that the
exact front is known: ``true_front_hypervolume``) is driven in-process through the same search
space and samplers as the driver, keeping 3 trials in flight as the driver does with 2 slots;
``digits`` (a real CNN, the default three objectives) runs through ``sweep.run_sweep`` on local
Ray with a SQLite store in a temporary directory, 2 trials at a time. On ``digits`` the script
also reports the smallest ``size_bytes`` / ``compressed_bytes`` and ``latency_ms`` (and the
largest ``speedup``) among trials within 1 point of the fp32 accuracy, for the uniform recipes
and for each sampler.

The deep tasks (``--tasks resnet,transformer``) run like ``digits``, at the sizes in
``REAL_TASKS``: ``resnet`` in ResNet-34's layout at width 8 (37 layers: 73 searched layer
parameters, an amount and a method each but the head's) and ``transformer`` at its default size
(25 Linear layers, attention heads among the structured choices), both int8 orders; the uniform
grid there is 0.2 apart. ``--deep-trials`` (16) trials per sweep, ``--deep-seeds`` (3) seeds.
``--tasks resnet18`` runs the full-size model the same way: torchvision's ResNet-18 layout at
width 64 (21 layers, 11.2 M weights); ``--no-random-2x`` leaves out random search with twice
the budget, which at that size costs a CPU hours.

Prints one JSON object and writes it to ``scripts/results/bench_search.json``, with a plot of
the mean hypervolume over trials (``bench_search.png``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from machine import measured_on

from storage import Store
from sweep import _quality, connect_ray, parse_config, run_sweep
from sweep._config import SweepConfig
from sweep._layerwise_startup import collapsed
from sweep._samplers import ask_recipe, enqueue_uniform, make_sampler, startup_trials
from sweep._space import Space
from trials import Recipe
from trials.tasks.synthetic import SyntheticTask

RESULTS = Path(__file__).parent / "results"
SWEEP = Path(__file__).parent.parent / "sweep"
SYNTHETIC_OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min"}
UNIFORM_SPACE = {
    "tie": [["*"]],
    "method_scope": "global",
    "amount_mode": "independent",
    "amount": {"max": 0.9, "step": 0.1},
}
IN_FLIGHT = 3  # the driver with 2 slots keeps one more trial submitted
MAX_DROP = 0.01
Rows = list[dict[str, float]]


def _config(task: str, variant: str, seed: int, n_trials: int, **extra: Any) -> SweepConfig:
    """``variant``: a sampler name, optionally with ``-s<N>`` (n_startup_trials), ``-step<X>``
    (the amount grid's step), ``-spread<X>`` (the amount spread), ``-ind`` (amount_mode
    independent) and ``-drop<X>`` (``sampler_settings.max_drop``), e.g. ``tpe-s20-step0.1``."""
    sampler, *options = variant.split("-")
    data: dict[str, Any] = {
        "name": f"{task}-{variant}-{seed}",
        "task": task,
        "sampler": sampler,
        "seed": seed,
        "budget": {"n_trials": n_trials},
        "resources": {"max_concurrent": 2},
        **extra,
    }
    space = dict(data.get("search_space", {}))
    amount = dict(space.get("amount", {}))
    for option in options:
        if option.startswith(("step", "spread")):
            key = option.rstrip("0123456789.")
            amount[key] = float(option[len(key) :])
            space["amount"] = amount
        elif option.startswith("u"):
            settings = dict(data.get("sampler_settings", {}))
            data["sampler_settings"] = {**settings, "uniform_startup": int(option[1:])}
        elif option.startswith("drop"):
            settings = dict(data.get("sampler_settings", {}))
            data["sampler_settings"] = {**settings, "max_drop": float(option[len("drop") :])}
        elif option == "ind":
            space["amount_mode"] = "independent"
        elif option.startswith("s"):
            settings = dict(data.get("sampler_settings", {}))
            data["sampler_settings"] = {**settings, "n_startup_trials": int(option[1:])}
        else:
            raise ValueError(f"--samplers: unknown option {option!r} in {variant!r}")
    if space:
        data["search_space"] = space
    return parse_config(data)


# -- synthetic: in-process ask/tell ---------------------------------------------------------------
def _synthetic_space(task: SyntheticTask, config: SweepConfig) -> Space:
    layers = tuple(task.layer_names)
    return Space(
        layers,
        config.search_space,
        config.trial,
        dict.fromkeys(layers),
        backend=config.latency.backend,
        layer_params={name: int(w) for name, w in zip(layers, task.weights, strict=True)},
        model_params=int(task.analytic_metrics(Recipe())["fp32_params"]),
    )


def run_synthetic(task: SyntheticTask, config: SweepConfig) -> Rows:
    space = _synthetic_space(task, config)
    study = optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=make_sampler(config, space),
    )
    enqueue_uniform(study, space, startup_trials(config, space)[0])
    rows: Rows = []
    flight: list[tuple[int, Recipe]] = []
    asked = 0
    while len(rows) < config.budget.n_trials:
        while len(flight) < IN_FLIGHT and asked < config.budget.n_trials:
            flight.append(ask_recipe(study, space))
            asked += 1
        trial, recipe = flight.pop(0)
        metrics = task.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in config.objectives])
        rows.append(metrics)
    return rows


def synthetic_uniform(task: SyntheticTask, config: SweepConfig) -> Rows:
    rows: Rows = []
    space = config.search_space
    for amount in np.linspace(0.0, 0.9, 10):
        for method in space.methods:
            for order in space.orders or ("prune_ptq", "prune_qat"):
                for granularity in space.granularities:
                    layers = {
                        name: {"amount": round(float(amount), 6), "method": method}
                        for name in task.layer_names
                    }
                    recipe = Recipe.from_dict(
                        {"layers": layers, "order": order, "granularity": granularity}
                    )
                    rows.append(task.analytic_metrics(recipe))
    return rows


# -- digits: the real sweep -----------------------------------------------------------------------
def run_real(config: SweepConfig, store: Store) -> Rows:
    """The COMPLETE trials' metrics of one sweep; kept in ``$TMPDIR/bench_search_runs`` by name
    and settings (for ``layerwise``, and its code), so that a benchmark stopped after hours
    re-runs only what it had not done."""
    settings = config.model_dump_json()
    if config.sampler == "layerwise":  # its code changes between runs: a new version, new rows
        sources = [*sorted(SWEEP.glob("_layerwise*.py")), SWEEP / "_samplers.py"]
        settings += "".join(path.read_text() for path in sources)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    cached = Path(tempfile.gettempdir()) / "bench_search_runs" / f"{config.name}-{key}.json"
    if cached.exists():
        return list(json.loads(cached.read_text()))
    rows = _run_real(config, store)
    cached.parent.mkdir(exist_ok=True)
    cached.write_text(json.dumps(rows))
    return rows


def _run_real(config: SweepConfig, store: Store) -> Rows:
    started = time.monotonic()
    run_sweep(config, store, replace=True)
    frame = store.trials(config.name, states=["COMPLETE"])
    print(f"  {config.name}: {len(frame)} trials in {time.monotonic() - started:.0f} s", flush=True)
    return [dict(metrics) for metrics in frame["metrics"]]


# -- scoring --------------------------------------------------------------------------------------
def _smallest_within_drop(rows: Rows) -> dict[str, float | None]:
    ok = [r for r in rows if r["accuracy_drop"] <= MAX_DROP]
    best: dict[str, float | None] = {"trials_within_drop": float(len(ok))}
    # Trials that lost much of the accuracy (as the layerwise sampler tells them): wasted budget.
    best["trials_collapsed"] = float(collapsed(np.array([r["accuracy"] for r in rows])).sum())
    for name in ("size_bytes", "compressed_bytes", "latency_ms"):
        best[name] = min((r[name] for r in ok), default=None)
    best["speedup"] = max((r["speedup"] for r in ok), default=None)
    return best


def _summary(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "per_seed": [round(v, 6) for v in values]}


def _steady_score(
    objectives: Mapping[str, str], fp32: Mapping[str, float]
) -> Callable[[Rows], float] | None:
    """The hypervolume of accuracy and size alone, which the machine's load does not move, where
    latency is one of three objectives or more. A trial times its latency beside another trial's
    training, on a shared machine: the same uniform recipes of resnet timed 1.67 ms in one
    seed's hour, 2.22 ms in the next. (Latency as ``speedup`` moves as much: a trial off the
    front is divided by one fp32 timing per sweep, and one sweep's, taken in a loaded minute,
    made every speedup 1.9x.)"""
    if "latency_ms" not in objectives or len(objectives) < 3:
        return None
    rest = {name: d for name, d in objectives.items() if name != "latency_ms"}
    point = _quality.reference_point(rest)
    return lambda rows: _quality.hypervolume(_quality.losses(rows, rest, fp32), point)


def score_task(
    runs: Mapping[str, list[Rows]],
    uniform: Rows,
    objectives: Mapping[str, str],
    n_trials: int,
    true_front: Rows | None = None,
    real: bool = False,
) -> dict[str, Any]:
    everything = [row for rows_list in runs.values() for rows in rows_list for row in rows]
    fp32 = _quality.fp32_reference(everything + uniform, objectives)
    reference = _quality.reference_point(objectives)

    def curve(rows: Rows) -> list[float]:
        return _quality.hypervolume_curve(_quality.losses(rows, objectives, fp32), reference)

    curves = {name: [curve(rows) for rows in rows_list] for name, rows_list in runs.items()}
    steady = _steady_score(objectives, fp32)
    uniform_hv = curve(uniform)[-1]
    best = max([uniform_hv] + [c[-1] for cs in curves.values() for c in cs])
    result: dict[str, Any] = {
        "objectives": dict(objectives),
        "fp32_reference": fp32,
        "reference_point": {name: float(v) for name, v in zip(objectives, reference, strict=True)},
        "n_trials": n_trials,
        "best_hypervolume": best,
        "uniform_hypervolume": uniform_hv,
        "uniform_trials": len(uniform),
        "samplers": {},
    }
    if true_front is not None:
        result["true_front_hypervolume"] = curve(true_front)[-1]
    for name, cs in curves.items():
        if name == "random_2x":
            continue
        entry: dict[str, Any] = {
            "hypervolume": _summary([c[min(n_trials, len(c)) - 1] for c in cs]),
            "trials_to_95pct_best": [_quality.trials_to_reach(c, 0.95 * best) for c in cs],
            "mean_curve": [float(v) for v in np.mean([c[:n_trials] for c in cs], axis=0)],
        }
        if real:
            entry["best_searched"] = [_smallest_within_drop(rows[:n_trials]) for rows in runs[name]]
        if steady is not None:
            entry["hypervolume_without_latency"] = _summary(
                [steady(rows[:n_trials]) for rows in runs[name]]
            )
        result["samplers"][name] = entry
    if "random_2x" in curves:
        result["random_2x_hypervolume"] = _summary([c[-1] for c in curves["random_2x"]])
        if steady is not None:
            result["random_2x_hypervolume_without_latency"] = _summary(
                [steady(rows) for rows in runs["random_2x"]]
            )
        result["random_2x_mean_curve"] = [float(v) for v in np.mean(curves["random_2x"], axis=0)]
    if real:
        result["best_uniform"] = _smallest_within_drop(uniform)
    if steady is not None:
        result["uniform_hypervolume_without_latency"] = steady(uniform)
    return result


def _runs(
    samplers: Sequence[str],
    seeds: Sequence[int],
    n_trials: int,
    run: Callable[[str, int, int], Rows],
    random_2x: bool = True,
) -> dict[str, list[Rows]]:
    """Each sampler's run per seed, and random search's with twice the budget (unless
    ``random_2x`` is False). Seed by seed, every sampler in turn: a machine's load moves
    the latency a trial times by a third from one hour to the next, and a sampler whose seeds ran
    in another hour than the others' would be scored on the hour."""
    extra = ["random_2x"] if random_2x else []
    runs: dict[str, list[Rows]] = {sampler: [] for sampler in [*samplers, *extra]}
    for seed in seeds:
        for sampler, rows in runs.items():
            budget = 2 * n_trials if sampler == "random_2x" else n_trials
            actual = "random-u0" if sampler == "random_2x" else sampler  # pure random search
            rows.append(run(actual, seed, budget))
    return runs


def bench_synthetic(samplers: Sequence[str], seeds: Sequence[int], n_trials: int) -> dict[str, Any]:
    task = SyntheticTask(n_layers=12, seed=0)
    extra = {"objectives": SYNTHETIC_OBJECTIVES}
    runs = _runs(
        samplers,
        seeds,
        n_trials,
        lambda s, seed, n: run_synthetic(task, _config("synthetic", s, seed, n, **extra)),
    )
    base = _config("synthetic", "tpe", 0, n_trials, **extra)
    front = task.true_front(
        SYNTHETIC_OBJECTIVES,
        amounts=[round(a, 6) for a in np.linspace(0.0, 0.9, 19)],
        methods=tuple(base.search_space.methods),
    )
    return score_task(
        runs,
        synthetic_uniform(task, base),
        SYNTHETIC_OBJECTIVES,
        n_trials,
        true_front=[point.metrics for point in front],
    )


# The deep tasks at a size a 2-core CPU searches in an hour: ResNet-34's layout (blocks 3, 4, 6, 3:
# 37 Conv/Linear layers, 73 searched layer parameters with their methods) at width 8, and the
# Transformer encoder at its default size (25 Linear layers). Fewer training images per epoch
# keep one trial to seconds; the data and the code path are those of the full-size tasks.
# ``resnet18`` is the full-size model: torchvision's ResNet-18 (width 64, blocks 2, 2, 2, 2: 21
# layers, 11.2 M weights), 25-30 s a trial on 2 CPU cores.
REAL_TASKS: dict[str, dict[str, Any]] = {
    "digits": {},
    "resnet": {"width": 8, "blocks": [3, 4, 6, 3], "n_train": 2000, "n_calibration": 256},
    "transformer": {"n_train": 2000},
    "resnet18": {"width": 64, "blocks": [2, 2, 2, 2], "n_train": 2000, "n_calibration": 256},
}
# The task each benchmark entry runs (the entry's own name where it is a task).
TASK_OF = {"resnet18": "resnet"}
# Both int8 orders, both granularities and both methods: the uniform grid stays small enough to
# run whole (amounts 0.1 apart on digits; 0.2 apart on the deeper tasks).
REAL_ORDERS = ["prune_ptq", "prune_qat"]


def bench_real(
    entry: str,
    samplers: Sequence[str],
    seeds: Sequence[int],
    n_trials: int,
    uniform_step: float,
    random_2x: bool = True,
) -> dict[str, Any]:
    connect_ray(None)
    settings, task = REAL_TASKS[entry], TASK_OF.get(entry, entry)
    extra: dict[str, Any] = {"task_settings": settings} if settings else {}
    extra["search_space"] = {"orders": REAL_ORDERS}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{folder}/bench.db")
        runs = _runs(
            samplers,
            seeds,
            n_trials,
            lambda s, seed, n: run_real(_config(task, s, seed, n, **extra), store),
            random_2x,
        )
        top = round(uniform_step * int(0.9 / uniform_step + 1e-9), 6)  # on the grid, <= 0.9
        uniform_space = {
            **UNIFORM_SPACE,
            "orders": REAL_ORDERS,
            "amount": {"max": top, "step": uniform_step},
        }
        probe = _config(task, "grid", 0, 1, **{**extra, "search_space": uniform_space})
        # One run of the whole grid: every uniform recipe once.
        amounts = len(np.arange(0.0, top + 1e-9, uniform_step))
        n_grid = amounts * len(REAL_ORDERS) * 2 * len(probe.search_space.methods)
        grid = _config(task, "grid", 0, n_grid, **{**extra, "search_space": uniform_space})
        uniform = run_real(grid, store)
        store.close()
    objectives = dict(probe.objectives)
    result = score_task(runs, uniform, objectives, n_trials, real=True)
    result["task_settings"] = settings
    result["uniform_step"] = uniform_step
    return result


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        scored = results["tasks"][task]
        for name, entry in scored["samplers"].items():
            curve = entry["mean_curve"]
            ax.plot(range(1, len(curve) + 1), curve, label=name)
        if "random_2x_mean_curve" in scored:
            curve = scored["random_2x_mean_curve"]
            ax.plot(range(1, len(curve) + 1), curve, ":", color="gray", label="random (2x)")
        ax.axhline(scored["uniform_hypervolume"], color="black", ls="--", label="best uniform")
        if "true_front_hypervolume" in scored:
            ax.axhline(scored["true_front_hypervolume"], color="green", ls="-.", label="true front")
        ax.set(title=task, xlabel="trials", ylabel="hypervolume (mean over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="layerwise,tpe,nsga2,random")
    parser.add_argument("--synthetic-trials", type=int, default=100)
    parser.add_argument("--synthetic-seeds", type=int, default=5)
    parser.add_argument("--digits-trials", type=int, default=40)
    parser.add_argument("--digits-seeds", type=int, default=3)
    parser.add_argument("--deep-trials", type=int, default=16, help="resnet and transformer")
    parser.add_argument("--deep-seeds", type=int, default=3)
    parser.add_argument(
        "--tasks", default="synthetic,digits", help="also: resnet, transformer, resnet18"
    )
    parser.add_argument(
        "--no-random-2x",
        action="store_true",
        help="leave out random search with twice the budget (resnet18: hours on a CPU)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_search.json")
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    started = time.monotonic()
    results: dict[str, Any] = {"tasks": {}}
    if args.output.exists():  # tasks not run now keep their earlier results
        results = json.loads(args.output.read_text())
    if "synthetic" in args.tasks:
        seeds = range(args.synthetic_seeds)
        results["tasks"]["synthetic"] = bench_synthetic(samplers, seeds, args.synthetic_trials)
        results["tasks"]["synthetic"]["seeds"] = len(seeds)
    for task in ("digits", "resnet", "transformer", "resnet18"):
        if task not in args.tasks.split(","):
            continue
        started_task = time.monotonic()
        deep = task != "digits"
        seeds = range(args.deep_seeds if deep else args.digits_seeds)
        trials = args.deep_trials if deep else args.digits_trials
        step = 0.2 if deep else 0.1
        scored = bench_real(task, samplers, seeds, trials, step, not args.no_random_2x)
        results["tasks"][task] = {**scored, "seeds": len(seeds), "measured_on": measured_on()}
        results["tasks"][task]["wall_s"] = round(time.monotonic() - started_task, 1)
    results[f"wall_s_{args.tasks}"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
