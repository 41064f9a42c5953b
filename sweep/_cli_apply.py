"""The ``sweep`` commands that act on chosen trials: recommend, apply and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from sweep import _apply, _output, _plot, _recommend
from sweep._cli_common import (
    InfeasibleOption,
    ShortFormatOption,
    StorageOption,
    UserError,
    WhereOption,
    _note_hardware,
    _short_format,
    _store,
    _task_importable,
    err,
    out,
)
from trials import STANDALONE_LOAD


def recommend(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", help="Largest accuracy drop vs fp32, a fraction (0.01 = 1 pt)."),
    ] = None,
    minimize: Annotated[
        str | None, typer.Option("--minimize", metavar="METRIC", help="Metric to minimize.")
    ] = None,
    maximize: Annotated[
        str | None, typer.Option("--maximize", metavar="METRIC", help="Metric to maximize.")
    ] = None,
    where: WhereOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the trial's recipe (JSON)."),
    ] = None,
    storage: StorageOption = None,
    fmt: ShortFormatOption = "table",
    infeasible: InfeasibleOption = False,
) -> None:
    """The trial that meets the constraints (and the sweep's own) and is best on one metric;
    -o writes its recipe. Exits 1, writing nothing, when no trial meets the constraints."""
    _short_format(fmt)
    if (minimize is None) == (maximize is None):
        raise UserError("give exactly one of --minimize METRIC or --maximize METRIC")
    if output is not None:
        # Before the query: not a recommendation shown, then an error.
        _output.check_output_file(output, example="recipe.json")
    metric, direction = (minimize, "min") if minimize is not None else (maximize, "max")
    goal = _recommend.Goal(str(metric), direction, max_drop, tuple(where or ()))
    store = _store(storage)
    try:
        trial = _recommend.recommend(store, name, goal, feasible_only=not infeasible)
    except _recommend.NoMatchError as exc:
        err.print(f"no match: {exc}", highlight=False, markup=False, soft_wrap=True)
        _output.render(exc.closest, "table", err, title=f"Closest trials of {name}")
        raise typer.Exit(1) from None
    frame = trial.to_frame().T
    _output.render(frame, fmt, out, title=f"Recommended: trial {trial['number']} of {name}")
    _note_hardware(store.trials(name, states=["COMPLETE"]))
    if output is not None:
        _recommend.write_recipe(_recommend.recipe_document(store, name, trial), output)
        err.print(f"wrote the recipe of trial {trial['number']} to {output}", highlight=False)


def _stored_metrics(
    source: dict[str, object], from_trial: str | None, storage: str | None
) -> tuple[dict[str, float], str]:
    """The stored trial to compare with: ``--from SWEEP:NUMBER``, else the recipe's source."""
    if from_trial is None:
        metrics = source.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            return {}, ""
        return metrics, f"trial {source.get('trial')} of {source.get('sweep')}"
    sweep_name, sep, number = from_trial.rpartition(":")
    if not sep or not sweep_name or not number.isdigit():
        raise UserError(f"--from: {from_trial!r} must look like SWEEP:NUMBER")
    rows = _store(storage).trials(sweep_name, where=f"number == {int(number)}")
    if rows.empty:
        raise UserError(f"--from: sweep {sweep_name!r} has no trial {number}")
    row = rows.iloc[0]
    metrics = {k: float(row[k]) for k in _recommend.SOURCE_METRICS if pd.notna(row.get(k))}
    return metrics, f"trial {number} of {sweep_name}"


def apply_command(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe JSON file.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to save the int8 model.")
    ],
    task: Annotated[
        str | None,
        typer.Option(help="Task (built-in name or module:factory); default: the recipe's own."),
    ] = None,
    task_setting: Annotated[
        list[str] | None,
        typer.Option("--task-setting", metavar="NAME=VALUE", help="Task setting, repeatable."),
    ] = None,
    from_trial: Annotated[
        str | None,
        typer.Option("--from", metavar="SWEEP:NUMBER", help="Stored trial to compare with."),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(help="Accept a recipe that leaves some prunable layers out (kept as is)."),
    ] = False,
    device: Annotated[str, typer.Option(help="Fine-tuning device: cpu or cuda.")] = "cpu",
    storage: StorageOption = None,
    fmt: ShortFormatOption = "table",
) -> None:
    """Run a recipe once more on its task, save the int8 model as its runtime's file (an .onnx
    for onnxruntime), and compare accuracy, size and latency with the stored trial."""
    _short_format(fmt)
    recipe_file = _apply.read_recipe(recipe_path)
    settings = _apply.parse_settings(task_setting or [])
    _task_importable(task or recipe_file.source.get("task"))
    stored, label = _stored_metrics(recipe_file.source, from_trial, storage)
    err.print(f"applying {recipe_path} ...", highlight=False)
    applied = _apply.apply_file(
        recipe_file,
        output,
        task=task,
        settings=settings,
        allow_missing=allow_missing,
        device=device,
    )
    shown = [name for name in _recommend.SOURCE_METRICS if name in applied.metrics]
    if fmt != "table":  # for scripts: one row per metric, the stored trial's value beside
        rows = pd.DataFrame(
            {
                "metric": shown,
                "applied": [applied.metrics[name] for name in shown],
                "stored": [stored.get(name) if stored else None for name in shown],
            }
        )
        _output.render(rows, fmt, out)
    else:
        table = Table(title=f"{recipe_path} on task {applied.task!r}, saved to {output}")
        table.add_column("metric")
        table.add_column("applied", justify="right")
        if stored:
            table.add_column(f"stored ({label})", justify="right")
        for name in shown:
            if name in ("speedup_low", "speedup_high"):
                continue  # shown with the speedup: "3.30x (3.10-3.50)"
            like = name.removeprefix("fp32_")  # formatted as the int8 metric it matches
            cells = [_apply.cell(name, like, applied.metrics)]
            if stored:
                cells.append(_apply.cell(name, like, stored))
            table.add_row(name, *cells)
        out.print(table)
    runtime = recipe_file.recipe.runtime
    err.print(
        f"run it: {STANDALONE_LOAD[runtime].format(path=str(output))} "
        f"(nothing of sweep needed), or trials.load_int8({str(output)!r})",
        highlight=False,
    )


def plot(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for NAME.png/.html.")
    ] = Path("."),
    storage: StorageOption = None,
) -> None:
    """Plot the front (accuracy vs size and latency) and the hypervolume over trials."""
    for path in _plot.plot_sweep(_store(storage), name, output):
        err.print(f"wrote {path}", highlight=False)
