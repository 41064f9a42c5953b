"""The SQL store at scale: bulk inserts, driver-style writes and Pareto queries, against Optuna.

Inserts ``--trials`` synthetic trials with ``--layers`` layers each into SQLite (a temporary
file) and PostgreSQL (a temporary schema on ``--postgres-url``, dropped at the end), then times:

- ``insert_trials_per_s``: ``Store.record_trials`` of COMPLETE trials in batches of ``--batch``;
- ``write_ms_per_trial``: the driver's pattern on the full database: batches of
  ``--driver-batch`` trials recorded RUNNING (insert), then COMPLETE (update), per trial;
- ``pareto_2obj_s``, ``pareto_3obj_s``, ``pareto_constrained_s`` (3 objectives and two
  ``where`` constraints) and ``layer_summary_s``: median of ``--repeats`` runs;
- ``optuna_best_trials_s``: Optuna's ``study.best_trials`` on the same trials and the same 3
  objectives, in an in-memory study built with ``study.add_trials`` in this run (the baseline),
  with ``optuna_vs_pareto_3obj`` = Optuna's time / the store's, and whether both fronts agree.

Prints one JSON object::

    python scripts/bench_store.py [--trials 100000] [--layers 30] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from storage import Store, TrialRecord

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
OBJECTIVES_2 = {"accuracy": "max", "compressed_bytes": "min"}
OBJECTIVES_3 = {"accuracy": "max", "compressed_bytes": "min", "latency_ms": "min"}
CONSTRAINTS = ["accuracy >= 0.9", "latency_ms < 2.2"]
ORDERS = ("prune_ptq", "prune_qat")
GRANULARITIES = ("per_tensor", "per_channel")
FP32_LATENCY_MS = 9.0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
optuna.logging.set_verbosity(optuna.logging.WARNING)


class Synthetic:
    """Trials whose metrics follow from their recipe: layers differ in sensitivity and size,
    accuracy falls with pruning, bytes and latency fall with it, so the fronts are realistic."""

    def __init__(self, layers: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.names = [
            f"features.{i}.conv" if i < layers - 1 else "classifier.fc" for i in range(layers)
        ]
        self.sensitivity = rng.lognormal(0.0, 1.0, layers)
        self.sensitivity *= layers / self.sensitivity.sum()
        self.weights = rng.integers(1_000, 200_000, layers).astype(np.float64)
        self.channels = rng.integers(16, 512, layers)
        self.seed = seed

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """Recipes and metrics of trials ``start .. start+size-1`` (deterministic per start)."""
        rng = np.random.default_rng([self.seed, start])
        level = rng.uniform(0.0, 0.9, (size, 1))
        amounts = np.clip(level + rng.uniform(-0.1, 0.1, (size, len(self.names))), 0.0, 0.95)
        amounts = np.round(amounts, 2)
        order = rng.integers(0, 2, size)
        granularity = rng.integers(0, 2, size)
        drop = 0.5 * (self.sensitivity * amounts**4).mean(axis=1) + rng.normal(0, 0.004, size)
        drop -= 0.004 * order + 0.002 * granularity
        accuracy = np.round(np.clip(0.99 - drop, 0.05, 1.0), 4)
        total = self.weights.sum()
        nonzero = (self.weights * (1.0 - amounts)).sum(axis=1)
        scales = np.where(granularity == 1, 8 * self.channels.sum(), 8 * len(self.names))
        compressed = np.rint(1.05 * nonzero + 0.12 * (total - nonzero) + 4_000 + scales)
        latency = 2.5 * (1.0 - 0.3 * amounts.mean(axis=1)) * np.where(granularity == 1, 1.08, 1.0)
        latency = np.round(latency * rng.lognormal(0.0, 0.03, size), 3)
        return {
            "amounts": amounts,
            "order": order,
            "granularity": granularity,
            "accuracy": accuracy,
            "compressed_bytes": compressed.astype(np.int64),
            "size_bytes": (total + 4_000 + scales).astype(np.int64),
            "latency_ms": latency,
            "nonzero_params": np.rint(nonzero).astype(np.int64),
            "sparsity": 1.0 - nonzero / total,
        }

    def records(self, start: int, size: int, state: str = "COMPLETE") -> list[TrialRecord]:
        data = self.batch(start, size)
        total = int(self.weights.sum())
        records = []
        for i in range(size):
            number = start + i
            granularity = GRANULARITIES[data["granularity"][i]]
            recipe = {
                "schema_version": 1,
                "order": ORDERS[data["order"][i]],
                "granularity": granularity,
                "layers": {
                    name: {
                        "amount": float(amount),
                        "method": "unstructured",
                        "granularity": granularity,
                    }
                    for name, amount in zip(self.names, data["amounts"][i], strict=True)
                },
            }
            started = T0 + timedelta(seconds=number)
            if state == "RUNNING":
                records.append(
                    TrialRecord(number=number, state=state, recipe=recipe, started_at=started)
                )
                continue
            latency = float(data["latency_ms"][i])
            metrics: dict[str, float] = {
                "accuracy": float(data["accuracy"][i]),
                "fp32_accuracy": 0.99,
                "accuracy_drop": 0.99 - float(data["accuracy"][i]),
                "size_bytes": int(data["size_bytes"][i]),
                "compressed_bytes": int(data["compressed_bytes"][i]),
                "fp32_size_bytes": 4 * total,
                "fp32_compressed_bytes": int(3.7 * total),
                "latency_ms": latency,
                "latency_min_ms": 0.97 * latency,
                "latency_max_ms": 1.1 * latency,
                "fp32_latency_ms": FP32_LATENCY_MS,
                "speedup": FP32_LATENCY_MS / latency,
                "sparsity": float(data["sparsity"][i]),
                "params": total,
                "nonzero_params": int(data["nonzero_params"][i]),
                "fp32_params": total,
                "macs": 40 * total,
            }
            records.append(
                TrialRecord(
                    number=number,
                    state=state,
                    recipe=recipe,
                    metrics=metrics,
                    timings={"prune_s": 0.1, "finetune_s": 4.0, "quantize_s": 0.5},
                    started_at=started,
                    finished_at=started + timedelta(seconds=5),
                    worker="bench-worker",
                )
            )
        return records


def _batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _median_s(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def _optuna_study(data: Synthetic, trials: int, batch: int) -> optuna.Study:
    """An in-memory study holding the same trials, params and 3 objective values."""
    directions = [
        optuna.study.StudyDirection.MAXIMIZE if d == "max" else optuna.study.StudyDirection.MINIMIZE
        for d in OBJECTIVES_3.values()
    ]
    study = optuna.create_study(directions=directions)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "order": optuna.distributions.CategoricalDistribution(ORDERS),
        "granularity": optuna.distributions.CategoricalDistribution(GRANULARITIES),
        **{
            f"amount:{name}": optuna.distributions.FloatDistribution(0.0, 1.0)
            for name in data.names
        },
    }
    for start, size in _batches(trials, batch):
        values = data.batch(start, size)
        frozen = []
        for i in range(size):
            params: dict[str, Any] = {
                "order": ORDERS[values["order"][i]],
                "granularity": GRANULARITIES[values["granularity"][i]],
            }
            for name, amount in zip(data.names, values["amounts"][i], strict=True):
                params[f"amount:{name}"] = float(amount)
            frozen.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions=distributions,
                    values=[float(values[name][i]) for name in OBJECTIVES_3],
                )
            )
        study.add_trials(frozen)
    return study


def _optuna_baseline(data: Synthetic, args: argparse.Namespace) -> tuple[float, list[int], float]:
    """Median seconds of ``study.best_trials``, the front's numbers, and the build time."""
    started = time.perf_counter()
    study = _optuna_study(data, args.trials, args.batch)
    built = round(time.perf_counter() - started, 1)
    seconds = _median_s(lambda: study.best_trials, args.optuna_repeats)
    return seconds, sorted(trial.number for trial in study.best_trials), built


def _bench_backend(url: str, data: Synthetic, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Store(url) as store:
        store.create_sweep("bench", {"bench": True}, OBJECTIVES_3)
        spent = 0.0
        for start, size in _batches(args.trials, args.batch):
            records = data.records(start, size)
            started = time.perf_counter()
            store.record_trials("bench", records)
            spent += time.perf_counter() - started
        result["insert_s"] = round(spent, 2)
        result["insert_trials_per_s"] = round(args.trials / spent, 1)
        result["insert_layer_rows_per_s"] = round(args.trials * len(data.names) / spent, 1)

        # The driver's pattern, on the full database: RUNNING insert, then COMPLETE update.
        store.create_sweep("bench-driver", {"bench": True}, OBJECTIVES_3)
        offset = args.trials
        spent = 0.0
        for start, size in _batches(args.driver_trials, args.driver_batch):
            running = data.records(offset + start, size, "RUNNING")
            complete = data.records(offset + start, size)
            started = time.perf_counter()
            store.record_trials("bench-driver", running)
            store.record_trials("bench-driver", complete)
            spent += time.perf_counter() - started
        result["write_ms_per_trial"] = round(1000 * spent / args.driver_trials, 3)

        fronts = {
            "2obj": lambda: store.pareto_front("bench", OBJECTIVES_2),
            "3obj": lambda: store.pareto_front("bench", OBJECTIVES_3),
            "constrained": lambda: store.pareto_front("bench", OBJECTIVES_3, where=CONSTRAINTS),
        }
        for key, query in fronts.items():
            result[f"pareto_{key}_s"] = _median_s(query, args.repeats)
            result[f"front_size_{key}"] = len(query())
        result["front_numbers_3obj"] = sorted(store.pareto_front("bench", OBJECTIVES_3)["number"])
        summary = getattr(store, "layer_summary", None)
        if summary is not None:
            result["layer_summary_s"] = _median_s(
                lambda: summary("bench", OBJECTIVES_3), args.repeats
            )
    return result


class SchemaError(RuntimeError):
    """The PostgreSQL server could not create the benchmark's schema (one line: why)."""


@contextmanager
def postgres_schema(server_url: str, prefix: str, keep: str | None = None) -> Iterator[str]:
    """The URL of a schema on ``server_url``: a new one named ``prefix_<random>``, dropped at
    the end, or ``keep`` (created if missing, kept). :class:`SchemaError` when the server
    cannot create it."""
    engine = sa.create_engine(server_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    schema = keep or f"{prefix}_{secrets.token_hex(6)}"
    try:
        try:
            with engine.begin() as connection:
                connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        except sa.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise SchemaError(reason[0] if reason else type(exc).__name__) from exc
        url = sa.make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            if keep is None:
                with engine.begin() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def _postgres(args: argparse.Namespace, data: Synthetic) -> dict[str, Any]:
    try:
        with postgres_schema(args.postgres_url, "bench_store") as url:
            return _bench_backend(url, data, args)
    except SchemaError as exc:
        return {"error": str(exc)}


def _compare(result: dict[str, Any], optuna_s: float, optuna_front: list[int]) -> None:
    numbers = result.pop("front_numbers_3obj", None)
    if numbers is None:
        return
    result["optuna_best_trials_s"] = optuna_s
    result["optuna_vs_pareto_3obj"] = round(optuna_s / max(result["pareto_3obj_s"], 1e-9), 1)
    result["front_matches_optuna"] = numbers == optuna_front


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1_000, help="trials per bulk insert")
    parser.add_argument("--driver-trials", type=int, default=400)
    parser.add_argument("--driver-batch", type=int, default=8, help="trials per driver write")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timed query")
    parser.add_argument("--optuna-repeats", type=int, default=3, help="runs of best_trials")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    data = Synthetic(args.layers)
    report: dict[str, Any] = {
        "trials": args.trials,
        "layers": args.layers,
        "objectives_2": OBJECTIVES_2,
        "objectives_3": OBJECTIVES_3,
        "constraints": CONSTRAINTS,
        "repeats": args.repeats,
        "optuna_repeats": args.optuna_repeats,
    }

    optuna_s, optuna_front, report["optuna_build_s"] = _optuna_baseline(data, args)
    report["optuna_best_trials_s"] = optuna_s

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        sqlite = _bench_backend(f"sqlite:///{Path(tmp) / 'bench.db'}", data, args)
        sqlite["file_mb"] = round((Path(tmp) / "bench.db").stat().st_size / 2**20, 1)
    _compare(sqlite, optuna_s, optuna_front)
    report["sqlite"] = sqlite
    if args.skip_postgres:
        report["postgresql"] = {"error": "skipped (--skip-postgres)"}
    else:
        postgresql = _postgres(args, data)
        _compare(postgresql, optuna_s, optuna_front)
        report["postgresql"] = postgresql
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
