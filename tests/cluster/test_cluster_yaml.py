"""cluster.yaml passes Ray's own cluster-launcher validation and installs this project."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(config))
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    assert {"cpu_worker", "gpu_worker"} <= set(node_types)
    # A latency target node: carries its resource and no CPU, so that no trial trains on it.
    assert node_types["x86_target"]["resources"] == {"CPU": 0, "target_x86": 1}
    setup = " ".join(config["setup_commands"])
    assert "constraints.txt" in setup and "pip install" in setup
    assert config["file_mounts"]["~/sweep"] == "."
