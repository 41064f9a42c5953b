"""How the search cost grows with depth: the sampler's ask time, its startup trials, and the
trials it needs to reach 95% of the exact front's hypervolume, at 12 to 300 layers.

For each depth (``--layers``: ``synthetic`` with that many analytic layers, model ``--task-seed``)
and sampler (``layerwise``, the default; ``tpe``, multivariate with constant liar, as the
reference, at the depths of ``--tpe-layers`` only, with fewer seeds where it says so: its asks
are slow), over ``--seeds`` sampler seeds, runs ``--trials`` trials in-process with the
objectives accuracy and compressed_bytes, as ``bench_search.py`` drives ``synthetic`` (the
driver's search space and sampler, 3 trials in flight). Recorded per run:

- ``ask_ms``: wall time of each ask as the driver makes it (``ask_recipe``: the sampler's draw,
  the recipe's parameters and the trial added to the study), its median and 95th percentile
  over the last 100 asks and the last ask's (the 1,000th); ``sampler_ms``: the same for the
  sampler's own draw (``next_params``, else ``sample_relative``), the part that models the
  trials (the rest is Optuna's and the search space's work per parameter, whatever the
  sampler); ``ask_cpu_ms`` and ``sampler_cpu_ms``: the same in CPU time of this process, which
  other work on a shared machine inflates much less than wall time;
- ``startup``: ``startup_trials(config, space)``: (uniform recipes first, trials before the
  sampler models the front);
- ``trials_to_95``: trials until the hypervolume of the trials so far (``sweep._quality``:
  accuracy drop with the reference at 10 points, compressed_bytes over the fp32 model's) reaches
  95% of the front's; ``final_ratio``: the last hypervolume over the front's.

The front: every recipe of the searched space (amount grid, per-layer methods, every order and
granularity). Up to ``--exact-layers`` layers its hypervolume is computed exactly: both
objectives are sums of per-layer terms, so the Pareto set of partial sums is built layer by layer
(``SyntheticTask.true_front``'s method), keeping only partial sums whose accuracy loss, plus the
least the remaining layers add, stays under the 10-point reference: nothing beyond it adds
hypervolume. Deeper, that set grows too large (hours at 300 layers), and the hypervolume is
bracketed instead: the lower convex hull of a sum of per-layer option sets is the sum of their
hulls, its vertices are recipes of the space (a lower bound, ``front_hv_low``), and every recipe
lies on or above the hull (the area above it, with a half-byte allowance for the rounding of
compressed_bytes, is an upper bound, ``front_hv_high``). Where exact, the exact value is the
target; else the upper bound, so that ``trials_to_95`` is never fewer than the exact count;
``trials_to_95_range`` is [count at 95% of the lower bound, count at 95% of the upper bound],
which contains the exact count. The bracket is a fraction of a percent wide (it narrows with
depth) and is checked against the exact value at every exact depth (``front_in_bracket``).

``exponent``: b of trials_to_95 ~ c * layers ** b, least squares in log-log over the depths'
mean counts (depths where a seed never reached 95% are left out, and listed).
``uniform_ratio``: the hypervolume of every uniform recipe (one amount for all layers, 0 to 0.9,
every order, granularity and method) over the front's, for context.

    python scripts/bench_depth.py [--layers 12,30,100,300] [--trials 1000] [--seeds 3]

Prints one JSON object and writes it to ``scripts/results/bench_depth.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from bench_search import (
    IN_FLIGHT,
    SYNTHETIC_OBJECTIVES,
    _config,
    _synthetic_space,
    synthetic_uniform,
)

from sweep import _quality
from sweep._config import SweepConfig
from sweep._feasible import WholeSampler
from sweep._samplers import ask_recipe, enqueue_uniform, make_sampler, startup_trials
from sweep._space import Space
from trials import LayerSpec, Recipe
from trials.tasks.synthetic import FILE_BYTES, FLOAT, ORDER_PENALTY, SyntheticTask

RESULTS = Path(__file__).parent / "results"
TAIL = 100  # ask times are summarized over the last TAIL asks
TIMES = ("ask_ms", "ask_cpu_ms", "sampler_ms", "sampler_cpu_ms")
TARGET = 0.95
Rows = list[dict[str, float]]


# -- the front's hypervolume ----------------------------------------------------------------------
def _options(task: SyntheticTask, space: Space, granularity: str) -> tuple[np.ndarray, np.ndarray]:
    """Per layer (row) and option (column: amount x method), compressed bytes and accuracy loss."""
    low, high, step = space.base_grid()
    grid = np.round(low + step * np.arange(round((high - low) / step) + 1), 6)
    options = [LayerSpec(float(a), m) for a, m in product(grid, space.search.methods)]
    cost = np.zeros((task.n_layers, len(options)))
    loss = np.zeros_like(cost)
    for layer, option in product(range(task.n_layers), range(len(options))):
        terms = task._terms(layer, options[option], granularity)
        cost[layer, option], loss[layer, option] = terms["compressed_bytes"], terms["loss"]
    return cost, loss


def _granularities(space: Space) -> dict[str, list[str]]:
    """The granularities a layer's terms take -> the orders that go with them (a float order
    quantizes nothing: granularity ``none`` whatever the recipe's)."""
    found: dict[str, list[str]] = {}
    for order, granularity in product(space.orders, space.search.granularities):
        found.setdefault("none" if order == FLOAT else granularity, []).append(order)
    return {g: sorted(set(orders)) for g, orders in found.items()}


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    order = np.lexsort((loss, cost))
    best = np.minimum.accumulate(loss[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = loss[order][1:] < best[:-1]
    return order[keep]


def exact_front_hv(task: SyntheticTask, space: Space, fp32_bytes: float) -> float:
    """The exact hypervolume of the space's front, by non-dominated partial sums (see above)."""
    window = _quality.ACCURACY_WINDOW
    points = []
    for granularity, orders in _granularities(space).items():
        option_cost, option_loss = _options(task, space, granularity)
        # The least loss the layers after each one add: a partial sum that cannot stay under the
        # window with it never becomes a point inside the reference box.
        rest = np.concatenate([np.cumsum(option_loss.min(axis=1)[::-1])[::-1][1:], [0.0]])
        budget = window - min(ORDER_PENALTY[o] for o in orders)
        cost, loss = np.zeros(1), np.zeros(1)
        for layer in range(task.n_layers):
            cost = (cost[:, None] + option_cost[layer][None, :]).ravel()
            loss = (loss[:, None] + option_loss[layer][None, :]).ravel()
            inside = loss + rest[layer] < budget
            cost, loss = cost[inside], loss[inside]
            keep = _pareto(cost, loss)
            cost, loss = cost[keep], loss[keep]
        size = np.round(FILE_BYTES / 2 + cost) / fp32_bytes  # compressed_bytes is whole bytes
        points += [np.column_stack([loss + ORDER_PENALTY[o], size]) for o in orders]
    reference = _quality.reference_point(SYNTHETIC_OBJECTIVES)
    return _quality.hypervolume(np.vstack(points), reference)


def _lower_hull(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """The vertices of the lower-left convex hull of the points, by cost ascending."""
    hull: list[tuple[float, float]] = []
    for i in np.lexsort((loss, cost)):
        x, y = float(cost[i]), float(loss[i])
        if hull and y >= hull[-1][1]:
            continue  # dominated by the last vertex
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) > 0:
                break
            hull.pop()  # on or above the segment from hull[-2] to the new point
        hull.append((x, y))
    return np.array(hull)


def front_hv_bounds(task: SyntheticTask, space: Space, fp32_bytes: float) -> tuple[float, float]:
    """(lower, upper) bounds on the front's hypervolume, from the convex hulls (see above)."""
    low: list[np.ndarray] = []
    high: list[np.ndarray] = []
    for granularity, orders in _granularities(space).items():
        option_cost, option_loss = _options(task, space, granularity)
        start = np.zeros(2)
        edges = []
        for layer in range(task.n_layers):
            hull = _lower_hull(option_cost[layer], option_loss[layer])
            start += hull[0]
            edges.append(np.diff(hull, axis=0))
        step = np.vstack(edges)
        step = step[np.argsort(step[:, 1] / step[:, 0])]  # steepest first: the sum's hull
        vertices = start + np.vstack([np.zeros((1, 2)), np.cumsum(step, axis=0)])
        cost, loss = vertices[:, 0] + FILE_BYTES / 2, vertices[:, 1]
        for order in orders:
            drop = loss + ORDER_PENALTY[order]
            low.append(np.column_stack([drop, np.round(cost) / fp32_bytes]))
            # Every recipe lies above the hull; half a byte of rounding may take it left of it.
            left = (cost - 0.5) / fp32_bytes
            high += [np.column_stack([drop, left]), np.column_stack([drop[1:], left[:-1]])]
    reference = _quality.reference_point(SYNTHETIC_OBJECTIVES)
    return (
        _quality.hypervolume(np.vstack(low), reference),
        _quality.hypervolume(np.vstack(low + high), reference),
    )


# -- one run ---------------------------------------------------------------------------------------
def run(task: SyntheticTask, config: SweepConfig) -> tuple[Rows, dict[str, list[float]]]:
    """``bench_search.run_synthetic`` with each ask timed: the trials' metrics, and per ask the
    seconds of wall and CPU time (this process's) of the whole ask and of the sampler's part."""
    space = _synthetic_space(task, config)
    sampler = make_sampler(config, space)
    spent = np.zeros(2)
    # The sampler's draw: next_params for one that draws whole trials (ask_recipe adds those
    # whole), else sample_relative.
    part = "next_params" if isinstance(sampler, WholeSampler) else "sample_relative"
    inner: Callable[..., dict[str, Any]] = getattr(sampler, part)

    def timed(*args: Any) -> dict[str, Any]:
        started = np.array([time.perf_counter(), time.process_time()])
        try:
            return inner(*args)
        finally:
            spent[:] += np.array([time.perf_counter(), time.process_time()]) - started

    setattr(sampler, part, timed)
    study = optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=sampler,
    )
    enqueue_uniform(study, space, startup_trials(config, space)[0])
    rows: Rows = []
    times: dict[str, list[float]] = {key: [] for key in TIMES}
    flight: list[tuple[int, Recipe]] = []
    while len(rows) < config.budget.n_trials:
        while len(flight) < IN_FLIGHT and len(times["ask_ms"]) < config.budget.n_trials:
            spent[:] = 0.0  # an enqueued trial is not sampled: 0
            started = np.array([time.perf_counter(), time.process_time()])
            flight.append(ask_recipe(study, space))
            wall, cpu = np.array([time.perf_counter(), time.process_time()]) - started
            for key, value in zip(TIMES, (wall, cpu, *spent), strict=True):
                times[key].append(float(value))
        trial, recipe = flight.pop(0)
        metrics = task.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in config.objectives])
        rows.append(metrics)
    return rows, times


def _ms(seconds: Sequence[float]) -> dict[str, float]:
    tail = 1000 * np.array(seconds[-TAIL:])
    return {
        "median": round(float(np.median(tail)), 2),
        "p95": round(float(np.percentile(tail, 95)), 2),
        "last": round(float(tail[-1]), 2),
    }


def _reach(curve: Sequence[float], target: float) -> int | None:
    return _quality.trials_to_reach(curve, TARGET * target)


def bench_depth(
    n_layers: int, plan: dict[str, list[int]], args: argparse.Namespace
) -> dict[str, Any]:
    """The front at ``n_layers`` and each sampler's runs (``plan``: sampler -> seeds)."""
    task = SyntheticTask(n_layers=n_layers, seed=args.task_seed)
    base = _config("synthetic", "layerwise", 0, args.trials, objectives=SYNTHETIC_OBJECTIVES)
    space = _synthetic_space(task, base)
    fp32 = _quality.fp32_reference([task.analytic_metrics(Recipe())], SYNTHETIC_OBJECTIVES)
    started = time.monotonic()
    low, high = front_hv_bounds(task, space, fp32["compressed_bytes"])
    exact = None
    if n_layers <= args.exact_layers:
        exact = exact_front_hv(task, space, fp32["compressed_bytes"])
    target = high if exact is None else exact
    uniform = _quality.losses(synthetic_uniform(task, base), SYNTHETIC_OBJECTIVES, fp32)
    reference = _quality.reference_point(SYNTHETIC_OBJECTIVES)
    result: dict[str, Any] = {
        "front_hv": exact,
        "front_in_bracket": None if exact is None else bool(low <= exact <= high),
        "front_hv_low": low,
        "front_hv_high": high,
        "front_seconds": round(time.monotonic() - started, 1),
        "uniform_ratio": round(_quality.hypervolume(uniform, reference) / target, 4),
        "samplers": {},
    }
    print(f"{n_layers} layers: front {exact} in [{low:.6f}, {high:.6f}]", flush=True)
    for sampler, seeds in plan.items():
        entry: dict[str, Any] = {"seeds": seeds, "per_seed": []}
        for seed in seeds:
            config = _config(
                "synthetic", sampler, seed, args.trials, objectives=SYNTHETIC_OBJECTIVES
            )
            entry["startup"] = list(startup_trials(config, _synthetic_space(task, config)))
            started = time.monotonic()
            rows, times = run(task, config)
            table = _quality.losses(rows, SYNTHETIC_OBJECTIVES, fp32)
            curve = _quality.hypervolume_curve(table, reference)
            asks = times["ask_ms"]
            one = {
                "seed": seed,
                "trials_to_95": _reach(curve, target),
                "trials_to_95_range": [_reach(curve, low), _reach(curve, high)],
                "final_ratio": round(curve[-1] / target, 4),
                **{key: _ms(values) for key, values in times.items()},
                "ask_ms_by_100": [
                    round(1000 * float(np.median(asks[k : k + 100])), 2)
                    for k in range(0, len(asks), 100)
                ],
                "wall_s": round(time.monotonic() - started, 1),
            }
            entry["per_seed"].append(one)
            print(f"  {sampler} seed {seed}: {json.dumps(one)}", flush=True)
        runs = entry["per_seed"]
        counts = [r["trials_to_95"] for r in runs]
        entry["trials_to_95_mean"] = (
            float(np.mean(counts)) if None not in counts else None  # None: a seed never did
        )
        entry["final_ratio_mean"] = round(float(np.mean([r["final_ratio"] for r in runs])), 4)
        for key in TIMES:  # over seeds: the median of the seeds' statistics
            entry[key] = {
                stat: round(float(np.median([r[key][stat] for r in runs])), 2)
                for stat in ("median", "p95", "last")
            }
        result["samplers"][sampler] = entry
    return result


def fit_exponent(depths: dict[int, dict[str, Any]], sampler: str) -> dict[str, Any]:
    """b of trials_to_95 ~ c * layers ** b over the depths where every seed reached 95%."""
    points = [
        (n, d["samplers"][sampler]["trials_to_95_mean"])
        for n, d in depths.items()
        if sampler in d["samplers"]
    ]
    used = [(n, t) for n, t in points if t is not None]
    fit: dict[str, Any] = {
        "layers": [n for n, _ in used],
        "left_out": [n for n, t in points if t is None],
    }
    if len(used) >= 2:
        b, log_c = np.polyfit(np.log([n for n, _ in used]), np.log([t for _, t in used]), 1)
        fit.update(exponent=round(float(b), 3), c=round(math.exp(log_c), 2))
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="12,30,100,300")
    parser.add_argument("--samplers", default="layerwise,tpe")
    parser.add_argument(
        "--tpe-layers",
        default="12,30,100,300:1",
        help="depths tpe runs at, each with --seeds seeds or DEPTH:SEEDS (its asks are slow)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--exact-layers", type=int, default=100, help="exact front up to here")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_depth.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layers = [int(n) for n in args.layers.split(",")]
    tpe_seeds = {
        int(depth): int(seeds[0]) if seeds else args.seeds
        for depth, *seeds in (item.split(":") for item in args.tpe_layers.split(",") if item)
    }
    started = time.monotonic()
    depths: dict[int, dict[str, Any]] = {}
    for n_layers in layers:
        plan = {
            sampler: list(range(tpe_seeds[n_layers] if sampler == "tpe" else args.seeds))
            for sampler in args.samplers.split(",")
            if sampler != "tpe" or n_layers in tpe_seeds
        }
        depths[n_layers] = bench_depth(n_layers, plan, args)
    results: dict[str, Any] = {
        "objectives": SYNTHETIC_OBJECTIVES,
        "trials": args.trials,
        "task_seed": args.task_seed,
        "in_flight": IN_FLIGHT,
        "target": TARGET,
        "seeds": args.seeds,
        "tpe_seeds": {str(n): tpe_seeds[n] for n in layers if n in tpe_seeds},
        "depths": {str(n): d for n, d in depths.items()},
        "fits": {s: fit_exponent(depths, s) for s in args.samplers.split(",")},
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
