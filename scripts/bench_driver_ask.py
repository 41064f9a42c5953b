"""The driver's sampling cost per trial as a sweep grows: Optuna's ask and tell and the recipe's
parameters, in-process, with many trials in flight, as a driver at hundreds of completions a
second pays it on its loop.

``synthetic`` (``--layers`` analytic layers, the default three objectives), the driver's search
space; ``--in-flight`` trials asked ahead (32: a cluster of 32 slots), results told in bursts of
1 to 4 (slots free a few at a time), ``--trials`` in all. Reported per sampler: this process's
CPU time per trial (ask, recipe parameters and tell) over each stretch of ``--stretch`` trials.
``random`` (Optuna's RandomSampler, whose own ask costs almost nothing) is the baseline in the
same run: what Optuna and the search space cost per trial whatever the sampler; ``over_random``
is the default sampler's (``layerwise``) cost over it, per stretch. A sampler whose per-trial
work grows with the finished trials shows a rising ratio.

    python scripts/bench_driver_ask.py [--trials 10000] [--in-flight 32] [--layers 12]

Prints one JSON object and writes it to ``scripts/results/bench_driver_ask.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from bench_search import _synthetic_space
from machine import measured_on

from sweep import parse_config
from sweep._samplers import ask_recipe, make_sampler
from trials.tasks.synthetic import SyntheticTask

RESULTS = Path(__file__).resolve().parent / "results" / "bench_driver_ask.json"


def cpu_per_trial(sampler: str, args: argparse.Namespace) -> list[float]:
    """CPU ms per trial over each stretch of ``args.stretch`` trials."""
    task = SyntheticTask(n_layers=args.layers)
    data = {"name": "x", "task": "synthetic", "budget": {"n_trials": args.trials}, "seed": 0}
    # Both with layerwise's parameters (an amount per layer): the same Optuna work per trial.
    config = parse_config(
        {**data, "sampler": sampler, "search_space": {"amount_mode": "independent"}}
    )
    space = _synthetic_space(task, config)
    study = optuna.create_study(
        directions=["maximize" if d == "max" else "minimize" for d in config.objectives.values()],
        sampler=make_sampler(config, space),
    )
    rng = np.random.default_rng(0)
    flight: list[tuple[int, Any]] = []
    asked = done = 0
    marks = [time.process_time()]
    while done < args.trials:
        while len(flight) < args.in_flight and asked < args.trials:
            flight.append(ask_recipe(study, space))
            asked += 1
        for _ in range(min(len(flight), int(rng.integers(1, 5)))):
            trial, recipe = flight.pop(0)
            metrics = task.analytic_metrics(recipe)
            study.tell(trial, [metrics[name] for name in config.objectives])
            done += 1
            if done % args.stretch == 0:
                marks.append(time.process_time())
    return [round(1000 * (b - a) / args.stretch, 3) for a, b in itertools.pairwise(marks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--stretch", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_sampler = {name: cpu_per_trial(name, args) for name in ("layerwise", "random")}
    report = {
        "trials": args.trials,
        "in_flight": args.in_flight,
        "layers": args.layers,
        "stretch": args.stretch,
        "cpu_ms_per_trial": per_sampler,
        "over_random": [
            round(a / b, 2)
            for a, b in zip(per_sampler["layerwise"], per_sampler["random"], strict=True)
        ],
        "measured_on": measured_on(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
