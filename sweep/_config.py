"""``sweep.yaml``: validated pydantic models. Every error names the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trials import BACKENDS, GRANULARITIES, METHODS, ORDERS

DEFAULT_STORAGE = "sqlite:///sweeps.db"
DEFAULT_OBJECTIVES: dict[str, Literal["max", "min"]] = {
    "accuracy": "max",
    # The compressed size, not the dense file: unstructured zeros do not shrink a dense int8 file,
    # so a dense-size objective would make every pruning amount look worthless.
    "compressed_bytes": "min",
    "latency_ms": "min",
}
# Metrics a trial always reports; objectives and constraints may name these or task metrics.
TRIAL_METRICS = (
    "accuracy",
    "accuracy_drop",
    "size_bytes",
    "compressed_bytes",
    "latency_ms",
    "speedup",
    "sparsity",
    "params",
    "nonzero_params",
    "macs",
)


class ConfigError(ValueError):
    """A config that cannot be used; one line that names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmountRange(_Strict):
    min: float = Field(0.0, ge=0.0, lt=1.0)
    max: float = Field(0.9, ge=0.0, lt=1.0)
    step: float = Field(0.05, gt=0.0, lt=1.0)
    # mode relative: how far each layer's amount may stray from the sampled global level.
    spread: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> AmountRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Constraints(_Strict):
    """Limits on a recipe, known before its trial runs (from each layer's weight count); the
    sampler learns to stay inside them and the front of a sweep keeps only trials that do."""

    max_sparsity: float | None = Field(None, gt=0.0, le=1.0)
    min_sparsity: float | None = Field(None, ge=0.0, lt=1.0)
    max_params: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Constraints:
        if None not in (self.min_sparsity, self.max_sparsity) and (
            float(self.min_sparsity or 0) > float(self.max_sparsity or 0)
        ):
            raise ValueError("min_sparsity must be <= max_sparsity")
        return self


class SearchSpace(_Strict):
    layers: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude: list[str] = Field(default_factory=list)
    amount: AmountRange = AmountRange()
    # relative: one global ``level`` plus a bounded ``offset:<layer>`` per layer (amounts stay
    # near a common level, where good recipes are); independent: one ``amount:<layer>`` each.
    amount_mode: Literal["relative", "independent"] = "relative"
    methods: list[Literal[METHODS]] = Field(default_factory=lambda: list(METHODS), min_length=1)  # type: ignore[valid-type]
    # per_layer: each layer's method is its own parameter; global: one method for every layer.
    # Either way, layers that cannot lose output channels are only ever pruned unstructured.
    method_scope: Literal["per_layer", "global"] = "per_layer"
    orders: list[Literal[ORDERS]] = Field(default_factory=lambda: list(ORDERS), min_length=1)  # type: ignore[valid-type]
    granularities: list[Literal[GRANULARITIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(GRANULARITIES), min_length=1
    )
    # Groups of layer globs whose layers share one amount (e.g. the branches of a residual add).
    tie: list[list[str]] = Field(default_factory=list)
    constraints: Constraints = Constraints()


class SamplerSettings(_Strict):
    # Trials drawn at random before the model-based samplers (tpe, gp) start to model the front.
    n_startup_trials: int | None = Field(None, ge=0)
    # The first trials of a new sweep: uniform recipes (every layer the same amount) at this many
    # evenly spaced levels, so the search starts from the best cheap answer (amount_mode relative).
    uniform_startup: int = Field(10, ge=0)


class Budget(_Strict):
    n_trials: int = Field(40, ge=1)
    timeout_s: float | None = Field(None, gt=0)


class TrialSettings(_Strict):
    finetune_epochs: int = Field(1, ge=0)
    qat_epochs: int = Field(1, ge=1)
    calibration_batches: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=10)
    round_to: int = Field(1, ge=1)
    backend: Literal[BACKENDS] = "onednn"  # type: ignore[valid-type]
    latency_threads: int = Field(1, ge=1)
    latency_repeats: int = Field(15, ge=3)
    # A trial still running after this long is cancelled and recorded as FAIL.
    timeout_s: float | None = Field(None, gt=0)


class EarlyStopping(_Strict):
    """Stop hopeless trials on their intermediate validation accuracy (one value per epoch)."""

    pruner: Literal["none", "median", "successive_halving"] = "none"
    # Trials reported before a pruner may act, and steps each trial runs before it may be stopped.
    startup_trials: int = Field(5, ge=0)
    warmup_steps: int = Field(0, ge=0)


class Resources(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)


class SweepConfig(_Strict):
    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    task: str = Field(..., min_length=1)
    task_settings: dict[str, Any] = Field(default_factory=dict)
    storage: str | None = None
    ray_address: str | None = None
    seed: int = 0
    sampler: Literal["tpe", "nsga2", "random", "gp", "grid"] = "tpe"
    sampler_settings: SamplerSettings = SamplerSettings()
    objectives: dict[str, Literal["max", "min"]] = Field(
        default_factory=lambda: dict(DEFAULT_OBJECTIVES)
    )
    budget: Budget = Budget()
    search_space: SearchSpace = SearchSpace()
    trial: TrialSettings = TrialSettings()
    early_stopping: EarlyStopping = EarlyStopping()
    resources: Resources = Resources()

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: dict[str, str]) -> dict[str, str]:
        if not 1 <= len(value) <= 4:
            raise ValueError("give 1 to 4 objectives, e.g. {accuracy: max, latency_ms: min}")
        return value


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def parse_config(data: object, source: str = "config") -> SweepConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping of fields (name, task, ...)")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _field_path(tuple(error["loc"])) or "config"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the configuration reference"
        elif error["type"] == "missing":
            message = "required field is missing"
        raise ConfigError(f"{source}: {where}: {message}") from None


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(data, str(path))
