"""``sweep apply``: run a recipe file once more on a task and save the int8 model."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from trials import (
    SOURCE_FIELD,
    LatencySpec,
    Recipe,
    RecipeError,
    TaskError,
    compress,
    load_task,
    prunable_layers,
    save_int8,
)


@dataclass(frozen=True)
class RecipeFile:
    recipe: Recipe
    source: dict[str, Any]  # empty when the file does not say where it came from


def read_recipe(path: Path) -> RecipeFile:
    """A recipe file, validated (schema version, fields, values); ``source`` kept aside."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe file ({exc.strerror})") from None
    try:
        recipe = Recipe.from_json(text)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    source = json.loads(text).get(SOURCE_FIELD) or {}
    if not isinstance(source, dict):
        raise RecipeError(f"{path}: {SOURCE_FIELD}: expected an object (sweep, trial, task)")
    return RecipeFile(recipe, source)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``--task-setting k=v`` pairs; values read as YAML scalars (``n_train=500`` is an int)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TaskError(f"--task-setting: {pair!r} must look like NAME=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


@dataclass(frozen=True)
class Applied:
    task: str
    metrics: dict[str, float]
    timings: dict[str, float]


def _save_atomically(save: Any, output: Path) -> None:
    """Write through a temporary file in the same folder: no partial model file on failure."""
    target = output.resolve()
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        save(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def apply_file(
    recipe_file: RecipeFile,
    output: Path,
    *,
    task: str | None = None,
    settings: Mapping[str, Any] | None = None,
    allow_missing: bool = False,
    device: str = "cpu",
    latency_repeats: int = 15,
) -> Applied:
    """Compress the task's trained model as the recipe says (prune, fine-tune on the task's
    training split, quantize), measure it as a trial would be, and save the int8 model.

    The task defaults to the one in the recipe's ``source``, with its settings updated by
    ``settings``. Unless ``allow_missing``, the recipe must name every prunable layer of the
    model (a recipe for another model fails here, naming the layers).
    """
    spec = task or recipe_file.source.get("task")
    if not spec:
        raise TaskError("--task: the recipe file does not say which task it is for; pass --task")
    merged = {**(recipe_file.source.get("task_settings") or {}), **(settings or {})}
    loaded = load_task(str(spec), merged)
    if not hasattr(loaded, "train_batches"):
        raise TaskError(f"--task: {spec!r} is an analytic task with no model to compress")
    recipe = recipe_file.recipe
    recipe.check_layers(prunable_layers(loaded.build_model()), complete=not allow_missing)
    if not output.parent.exists():
        raise RecipeError(f"-o: the folder {output.parent} does not exist")
    latency = LatencySpec(repeats=latency_repeats)
    done = compress(loaded, recipe, device=torch.device(device), latency=latency)
    _save_atomically(lambda path: save_int8(done.model, recipe, path, done.metrics), output)
    return Applied(str(spec), done.metrics, done.timings)
