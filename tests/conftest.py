"""Session-wide fixtures: a private baseline cache and one real local Ray."""

import os
import tempfile
from collections.abc import Iterator

import pytest
import ray

# Set before Ray starts so that every worker (and every CLI subprocess) inherits it: the tests
# train their own baselines instead of reading a user's ~/.cache/sweep.
os.environ.setdefault("SWEEP_CACHE_DIR", tempfile.mkdtemp(prefix="sweep-test-cache-"))


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One real local Ray for the whole session (random ports; token authentication stays on)."""
    if not ray.is_initialized():
        # "local": a Ray of its own, never one that another program left running here.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
