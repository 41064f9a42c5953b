import re
from pathlib import Path

import pytest

from storage import Store
from sweep import ConfigError, load_config, parse_config
from sweep._config import DEFAULT_OBJECTIVES
from sweep._driver import stored_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_demo_config_loads() -> None:
    config = load_config(EXAMPLES / "digits.yaml")
    assert config.task == "digits"
    assert config.objectives == DEFAULT_OBJECTIVES


def test_defaults_fill_everything_but_name_and_task() -> None:
    config = parse_config({"name": "x", "task": "digits"})
    assert config.budget.n_trials >= 1
    assert config.search_space.orders is None  # resolved from the model: sweep.Space.orders
    assert (config.latency.runtime, config.latency.backend) == ("onnxruntime", "onednn")
    # The default size objective must be one that pruning can lower.
    assert "compressed_bytes" in config.objectives and "size_bytes" not in config.objectives


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"task": "digits"}, "name: required field is missing"),
        ({"name": "x"}, "task: required field is missing"),
        ({"name": "x", "task": "digits", "budgt": {}}, "budgt: unknown field"),
        ({"name": "x", "task": "digits", "budget": {"n_trials": 0}}, "budget.n_trials"),
        (
            {"name": "x", "task": "digits", "search_space": {"amount": {"max": 1.5}}},
            "search_space.amount.max",
        ),
        (
            {"name": "x", "task": "digits", "search_space": {"amount": {"min": -0.1}}},
            "search_space.amount.min",
        ),
        (
            {"name": "x", "task": "digits", "search_space": {"orders": ["quantize_first"]}},
            "search_space.orders.0",
        ),
        ({"name": "x", "task": "digits", "objectives": {"accuracy": "up"}}, "objectives.accuracy"),
        ({"name": "x", "task": "digits", "latency": {"backend": "tensorrt"}}, "latency.backend"),
        ({"name": "bad name!", "task": "digits"}, "name:"),
    ],
)
def test_errors_name_the_field(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "sweep.yaml")
    message = str(info.value)
    assert message.startswith("sweep.yaml: ") and expected in message
    assert "\n" not in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_config(bad)


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"GPU": 1}, "resources.custom: 'GPU' is not a custom resource name"),
        ({"fast": 0}, "resources.custom: 'fast': the amount must be > 0"),
    ],
)
def test_custom_resources_are_validated(custom: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"name": "n", "task": "digits", "resources": {"custom": custom}})


def test_latency_fields_of_old_configs_move_to_the_latency_section() -> None:
    old = {
        "name": "n",
        "task": "digits",
        "trial": {"backend": "x86", "latency_threads": 2, "latency_repeats": 5},
    }
    config = parse_config(old)
    assert (config.latency.backend, config.latency.threads, config.latency.repeats) == ("x86", 2, 5)
    assert config.latency.target is None
    # A value given in the latency section wins over the old place.
    both = parse_config({**old, "latency": {"threads": 4}})
    assert both.latency.threads == 4 and both.latency.backend == "x86"


def test_a_max_off_the_step_grid_is_refused_naming_the_grid_points() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"name": "x", "task": "t", "search_space": {"amount": {"max": 0.98}}})
    assert str(error.value) == (
        "config: search_space.amount: max 0.98 is off the grid of step 0.05 from min 0.0 "
        "(only amounts up to 0.95 would be searched); set max to 0.95"
    )
    with pytest.raises(ConfigError, match=r"set max to 0\.6 or 0\.7$"):
        amount = {"min": 0.1, "max": 0.65, "step": 0.1}
        parse_config({"name": "x", "task": "t", "search_space": {"amount": amount}})


def test_a_stored_sweep_with_a_max_off_the_grid_resumes_as_it_searched(tmp_path: Path) -> None:
    """Stored before such a max was refused: the sweep searched up to the grid point below."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config({"name": "old", "task": "digits"}).model_dump(mode="json")
    config["search_space"]["amount"] = {"min": 0.0, "max": 0.98, "step": 0.05, "spread": 0.2}
    store.create_sweep("old", config, {"accuracy": "max"})
    assert stored_config(store, "old").search_space.amount.max == 0.95


def test_a_sweep_stored_before_round_to_keeps_any_channel_count(tmp_path: Path) -> None:
    """Its recipes kept any channel count: resumed, it must not start rounding to 4."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config({"name": "old", "task": "digits"}).model_dump(mode="json")
    assert config["trial"].pop("round_to") is None  # the runtime's, resolved by sweep.Space
    store.create_sweep("old", config, {"accuracy": "max"})
    assert stored_config(store, "old").trial.round_to == 1
