"""A task file imports the model file beside it: on the driver, on every Ray worker and in
``sweep apply``, without PYTHONPATH, and a module there never shadows an installed one."""

import pytest

from tests.cluster.cluster_runner import run_scenario


@pytest.mark.slow
def test_a_task_file_imports_the_model_file_beside_it_on_a_cluster() -> None:
    found = run_scenario("sibling_task_run.py", timeout=900)
    assert found["codes"] == {"by_file": 0, "by_module": 0, "apply": 0}, found["stderr"]
    assert found["states"] == {"by_file": ["COMPLETE"] * 2, "by_module": ["COMPLETE"] * 2}
    assert not found["stray_ran"], "a yaml.py beside the task ran in place of the library"
    assert found["model_bytes"] > 0
