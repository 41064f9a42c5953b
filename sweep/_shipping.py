"""Which of the user's code must travel to the cluster's workers, as a Ray runtime environment.

A task named by import path (``my_tasks.cnn:make``) lives on the machine that launches the sweep.
Workers on other nodes do not have it, so the top-level package (a folder) or module (one
``.py`` file) that holds it is shipped with Ray's ``py_modules``. Built-in tasks and anything
installed into an environment (site-packages, this project) are expected on the workers already:
the cluster's setup commands install them. The store URL is never shipped: workers do not write
to the store.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path
from typing import Any

from trials import BUILTIN_TASKS, TaskError, task_file

# Our own packages: installed on every node by cluster.yaml's setup commands.
_PROJECT_PACKAGES = frozenset({"sweep", "trials", "storage"})


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[key]).resolve() for key in ("purelib", "platlib", "stdlib") if key in paths]


def code_to_ship(task: str) -> Path | None:
    """The folder or ``.py`` file that holds the user's task module, or None if the workers
    already have it (a built-in task, an installed package, this project)."""
    if task in BUILTIN_TASKS:
        return None
    if task_file(task) is not None:
        # A task given by file path is loaded from that path on every node (the README says
        # so): shipping a copy elsewhere would not be found there.
        return None
    module_name = task.partition(":")[0]
    top = module_name.split(".")[0]
    if top in _PROJECT_PACKAGES:
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise TaskError(f"task: cannot find module {top!r} ({exc})") from None
    if spec is None:
        raise TaskError(
            f"task: cannot import {top!r}; run from the folder that holds it, or install it"
        )
    if spec.submodule_search_locations:  # a package (regular or namespace): ship its folder
        locations = sorted({str(Path(p).resolve()) for p in spec.submodule_search_locations})
        if len(locations) != 1:
            raise TaskError(
                f"task: package {top!r} spans several folders ({len(locations)}); "
                "give it an __init__.py so that one folder can be shipped to the workers"
            )
        path = Path(locations[0])
    elif spec.origin and spec.origin.endswith(".py"):
        path = Path(spec.origin).resolve()
    else:  # a compiled or frozen module: it must be installed on the workers
        return None
    if any(path.is_relative_to(root) for root in _installed_roots()):
        return None
    return path


def runtime_env(task: str) -> dict[str, Any] | None:
    """The Ray runtime environment that makes ``task`` importable on every worker, if any."""
    path = code_to_ship(task)
    if path is None:
        return None
    return {"py_modules": [str(path)], "excludes": ["__pycache__", "*.pyc", ".git"]}
