"""``sweep plot``: a sweep's trials and front as PNG (matplotlib) and interactive HTML (plotly).

Three panels: accuracy against size and against latency (every COMPLETE trial colored by order
and granularity, the front outlined, uniform recipes and the fp32 baseline marked), and the
hypervolume of the trials so far over trial numbers (``sweep._quality``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage import Store
from sweep import _output, _quality


class PlotError(ValueError):
    """Nothing to plot; the message says why."""


@dataclass(frozen=True)
class _Data:
    trials: pd.DataFrame  # COMPLETE trials, with columns group, uniform, on_front
    size: str
    fp32: dict[str, float]
    curve: list[float] | None  # hypervolume over trials, None if the objectives have no fp32 pair


def _is_uniform(recipe: dict[str, Any]) -> bool:
    layers = recipe.get("layers", {})
    return len({(spec["amount"], spec["method"]) for spec in layers.values()}) == 1


def _median(frame: pd.DataFrame, key: str) -> float:
    values = [m.get(key) for m in frame["metrics"] if m.get(key) is not None]
    return float(np.median(values)) if values else float("nan")


def _load(store: Store, name: str) -> _Data:
    info = store.get_sweep(name)
    trials = store.trials(name, states=["COMPLETE"]).reset_index(drop=True)
    if trials.empty:
        raise PlotError(f"{name}: no COMPLETE trials to plot yet")
    objectives = info.objectives
    size = "size_bytes" if "size_bytes" in objectives else "compressed_bytes"
    front = set(store.pareto_front(name)["number"])
    trials["group"] = trials["order"].astype(str) + " / " + trials["granularity"].astype(str)
    trials["uniform"] = [_is_uniform(recipe) for recipe in trials["recipe"]]
    trials["on_front"] = trials["number"].isin(front)
    stored = info.config.get("fp32_metrics") or {}
    fp32 = {
        "accuracy": float(stored.get("accuracy", _median(trials, "fp32_accuracy"))),
        size: _median(trials, f"fp32_{size}"),
        "latency_ms": _median(trials, "fp32_latency_ms"),
    }
    rows = [dict(metrics) for metrics in trials["metrics"]]
    try:
        reference = _quality.fp32_reference(rows, objectives)
        table = _quality.losses(rows, objectives, reference)
        curve: list[float] | None = _quality.hypervolume_curve(
            table, _quality.reference_point(objectives)
        )
    except _quality.QualityError:
        curve = None
    return _Data(trials, size, fp32, curve)


def _png(data: _Data, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    trials = data.trials
    for ax, x in zip(axes[:2], (data.size, "latency_ms"), strict=True):
        for group, rows in trials.groupby("group"):
            ax.scatter(rows[x], rows["accuracy"], s=18, alpha=0.6, label=str(group))
        front = trials[trials["on_front"]]
        ax.scatter(
            front[x], front["accuracy"], s=46, facecolors="none", edgecolors="black", label="front"
        )
        uniform = trials[trials["uniform"]]
        ax.scatter(
            uniform[x], uniform["accuracy"], marker="x", s=40, color="gray", label="uniform recipe"
        )
        ax.scatter(
            [data.fp32[x]],
            [data.fp32["accuracy"]],
            marker="*",
            s=160,
            color="red",
            label="fp32 baseline",
        )
        ax.set(xlabel=x, ylabel="accuracy", title=f"{name}: accuracy vs {x}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if data.curve is not None:
        axes[2].plot(trials["number"], data.curve, drawstyle="steps-post")
        axes[2].set(
            xlabel="trial number",
            ylabel="hypervolume (normalized)",
            title="hypervolume of the trials so far",
        )
    else:
        axes[2].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the name is a temporary one, not .png
    plt.close(fig)


def _html(data: _Data, name: str, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    trials = data.trials
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(f"accuracy vs {data.size}", "accuracy vs latency_ms", "hypervolume"),
    )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for col, x in ((1, data.size), (2, "latency_ms")):
        first = col == 1
        for index, (group, rows) in enumerate(trials.groupby("group")):
            symbols = [
                "x" if u else ("circle-open" if f else "circle")
                for u, f in zip(rows["uniform"], rows["on_front"], strict=True)
            ]
            fig.add_trace(
                go.Scatter(
                    x=rows[x],
                    y=rows["accuracy"],
                    mode="markers",
                    name=str(group),
                    legendgroup=str(group),
                    showlegend=first,
                    marker={"color": palette[index % len(palette)], "symbol": symbols, "size": 8},
                    text=[f"trial {n}" for n in rows["number"]],
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=[data.fp32[x]],
                y=[data.fp32["accuracy"]],
                mode="markers",
                name="fp32 baseline",
                showlegend=first,
                marker={"symbol": "star", "size": 14, "color": "red"},
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=x, row=1, col=col)
        fig.update_yaxes(title_text="accuracy", row=1, col=col)
    if data.curve is not None:
        fig.add_trace(
            go.Scatter(
                x=trials["number"],
                y=data.curve,
                mode="lines",
                name="hypervolume",
                line={"shape": "hv"},
            ),
            row=1,
            col=3,
        )
    fig.update_layout(
        title=f"{name}: x = uniform recipe, open circle = on the front", height=520, width=1500
    )
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline


def plot_sweep(store: Store, name: str, folder: Path) -> list[Path]:
    """Write ``<folder>/<name>.png`` and ``<folder>/<name>.html``; returns their paths. Both go
    through temporary files: a full disk leaves neither a partial file nor a changed one."""
    data = _load(store, name)
    if folder.exists() and not folder.is_dir():
        raise _output.OutputError(f"-o: {folder} is a file; give the folder for {name}.png/.html")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output.write_error(exc, folder) from None
    png, html = folder / f"{name}.png", folder / f"{name}.html"
    _output.write_all(
        [(png, lambda path: _png(data, name, path)), (html, lambda path: _html(data, name, path))]
    )
    return [png, html]
