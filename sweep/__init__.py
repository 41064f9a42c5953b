"""sweep: orchestration (Optuna in the driver, trials on Ray) and the command line."""

from sweep._config import ConfigError, SweepConfig
from sweep._config_read import load_config, parse_config
from sweep._driver import run_sweep, validate_before_ray
from sweep._loop import Progress
from sweep._ray_session import connect_ray

__all__ = [
    "ConfigError",
    "Progress",
    "SweepConfig",
    "connect_ray",
    "load_config",
    "parse_config",
    "run_sweep",
    "validate_before_ray",
]
