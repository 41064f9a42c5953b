"""Which user code a cluster's workers are sent (Ray runtime environment py_modules)."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweep._shipping import code_to_ship, runtime_env
from trials import TaskError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_folder(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "one_file_task.py").write_text("def make(): ...\n")
    # A task file that imports the modules beside it, one of them through another.
    (tmp_path / "user_tasks.py").write_text(
        "import yaml\nfrom models import Net\nimport helpers.data\n\ndef make(): ...\n"
    )
    (tmp_path / "models.py").write_text("from layers import Block\n\nclass Net: ...\n")
    (tmp_path / "layers.py").write_text("class Block: ...\n")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    (tmp_path / "helpers" / "data.py").write_text("")
    (tmp_path / "yaml.py").write_text("raise RuntimeError('a stray yaml.py')\n")
    (tmp_path / "unused.py").write_text("")
    package = tmp_path / "user_pkg" / "models"
    package.mkdir(parents=True)
    (tmp_path / "user_pkg" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "cnn.py").write_text("def make(): ...\n")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith(("one_file_task", "user_pkg", "user_t"))]:
        del sys.modules[name]


def test_a_single_file_module_is_shipped_as_that_file(user_folder: Path) -> None:
    assert code_to_ship("one_file_task:make") == [user_folder / "one_file_task.py"]


def test_a_task_module_is_shipped_with_the_modules_beside_it_that_it_imports(
    user_folder: Path,
) -> None:
    """models.py (and layers.py, which models imports) and the helpers package travel; yaml.py
    does not (the installed yaml is what ``import yaml`` finds), nor what nothing imports."""
    assert code_to_ship("user_tasks:make") == [
        user_folder / "user_tasks.py",
        user_folder / "helpers",
        user_folder / "layers.py",
        user_folder / "models.py",
    ]


def test_a_package_is_shipped_as_its_top_level_folder(user_folder: Path) -> None:
    assert code_to_ship("user_pkg.models.cnn:make") == [user_folder / "user_pkg"]
    env = runtime_env("user_pkg.models.cnn:make")
    assert env is not None and env["py_modules"] == [str(user_folder / "user_pkg")]


def test_the_repos_examples_folder_is_shipped() -> None:
    assert code_to_ship("examples.user_task:make_task") == [ROOT / "examples"]


@pytest.mark.parametrize(
    "task",
    [
        "digits",
        "trials.tasks.digits:DigitsTask",
        "sweep.anything:x",
        "sklearn.datasets:load_digits",
    ],
)
def test_builtin_installed_and_project_code_is_not_shipped(task: str) -> None:
    assert code_to_ship(task) == []
    assert runtime_env(task) is None


def test_a_module_that_does_not_exist_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="no_such_user_module"):
        code_to_ship("no_such_user_module:make")
