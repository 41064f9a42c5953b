"""Shared builders for the storage tests (a module, not a conftest, so tests can import it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from storage import Store, TrialRecord

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def make_recipe(
    layers: Sequence[str] = ("conv1", "layer1.0.conv1", "fc"),
    *,
    order: str = "prune_ptq",
    granularity: str = "per_channel",
    amount: float = 0.5,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "order": order,
        "granularity": granularity,
        "layers": {
            layer: {"amount": amount, "method": "l1_unstructured", "granularity": granularity}
            for layer in layers
        },
    }


def make_record(
    number: int,
    state: str = "COMPLETE",
    metrics: Mapping[str, float] | None = None,
    **fields: Any,
) -> TrialRecord:
    fields.setdefault("recipe", make_recipe())
    if state != "RUNNING":
        fields.setdefault("started_at", T0 + timedelta(minutes=number))
        fields.setdefault("finished_at", T0 + timedelta(minutes=number, seconds=30))
    return TrialRecord(number=number, state=state, metrics=dict(metrics or {}), **fields)


def brute_force_front(points: np.ndarray) -> np.ndarray:
    """O(n^2) reference (minimisation): row i is dominated when some row is <= everywhere and
    < somewhere."""
    keep = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        dominates = np.all(points <= point, axis=1) & np.any(points < point, axis=1)
        keep[i] = not dominates.any()
    return keep


CONCURRENT_LAYERS = ("conv1", "layer1.0.conv1", "layer1.0.conv2", "fc")


def write_sweep(
    url: str,
    name: str,
    index: int,
    trials: int,
    batch: int,
    barrier: Any = None,
    store: Store | None = None,
) -> None:
    """One driver: create sweep ``name`` and record ``trials`` trials in batches, each batch
    RUNNING first, then COMPLETE. Module-level so that spawned processes can import it.

    Without ``store`` it opens its own, after ``barrier`` so that every writer opens (and, on
    a fresh database, migrates) at the same time.
    """
    if barrier is not None:
        barrier.wait(timeout=60)
    own = store is None
    opened = Store(url) if store is None else store
    try:
        opened.create_sweep(name, {"writer": index}, {"accuracy": "max", "size_bytes": "min"})
        for start in range(0, trials, batch):
            numbers = range(start, min(start + batch, trials))
            recipe = make_recipe(CONCURRENT_LAYERS, amount=index / 10)
            opened.record_trials(name, [make_record(n, "RUNNING", recipe=recipe) for n in numbers])
            metrics = [{"accuracy": n / trials, "size_bytes": 1000 + index} for n in numbers]
            opened.record_trials(
                name,
                [
                    make_record(n, "COMPLETE", m, recipe=recipe)
                    for n, m in zip(numbers, metrics, strict=True)
                ],
            )
    finally:
        if own:
            opened.close()
