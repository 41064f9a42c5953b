"""A real sweep and its sensitivity scan (the ``synthetic`` task on the session's local Ray,
real SQLite), served by the dashboard for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import Store
from sweep import _sensitivity
from sweep._config import SweepConfig
from sweep._config_read import parse_config
from sweep._driver import run_sweep
from tests.dashboard.dashboard_helpers import LIVE, REAL, Served, serving, write_sweep


def real_config() -> SweepConfig:
    return parse_config(
        {
            "name": REAL,
            "task": "synthetic",
            "task_settings": {"n_layers": 6, "seed": 5, "trial_seconds": 0.0},
            "budget": {"n_trials": 24},
            "search_space": {"amount": {"min": 0.0, "max": 0.9, "step": 0.1}},
        }
    )


@pytest.fixture(scope="session")
def served(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'sweeps.db'}"
    store = Store(url, create=True)
    config = real_config()
    _sensitivity.run_scan(
        config,
        store,
        name=_sensitivity.scan_name(config),
        amounts=(0.3, 0.6, 0.9),
        granularities=("per_tensor",),
        finetune_epochs=0,
    )
    run_sweep(config, store)
    write_sweep(store, LIVE, 12)
    with serving(store) as base:
        yield Served(url, base, store)
    store.close()
