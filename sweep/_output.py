"""Listings as a rich table, CSV or JSON (one object per trial, ``recipe`` as an object)."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")
TABLE_COLUMNS = (
    "number",
    "state",
    "accuracy",
    "accuracy_drop",
    "compressed_bytes",
    "size_bytes",
    "latency_ms",
    "speedup",
    "sparsity",
    "order",
    "granularity",
)
# Columns that only make sense in a listing as nested objects (JSON) or not at all (table).
NESTED = ("recipe", "metrics", "timings")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, dict | list | str):
        return _plain(value.item())
    if value is pd.NaT or (not isinstance(value, dict | list | str) and pd.isna(value)):
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _cell(name: str, value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if name in ("accuracy", "accuracy_drop", "sparsity"):
        return f"{100 * value:.2f}%"
    if name.endswith("_bytes"):
        return f"{int(value):,}"
    if name == "latency_ms":
        return f"{value:.3f}"
    if name == "speedup":
        return f"{value:.2f}x"
    return str(value)


def render(frame: pd.DataFrame, fmt: str, console: Console, title: str | None = None) -> None:
    if fmt == "json":
        console.out(json.dumps(records(frame), indent=2), highlight=False)
    elif fmt == "csv":
        flat = frame.copy()
        for name in NESTED:
            if name in flat:
                flat[name] = flat[name].map(lambda v: json.dumps(v, sort_keys=True))
        console.out(flat.to_csv(index=False).rstrip("\n"), highlight=False)
    else:
        table = Table(title=title)
        columns = [c for c in TABLE_COLUMNS if c in frame.columns]
        for name in columns:
            table.add_column(
                name, justify="right" if name not in ("state", "order", "granularity") else "left"
            )
        for row in frame.to_dict(orient="records"):
            table.add_row(*(_cell(name, row[name]) for name in columns))
        console.print(table)
