"""Serving the dashboard inside a test, and a sweep written straight into a store (no Ray)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from storage import Store, TrialRecord
from sweep._dashboard import running

REAL = "real"  # a real sweep of the synthetic task, with its sensitivity scan
LIVE = "live"  # a sweep written straight into the store, RUNNING
LAYERS = ("features.0", "features.1", "features.2", "classifier")
OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min", "latency_ms": "min"}
T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Served:
    url: str  # the store's URL
    base: str  # the dashboard's base URL, no trailing slash
    store: Store


@contextmanager
def serving(store: Store, *, token: str | None = None, loopback: bool = True) -> Iterator[str]:
    """The dashboard over ``store`` on a free port, in a thread: its base URL (no slash).
    ``loopback=False`` serves it as off loopback (all names answered, the token required)."""
    with running(store, "127.0.0.1" if loopback else "0.0.0.0", 0, token) as listening:
        yield listening.url.replace("0.0.0.0", "127.0.0.1").rstrip("/")


def fetch(
    url: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, errors included; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def fetch_json(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = fetch(url, headers)
    return status, json.loads(body)


def _pending(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    rows = body.get("sweeps") or []
    return body.get("pending") is True or any(row.get("pending") for row in rows)


def settled_json(url: str, timeout_s: float = 60.0) -> tuple[int, Any]:
    """``fetch_json``, asked again while the answer is pending (a view computed for the first
    time answers at once with an empty stand-in, as a page sees it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = fetch_json(url)
        if status != 200 or not _pending(body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.05)


def recipe(amounts: Mapping[str, float], order: str, granularity: str) -> dict[str, Any]:
    return {
        "order": order,
        "granularity": granularity,
        "layers": {
            layer: {"amount": amount, "method": "unstructured", "granularity": granularity}
            for layer, amount in amounts.items()
        },
    }


def trial_record(number: int, level: float, seed: int = 0) -> TrialRecord:
    """A COMPLETE trial whose metrics follow from its pruning level as a real sweep's do."""
    rng = np.random.default_rng([seed, number])
    amounts = {
        layer: round(float(np.clip(level + rng.normal(0, 0.05), 0, 0.95)), 2) for layer in LAYERS
    }
    order = ("prune_ptq", "prune_qat")[number % 2]
    granularity = ("per_tensor", "per_channel")[(number // 2) % 2]
    mean = float(np.mean(list(amounts.values())))
    accuracy = round(0.99 - 0.3 * mean**4 - float(rng.uniform(0, 0.01)), 4)
    compressed = int(100_000 * (1 - 0.8 * mean))
    latency = round(2.0 * (1 - 0.4 * mean) * float(rng.uniform(0.95, 1.05)), 4)
    started = T0 + timedelta(seconds=10 * number)
    return TrialRecord(
        number=number,
        state="COMPLETE",
        recipe=recipe(amounts, order, granularity),
        metrics={
            "accuracy": accuracy,
            "fp32_accuracy": 0.99,
            "accuracy_drop": round(0.99 - accuracy, 4),
            "compressed_bytes": compressed,
            "fp32_compressed_bytes": 370_000,
            "size_bytes": compressed + 20_000,
            "fp32_size_bytes": 400_000,
            "latency_ms": latency,
            "fp32_latency_ms": 3.0,
            "speedup": round(3.0 / latency, 4),
            "sparsity": mean,
        },
        timings={"prune_s": 0.2, "finetune_s": 3.1, "quantize_s": 0.4, "latency_s": 0.8},
        started_at=started,
        finished_at=started + timedelta(seconds=5),
        worker="node-1/worker:1",
        measured_on="x86_64 test CPU, onnxruntime, 1 thread",
    )


def write_sweep(store: Store, name: str, trials: int, *, budget: int = 100) -> None:
    """A RUNNING sweep of ``trials`` COMPLETE trials, written as a driver writes them."""
    config = {
        "task": "synthetic",
        "budget": {"n_trials": budget},
        "layers": list(LAYERS),
        "sampler": "layerwise",
        "fp32_metrics": {"accuracy": 0.99},
    }
    store.create_sweep(name, config, OBJECTIVES)
    levels = np.linspace(0.0, 0.9, trials)
    store.record_trials(name, [trial_record(n, float(level)) for n, level in enumerate(levels)])
