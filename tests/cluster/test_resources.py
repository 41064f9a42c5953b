"""Per-trial custom resources, fail-fast on resources no node has, and the user's task module
shipped to the workers of a cluster."""

import pytest

from tests.cluster.cluster_runner import run_scenario


@pytest.mark.slow
def test_custom_resources_and_shipped_task_module() -> None:
    found = run_scenario("resources_run.py", timeout=420)
    assert found["states"] == ["COMPLETE"] * 4
    # Every trial ran on the one node that carries the custom resource.
    assert found["marked_nodes"] == [found["fast_node"]]
    # Workers import the task from the shipped copy, not from the driver's folder.
    assert not found["worker_imports_from"].startswith(found["user_folder"])
    missing, gpu = found["errors"]["missing"], found["errors"]["gpu"]
    assert missing.startswith("resources.custom: no node of the Ray cluster carries 'missing'")
    assert gpu.startswith("resources.gpus_per_trial: no node of the Ray cluster carries 'GPU'")
    assert "\n" not in missing + gpu
    # Neither failed sweep was created: a failed start stores nothing.
    assert found["sweeps"] == ["fast"]
