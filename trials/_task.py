"""What a user implements to sweep their own model: the :class:`Task` protocol; task loading."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from trials._recipe import Recipe

Batch = tuple[torch.Tensor, torch.Tensor]
BUILTIN_TASKS: dict[str, str] = {
    "digits": "trials.tasks.digits:DigitsTask",
    "lstm": "trials.tasks.sequences:LstmTask",
    "resnet": "trials.tasks.resnet:ResnetTask",
    "shapes": "trials.tasks.shapes:ShapesTask",
    "synthetic": "trials.tasks.synthetic:SyntheticTask",
    "transformer": "trials.tasks.sequences:TransformerTask",
}


class TaskError(ValueError):
    """A task that cannot be loaded or used: the message names the task and the fix."""


@runtime_checkable
class Task(Protocol):
    """A model and the data to fine-tune, calibrate and judge it.

    Three disjoint data splits: ``train_batches`` (fine-tuning and QAT), ``calibration_batches``
    (PTQ observers) and ``validation_batches`` (every reported accuracy; nothing trains on it).
    Each call returns a fresh iterable of ``(inputs, targets)`` batches; a ``DataLoader`` works.
    """

    name: str

    def build_model(self) -> nn.Module:
        """The trained fp32 model (a new copy on each call; cache the training, not the module)."""
        ...

    def train_batches(self) -> Iterable[Batch]:
        """The batches of one epoch of fine-tuning and QAT."""
        ...

    def calibration_batches(self) -> Iterable[Batch]:
        """The batches the PTQ observers see (the first ``recipe.calibration_batches``)."""
        ...

    def validation_batches(self) -> Iterable[Batch]:
        """The batches that every reported accuracy is computed on."""
        ...

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of a model's ``output`` for ``target``."""
        ...

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics on the validation split; must include ``accuracy`` (higher is better)."""
        ...

    def example_input(self) -> torch.Tensor:
        """The batch that latency is measured on (its batch size is the deployment's)."""
        ...


@runtime_checkable
class AnalyticTask(Protocol):
    """A benchmark task whose metrics are a known function of the recipe: nothing is trained.

    ``build_model`` only names the layers (any model with those Conv/Linear layers);
    ``analytic_metrics`` returns every trial metric for a recipe (``Recipe()`` gives the fp32
    baseline's); each trial lasts ``trial_seconds``, so orchestration can be measured exactly.
    """

    name: str
    trial_seconds: float

    def build_model(self) -> nn.Module:
        """A model with the task's prunable layers (its weights do not matter)."""
        ...

    def analytic_metrics(self, recipe: Recipe) -> dict[str, float]:
        """Every trial metric of ``recipe``, computed without training or measuring."""
        ...


PhaseFn = Callable[[str], None]
_PHASE_LISTENERS: list[PhaseFn] = []


@contextlib.contextmanager
def reporting_phases(listener: PhaseFn) -> Iterator[None]:
    """Within the block, :func:`report_phase` texts go to ``listener`` (a progress bar on the
    driver): what a task does before its first trial, such as training its baseline."""
    _PHASE_LISTENERS.append(listener)
    try:
        yield
    finally:
        _PHASE_LISTENERS.remove(listener)


def report_phase(text: str) -> None:
    """Say what the task is doing now (one line); nothing happens when nobody listens."""
    for listener in list(_PHASE_LISTENERS):
        listener(text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where trained baselines are kept: ``$SWEEP_CACHE_DIR``, else ``~/.cache/sweep``."""
    root = os.environ.get("SWEEP_CACHE_DIR") or Path.home() / ".cache" / "sweep"
    return Path(root)


def cached_state_dict(
    key: Mapping[str, Any], train: Callable[[], nn.Module]
) -> dict[str, torch.Tensor]:
    """The state_dict of ``train()``, computed once per ``key`` and kept on disk.

    The key holds the task's name and every setting that changes the trained weights. Writes are
    atomic (temp file + rename), so concurrent workers on one node never read a partial file.
    """
    blob = json.dumps({**key, "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = cache_dir() / f"{key.get('task', 'task')}-{digest}.pt"
    if path.exists():
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    task = key.get("task", "the task")
    report_phase(f"training the fp32 baseline of {task} (once: cached for next time)")
    state = {k: v.detach().cpu() for k, v in train().state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())  # Python's write: a full disk is an OSError
        os.replace(tmp, path)
    except OSError as exc:
        # The cache only saves time: without it the baseline is trained again next time.
        if tmp.exists():
            tmp.unlink()
        warnings.warn(
            f"could not cache the trained baseline in {path.parent} ({exc.strerror or exc}); "
            f"set SWEEP_CACHE_DIR to a writable folder with space",
            RuntimeWarning,
            stacklevel=2,
        )
    return state


def task_file(spec: str) -> Path | None:
    """The absolute path of a ``path/to/file.py:factory`` spec (relative paths against the
    working directory), or ``None`` for built-in names and dotted module paths."""
    path, sep, _ = spec.partition(":")
    if not sep or not path.endswith(".py"):
        return None
    return Path(os.getcwd(), path).resolve()


class _TaskFolders(importlib.abc.MetaPathFinder):
    """The folders that hold task modules, for the modules beside them (a task file's
    ``models.py``). Asked last, after every finder of ``sys.meta_path`` has searched
    ``sys.path``: a module there never shadows an installed one or the standard library, so a
    stray ``matplotlib.py`` beside a task is never what ``import matplotlib`` finds."""

    def __init__(self) -> None:
        self.folders: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None or not self.folders:
            return None  # a submodule is found through its package's own __path__
        return importlib.machinery.PathFinder.find_spec(fullname, self.folders)


_TASK_FOLDERS = _TaskFolders()


def task_folder_importable(folder: Path) -> None:
    """Let the modules in ``folder`` (where a task module lives) be imported by name."""
    name = str(folder.resolve())
    if name not in _TASK_FOLDERS.folders:
        _TASK_FOLDERS.folders.append(name)
    if _TASK_FOLDERS in sys.meta_path:
        sys.meta_path.remove(_TASK_FOLDERS)
    sys.meta_path.append(_TASK_FOLDERS)  # last, also after finders added since


def _module_folder(module_name: str) -> Path | None:
    """The folder that holds the top-level module or package of ``module_name``, found without
    importing it (its own imports may need that very folder)."""
    try:
        spec = importlib.util.find_spec(module_name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return Path(locations[0]).parent if locations else None
    return Path(spec.origin).parent if spec.origin and spec.has_location else None


def _import_file(path_text: str) -> ModuleType:
    """Import the file itself (never a module of the same name elsewhere on ``sys.path``)."""
    path = Path(os.getcwd(), path_text).resolve()
    if not path.is_file():
        raise TaskError(
            f"task: {path_text!r} is not a file (looked for {path}); give the path of your "
            "task's .py file, relative to the working directory or absolute"
        )
    name = f"_sweep_task_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"task: cannot import {path} as a Python module")
    task_folder_importable(path.parent)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's module, named
        del sys.modules[name]
        raise TaskError(
            f"task: importing {path_text!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    return module


def resolve_task_factory(spec: str) -> Callable[..., Any]:
    """The factory that ``spec`` names, imported but not called (cheap: for early validation).

    ``spec`` is a built-in task name, ``package.module:factory`` (imported from ``sys.path``)
    or ``path/to/file.py:factory``: that file and no other, a relative path taken against the
    working directory.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(
            "task: give a built-in task name or an import path 'package.module:factory'"
        )
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskError(
            f"task: {spec!r} is neither a built-in task ({known}) nor an import path "
            "'package.module:factory'"
        )
    if module_name.endswith(".py"):
        module = _import_file(module_name)
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise TaskError(f"task: {module_name!r} has no callable {attr!r}")
        return factory
    folder = _module_folder(module_name)
    if folder is not None:
        task_folder_importable(folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskError(
            f"task: cannot import {module_name!r} ({exc}); check the path and that its folder is "
            "on PYTHONPATH or installed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any error in the user's module, named
        raise TaskError(
            f"task: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise TaskError(f"task: {module_name!r} has no callable {attr!r}")
    return factory


def load_task(spec: str, settings: Mapping[str, Any] | None = None) -> Task:
    """A task by built-in name (``digits``), import path ``package.module:factory`` or file
    ``path/to/file.py:factory`` (see :func:`resolve_task_factory`).

    ``factory(**settings)`` must return an object that implements :class:`Task`.
    """
    factory = resolve_task_factory(spec)
    target = BUILTIN_TASKS.get(spec, spec)
    try:
        task = factory(**dict(settings or {}))
    except TypeError as exc:
        raise TaskError(f"task_settings: {target} rejected the settings: {exc}") from None
    if isinstance(task, AnalyticTask):
        return task  # type: ignore[return-value]  # run_trial dispatches on AnalyticTask
    missing = [m for m in _REQUIRED if not callable(getattr(task, m, None))]
    if missing or not isinstance(getattr(task, "name", None), str):
        what = ", ".join(missing) if missing else "name"
        raise TaskError(f"task: {target} returned an object without {what} (see trials.Task)")
    return task


_REQUIRED = (
    "build_model",
    "train_batches",
    "calibration_batches",
    "validation_batches",
    "loss",
    "evaluate",
    "example_input",
)
