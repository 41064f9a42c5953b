"""Which of the user's code must travel to the cluster's workers, as a Ray runtime environment.

A task named by import path (``my_tasks.cnn:make``) lives on the machine that launches the sweep.
Workers on other nodes do not have it, so the top-level package (a folder) or module (one
``.py`` file) that holds it is shipped with Ray's ``py_modules``, with the modules beside it that
it imports (a ``models.py`` next to ``my_tasks.py``, found by reading its import statements).
Built-in tasks and anything installed into an environment (site-packages, this project) are
expected on the workers already: the cluster's setup commands install them. The store URL is
never shipped: workers do not write to the store.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Any

from trials import BUILTIN_TASKS, TaskError, task_file

# Our own packages: installed on every node by cluster.yaml's setup commands.
_PROJECT_PACKAGES = frozenset({"sweep", "trials", "storage"})


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[key]).resolve() for key in ("purelib", "platlib", "stdlib") if key in paths]


def code_to_ship(task: str) -> list[Path]:
    """The folder or ``.py`` file that holds the user's task module, then the modules beside it
    that it imports; none if the workers already have it (a built-in task, an installed
    package, this project)."""
    if task in BUILTIN_TASKS:
        return []
    if task_file(task) is not None:
        # A task given by file path is loaded from that path on every node (the README says
        # so), and the modules beside it with it: shipping a copy elsewhere would not be found.
        return []
    module_name = task.partition(":")[0]
    top = module_name.split(".")[0]
    if top in _PROJECT_PACKAGES:
        return []
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
        return []
    if any(path.is_relative_to(root) for root in _installed_roots()):
        return []
    return [path, *_imported_siblings(path)]


def _imported_names(source: Path) -> set[str]:
    """The top-level module names that ``source`` (a file, or every file of a package folder)
    imports with absolute imports."""
    files = [source] if source.is_file() else sorted(source.rglob("*.py"))
    names: set[str] = set()
    for file in files:
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # importing it on the worker reports what is wrong with it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _sibling(folder: Path, name: str) -> Path | None:
    """``folder``'s module or package ``name``, unless ``import name`` finds another one first
    (the standard library, an installed distribution, this project, another folder on the
    path): then that one is what the task uses, and the workers have it."""
    module, package = folder / f"{name}.py", folder / name
    candidate = module if module.is_file() else package if package.is_dir() else None
    if candidate is None:
        return None
    if name in sys.stdlib_module_names or name in _PROJECT_PACKAGES:
        return None
    if name in importlib.metadata.packages_distributions():
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    found = spec.origin if spec is not None and spec.has_location else None
    if found is not None and not Path(found).resolve().is_relative_to(folder):
        return None
    return candidate.resolve()


def _imported_siblings(entry: Path) -> list[Path]:
    """The modules and packages beside ``entry`` that it imports, directly or through them."""
    folder = entry.parent
    found: dict[str, Path] = {}
    pending = [entry]
    while pending:
        for name in sorted(_imported_names(pending.pop())):
            sibling = _sibling(folder, name) if name not in found else None
            if sibling is not None and sibling != entry:
                found[name] = sibling
                pending.append(sibling)
    return sorted(found.values())


def runtime_env(task: str) -> dict[str, Any] | None:
    """The Ray runtime environment that makes ``task`` importable on every worker, if any."""
    paths = code_to_ship(task)
    if not paths:
        return None
    return {"py_modules": [str(p) for p in paths], "excludes": ["__pycache__", "*.pyc", ".git"]}
