"""The dashboard's tables: the sweeps, one sweep's overview, a page of its trials, one trial,
its recipe file and the recommendation under constraints (what `sweep recommend` picks)."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from storage import METRIC_COLUMNS, TRIAL_STATES, SweepInfo, SweepNotFoundError
from sweep import _output, _recommend, _status
from sweep._bounds import KIND
from sweep._dashboard import _charts
from sweep._dashboard._reader import (
    PENDING,
    DashboardError,
    Reader,
    plain,
    row_dict,
    version,
)

# Trials per page of the trial table, at most.
MAX_PAGE = 500
# Columns of the trial table: the CLI's listing, and how and where each trial ran (the full
# row is on the trial's own page).
TABLE_COLUMNS = (*_output.TABLE_COLUMNS, "duration_s", "measured_on", "error")
# Metrics shown beside their fp32 counterpart on a trial's page.
PAIRED = ("accuracy", "size_bytes", "compressed_bytes", "latency_ms", "params")
UNPAIRED = (
    "accuracy_drop",
    "speedup",
    "speedup_low",
    "speedup_high",
    "sparsity",
    "zero_fraction",
    "removed_fraction",
    "nonzero_params",
    "macs",
)
# Where a trial was run and measured, and how long it took.
TRIAL_FIELDS = (
    "state",
    "order",
    "granularity",
    "measured_on",
    "latency_node",
    "worker",
    "attempt",
    "error",
    "started_at",
    "finished_at",
    "queued_s",
    "run_s",
    "duration_s",
)


def _progress(reader: Reader, info: SweepInfo, now: datetime) -> dict[str, Any]:
    front = reader.front(info, wait=False)
    state = _status.from_store(reader.store, info, now, front=front.value)
    minutes = state.elapsed_s / 60
    computing = front.version == PENDING  # the front's size and best values follow
    return {
        "name": info.name,
        "kind": "scan" if info.config.get("kind") == KIND else "sweep",
        "task": info.config.get("task"),
        "status": state.status,
        "done": state.done,
        "budget": state.total,
        "running": state.running,
        "failed": state.failed,
        "pruned": state.pruned,
        "front": None if computing else state.front_size,
        "best": None if computing else plain(state.best),
        "pending": computing,
        "trials_per_minute": round(state.done / minutes, 2) if minutes > 0 else None,
        "elapsed_s": round(state.elapsed_s, 1),
        "remaining_s": None if state.remaining_s is None else round(state.remaining_s, 1),
        "created_at": plain(info.created_at),
        "updated_at": plain(info.updated_at),
        "version": version(info),
    }


def sweeps(reader: Reader) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "store": reader.store.url_display,
        "sweeps": [_progress(reader, info, now) for info in reader.store.list_sweeps()],
    }


def sweep(reader: Reader, name: str) -> dict[str, Any]:
    info = reader.store.get_sweep(name)
    config = info.config
    return {
        **_progress(reader, info, datetime.now(timezone.utc)),
        "store": reader.store.url_display,
        "objectives": info.objectives,
        "constraints": config.get("feasible") or [],
        "metrics": list(METRIC_COLUMNS),
        "sampler": config.get("sampler"),
        "task_settings": config.get("task_settings") or {},
        "layers": len(config.get("layers") or []),
        "size_metric": size_metric(info),
        "default_axes": _charts.default_axes(info),
    }


def size_metric(info: SweepInfo) -> str:
    """The size the sweep minimizes (its size objective), for the constraints form."""
    for metric in ("compressed_bytes", "size_bytes", "params", "nonzero_params"):
        if metric in info.objectives:
            return metric
    return "compressed_bytes"


def _where(text: str | None) -> tuple[str, ...]:
    return (text,) if text and text.strip() else ()


def trial_page(
    reader: Reader,
    name: str,
    *,
    where: str | None,
    state: str | None,
    offset: int,
    limit: int,
    newest_first: bool,
) -> dict[str, Any]:
    """One page of the trial table, the newest first by default, and the count of all."""
    if not 1 <= limit <= MAX_PAGE:
        raise DashboardError(f"limit: {limit} must be 1 to {MAX_PAGE}")
    if offset < 0:
        raise DashboardError(f"offset: {offset} must be 0 or more")
    if state and state not in TRIAL_STATES:
        known = ", ".join(TRIAL_STATES)
        raise DashboardError(f"state: {state!r} is not a trial state; use {known}")
    states = [state] if state else None
    terms = list(_where(where)) or None
    frame = reader.store.trials(
        name, states=states, where=terms, limit=limit, offset=offset, descending=newest_first
    )
    total = reader.store.count_trials(name, states=states, where=terms)
    rows = [row_dict(row, TABLE_COLUMNS) for _, row in frame.iterrows()]
    columns = list(TABLE_COLUMNS)
    return {"total": total, "offset": offset, "limit": limit, "columns": columns, "rows": rows}


def _trial_row(reader: Reader, name: str, number: int) -> pd.Series:
    found = reader.store.trials(name, numbers=[number])
    if found.empty:
        raise SweepNotFoundError(f"sweep {name!r} has no trial {number}")
    return found.iloc[0]


def recipe_file_name(name: str, number: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"{safe}-trial-{number}.json"


def trial(reader: Reader, name: str, number: int) -> dict[str, Any]:
    """One trial: its metrics beside the fp32 reference, where it was measured, its per-layer
    recipe, its phase timings, and the commands that take it into a model."""
    row = _trial_row(reader, name, number)
    metrics = []
    for metric in PAIRED:
        value, fp32 = plain(row.get(metric)), plain(row.get(f"fp32_{metric}"))
        ratio = value / fp32 if value is not None and fp32 else None
        metrics.append({"metric": metric, "value": value, "fp32": fp32, "ratio": ratio})
    for metric in UNPAIRED:
        metrics.append({"metric": metric, "value": plain(row.get(metric)), "fp32": None})
    recipe = row["recipe"] or {}
    layers = [
        {"layer": layer, **{key: spec.get(key) for key in ("amount", "method", "granularity")}}
        for layer, spec in (recipe.get("layers") or {}).items()
    ]
    file_name = recipe_file_name(name, number)
    model = file_name.removesuffix(".json") + ".onnx"
    return {
        "sweep": name,
        "number": number,
        **row_dict(row, TRIAL_FIELDS),
        "metrics": metrics,
        "timings": plain(row["timings"] or {}),
        "layers": layers,
        "recipe_file": file_name,
        "apply_command": f"sweep apply {shlex.quote(file_name)} -o {shlex.quote(model)}",
        "recommend_command": (
            f"sweep recommend {shlex.quote(name)} --minimize accuracy_drop --where "
            f"{shlex.quote(f'number == {number}')} --infeasible -o {shlex.quote(file_name)}"
            f" --storage {shlex.quote(reader.store.url_display)}"
        ),
    }


def recipe(reader: Reader, name: str, number: int) -> dict[str, Any]:
    """The trial's recipe file, as `sweep recommend -o` writes it (with its source)."""
    row = _trial_row(reader, name, number)
    if row["state"] != "COMPLETE":
        raise DashboardError(f"trial {number} of {name} is {row['state']}: no recipe to apply")
    return _recommend.recipe_document(reader.store, name, row)


def _number(text: str | None, field: str, *, fraction: bool = False) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise DashboardError(f"{field}: {text!r} is not a number") from None
    if value != value or value < 0 or (fraction and value >= 1):
        limits = "a fraction in [0, 1), e.g. 0.01" if fraction else "a number of 0 or more"
        raise DashboardError(f"{field}: {text!r} must be {limits}")
    return value


def recommendation(
    reader: Reader,
    name: str,
    *,
    max_drop: str | None,
    max_latency_ms: str | None,
    max_size: str | None,
    minimize: str | None,
) -> dict[str, Any]:
    """What `sweep recommend` picks under the form's constraints, and the command that does."""
    info = reader.store.get_sweep(name)
    size = size_metric(info)
    drop = _number(max_drop, "max_drop", fraction=True)
    latency = _number(max_latency_ms, "max_latency_ms")
    most = _number(max_size, "max_size")
    where = []
    if latency is not None:
        where.append(f"latency_ms <= {latency:g}")
    if most is not None:
        where.append(f"{size} <= {most:.0f}")
    metric = minimize or size
    try:
        goal = _recommend.Goal(metric, "min", drop, tuple(where))
    except _recommend.RecommendError as exc:
        raise DashboardError(str(exc).replace("--minimize/--maximize", "minimize")) from None
    command = ["sweep", "recommend", name, "--minimize", metric]
    if drop is not None:
        command += ["--max-drop", f"{drop:g}"]
    for term in where:
        command += ["--where", term]
    command += ["--storage", reader.store.url_display]
    shown = " ".join(shlex.quote(part) for part in command)
    key = ("recommend", name, metric, drop, tuple(where))

    def pick() -> dict[str, Any]:
        try:
            chosen = _recommend.recommend(reader.store, name, goal)
        except _recommend.NoMatchError as exc:
            return {"trial": None, "message": str(exc), "command": shown}
        picked = row_dict(chosen, TABLE_COLUMNS)
        return {"trial": picked, "message": goal.describe(), "command": shown}

    return reader.exact(key, version(info), pick)
