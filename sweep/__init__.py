"""sweep: orchestration (Optuna in the driver, trials on Ray) and the command line."""

from sweep._config import ConfigError, SweepConfig
from sweep._config_read import load_config, parse_config
from sweep._driver import Progress, connect_ray, run_sweep, validate_before_ray

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
