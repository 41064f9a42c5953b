"""``sweep apply``: run a recipe file once more on a task and save the int8 model."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sweep import _output
from sweep._yaml import YamlLimitError, read_yaml
from trials import (
    RUNTIME_SUFFIXES,
    SOURCE_FIELD,
    LatencySpec,
    Recipe,
    RecipeError,
    TaskError,
    compress,
    load_task,
    prunable_layers,
    reference_model,
    remeasure,
    save_int8,
)

# How long `sweep apply` times its model again against the fp32 reference, at most, for its
# speedup's 95% interval (see trials.remeasure), and the interval's half-width to stop at.
APPLY_REMEASURE_S = 20.0
APPLY_PRECISION = 0.1


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
        try:
            settings[key.strip()] = read_yaml(value)
        except (YamlLimitError, yaml.YAMLError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise TaskError(f"--task-setting: {key.strip()}: {problem}") from None
    return settings


@dataclass(frozen=True)
class Applied:
    task: str
    metrics: dict[str, float]
    timings: dict[str, float]


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A ``--device`` this machine cannot run on; one line that says what to use instead."""


def check_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against this machine and this torch build."""
    if not _DEVICE.fullmatch(device):
        raise DeviceError(f"--device: {device!r} is not one of cpu, cuda or cuda:N")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device: {device} is not available (torch {torch.__version__} sees no CUDA "
            "device); use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    chosen = torch.device(device)
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise DeviceError(
            f"--device: {device} does not exist; this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return chosen


def _save_model(
    model: torch.nn.Module, recipe: Recipe, metrics: dict[str, float]
) -> _output.Writer:
    def save(path: Path) -> None:
        # Serialized in memory, written by Python: a full disk is then an OSError with its
        # errno (torch's own writer reports it only as "unexpected pos ...").
        buffer = io.BytesIO()
        save_int8(model, recipe, buffer, metrics)
        path.write_bytes(buffer.getvalue())

    return save


def apply_file(
    recipe_file: RecipeFile,
    output: Path,
    *,
    task: str | None = None,
    settings: Mapping[str, Any] | None = None,
    allow_missing: bool = False,
    device: str = "cpu",
    latency_repeats: int = 15,
    remeasure_s: float = APPLY_REMEASURE_S,
) -> Applied:
    """Compress the task's trained model as the recipe says (prune, fine-tune on the task's
    training split, quantize), measure it as a trial would be, and save the int8 model.

    The task defaults to the one in the recipe's ``source``, with its settings updated by
    ``settings``. Unless ``allow_missing``, the recipe must name every prunable layer of the
    model (a recipe for another model fails here, naming the layers).
    """
    chosen = check_device(device)
    recipe = recipe_file.recipe
    suffix = RUNTIME_SUFFIXES[recipe.runtime]
    _output.check_output_file(output, example=f"model{suffix}")
    if output.suffix != suffix:
        raise _output.OutputError(
            f"-o: runtime {recipe.runtime} saves the model as a {suffix} file; name it "
            f"{output.with_suffix(suffix).name}"
        )
    spec = task or recipe_file.source.get("task")
    if not spec:
        raise TaskError("--task: the recipe file does not say which task it is for; pass --task")
    merged = {**(recipe_file.source.get("task_settings") or {}), **(settings or {})}
    loaded = load_task(str(spec), merged)
    if not hasattr(loaded, "train_batches"):
        raise TaskError(f"--task: {spec!r} is an analytic task with no model to compress")
    recipe.check_layers(prunable_layers(loaded.build_model()), complete=not allow_missing)
    latency = LatencySpec(repeats=latency_repeats)
    try:
        done = compress(loaded, recipe, device=chosen, latency=latency)
    except OSError as exc:
        if exc.errno not in _output.DISK_FULL:
            raise
        # The runtime's quantizer works through temporary files (TMPDIR).
        raise _output.DiskFullError(
            f"cannot write temporary files while quantizing: the disk is full or a file reached "
            f"its size limit ({exc.strerror}); free disk space, or set TMPDIR to another disk"
        ) from None
    # Timed once, the speedup is as noisy as a trial's: timed again in rounds, it comes with
    # its 95% interval, to set beside the stored trial's.
    example = loaded.example_input().cpu()
    fp32 = reference_model(loaded.build_model().cpu().eval(), example, recipe.runtime)
    timed = remeasure(
        fp32, done.model, example, latency, precision=APPLY_PRECISION, time_s=remeasure_s
    )
    metrics = {**done.metrics, **timed.metrics()}
    _output.write_atomically(output, _save_model(done.model, recipe, metrics))
    return Applied(str(spec), metrics, done.timings)


def cell(name: str, like: str, metrics: Mapping[str, Any]) -> str:
    """A metric of `sweep apply`'s table, formatted as ``like``; a speedup with its interval."""
    if name == "speedup":
        return _output._shown(name, {**metrics, name: metrics.get(name)})
    return _output._cell(like, metrics.get(name))
