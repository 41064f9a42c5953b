"""``sweep.yaml``: validated pydantic models. Every error names the field and the fix."""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trials import BACKENDS, GRANULARITIES, METHODS, ORDERS, RUNTIMES

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
    "zero_fraction",
    "removed_fraction",
    "params",
    "nonzero_params",
    "macs",
)


# A sweep's name: it names the sweep in the store, and files (plots) on disk.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
NAME_MAX = 200
NAME_RULE = f"1 to {NAME_MAX} letters, digits, '_', '.' or '-', starting with a letter or digit"


class ConfigError(ValueError):
    """A config that cannot be used; one line that names the field and the fix."""


def _takes_number(annotation: object) -> bool:
    """Whether a field of this type holds numbers (and not booleans), at any nesting."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(_takes_number(arg) for arg in args)


def _holds_bool(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_holds_bool(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_bool(item) for item in value)
    return False


class _Strict(BaseModel):
    # allow_inf_nan: .nan and .inf are refused as "not a finite number" rather than passing
    # through (NaN compares false with every bound) or failing a bound check with a wrong reason.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic reads true as 1 in a number field; in a config that is always a typo.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _takes_number(field.annotation) and _holds_bool(value):
            raise ValueError("expected a number, not true/false")
        return value


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
        below, above = grid_neighbours(self.min, self.max, self.step)
        if below != above:  # not silently snapped: the user would search less than they asked
            options = f"{below} or {above}" if above < 1.0 else f"{below}"
            raise ValueError(
                f"max {self.max} is off the grid of step {self.step} from min {self.min} "
                f"(only amounts up to {below} would be searched); set max to {options}"
            )
        return self


def grid_neighbours(low: float, value: float, step: float) -> tuple[float, float]:
    """The grid points ``low + k * step`` just below and just above ``value`` (equal when
    ``value`` is on the grid, up to float noise)."""
    steps = (value - low) / step
    if abs(steps - round(steps)) < 1e-6:
        on = round(low + round(steps) * step, 9)
        return on, on
    return round(low + math.floor(steps) * step, 9), round(low + math.ceil(steps) * step, 9)


class BoundsFrom(_Strict):
    """Per-layer amount bounds from a stored sensitivity scan (``sweep sensitivity``)."""

    sensitivity: str = Field(..., min_length=1)  # the scan's sweep name in the same store
    # A layer's upper bound: its largest scanned amount whose accuracy drop stays within this.
    max_drop: float = Field(0.01, ge=0.0, lt=1.0)
    # Uniform recipes (every layer at one amount, capped by its bound) enqueued as first trials.
    enqueue_uniform: int = Field(3, ge=0, le=20)


class SeedFrom(_Strict):
    """First trials from a stored sensitivity scan at the constraints' lowest sparsity: each
    layer's amount from its scanned accuracy drop (the least-drop, then the one-shot
    allocation), across the searched orders and granularities. Without it, a scan stored under
    the default name (``<name>-sensitivity``) seeds the sweep where constraints ask for a
    sparsity, and ``sweep launch`` runs one first when there is none."""

    sensitivity: str = Field(..., min_length=1)  # the scan's sweep name in the same store
    # Seeded trials (None: one per searched order and granularity, at most a sixth of the budget).
    trials: int | None = Field(None, ge=1, le=50)


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
    # None: what the sampler needs (independent for layerwise, relative for the others).
    amount_mode: Literal["relative", "independent"] | None = None
    methods: list[Literal[METHODS]] = Field(default_factory=lambda: list(METHODS), min_length=1)  # type: ignore[valid-type]
    # per_layer: each layer's method is its own parameter; global: one method for every layer.
    # Either way, layers that cannot lose output channels are only ever pruned unstructured.
    method_scope: Literal["per_layer", "global"] = "per_layer"
    # None: prune_ptq, prune_qat and prune_float, and prune_dynamic where the model has Linear or
    # LSTM layers.
    orders: list[Literal[ORDERS]] | None = Field(None, min_length=1)  # type: ignore[valid-type]
    granularities: list[Literal[GRANULARITIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(GRANULARITIES), min_length=1
    )
    bounds_from: BoundsFrom | None = None
    seed_from: SeedFrom | None = None
    # Groups of layer globs whose layers share one amount (e.g. the branches of a residual add).
    tie: list[list[str]] = Field(default_factory=list)
    constraints: Constraints = Constraints()


class SamplerSettings(_Strict):
    # Trials before the model-based samplers (layerwise, tpe, gp) start to model the front.
    # None: 20 (tpe, gp); uniform_startup + 10 (layerwise).
    n_startup_trials: int | None = Field(None, ge=0)
    # The first trials of a new sweep: uniform recipes (every layer the same amount) at this many
    # evenly spaced levels, so the search starts from the best cheap answer. None: 10 (tpe, in
    # amount_mode relative); 10, or half the number of searched layers + 5 if more (layerwise).
    uniform_startup: int | None = Field(None, ge=0)
    # layerwise: a recipe its model predicts to score more than this below the best trial's
    # ``accuracy`` objective is not asked. None: no window of its own (the better trials' spread).
    max_drop: float | None = Field(None, gt=0, le=1)


class Budget(_Strict):
    n_trials: int = Field(40, ge=1)
    timeout_s: float | None = Field(None, gt=0)


class TrialSettings(_Strict):
    finetune_epochs: int = Field(1, ge=0)
    qat_epochs: int = Field(1, ge=1)
    calibration_batches: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=10)
    # None: the runtime's channel multiple (trials.CHANNEL_MULTIPLE; sweep.Space.round_to).
    round_to: int | None = Field(None, ge=1)
    # A trial still running after this long is cancelled and recorded as FAIL.
    timeout_s: float | None = Field(None, gt=0)


# Fields that lived in ``trial`` before the ``latency`` section: old configs and stored sweeps
# still load.
_LEGACY_LATENCY_FIELDS = {
    "backend": "backend",
    "latency_threads": "threads",
    "latency_repeats": "repeats",
}


class Latency(_Strict):
    """Where and how the int8 model's latency is measured.

    ``target`` names a Ray custom resource that the target nodes carry (say ``target_arm64``):
    each trial's int8 model is then timed by a small task on such a node, holding one unit of
    it and no CPU, after training ran wherever it fits. None times the model on the worker that
    trained it.
    ``runtime`` runs and times the models (int8 and the fp32 reference alike), and decides how
    trials quantize and what ``sweep apply`` writes. ``backend`` is the int8 flavour of the
    target CPU: ``x86`` keeps weights to 7 bits (any x86 CPU), ``onednn`` (x86 with VNNI) and
    ``qnnpack`` (ARM) use all 8.
    """

    target: str | None = Field(None, min_length=1)
    runtime: Literal[RUNTIMES] = "onnxruntime"  # type: ignore[valid-type]
    backend: Literal[BACKENDS] = "onednn"  # type: ignore[valid-type]
    threads: int = Field(1, ge=1)
    batch_size: int | None = Field(None, ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(15, ge=3)
    # The front's trials are timed again at the end of a sweep, in rounds against the fp32
    # reference, until the speedup's 95% interval is within ±remeasure_precision of it or
    # remeasure_s seconds pass per trial (0: not timed again).
    remeasure_s: float = Field(20.0, ge=0)
    remeasure_precision: float = Field(0.1, gt=0, lt=1)

    def timing(self) -> dict[str, Any]:
        """The fields of :class:`trials.LatencySpec` (how to time), as sent to Ray workers."""
        return self.model_dump(
            exclude={"target", "runtime", "backend", "remeasure_s", "remeasure_precision"}
        )


class EarlyStopping(_Strict):
    """Stop hopeless trials on their intermediate validation accuracy (one value per epoch)."""

    pruner: Literal["none", "median", "successive_halving"] = "none"
    # Trials reported before a pruner may act, and steps each trial runs before it may be stopped.
    startup_trials: int = Field(5, ge=0)
    warmup_steps: int = Field(0, ge=0)


_RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class Resources(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    # Fractions share a GPU: 0.25 runs four trials on each GPU at once.
    gpus_per_trial: float = Field(0.0, ge=0)
    # Ray custom resources each trial needs, e.g. {fast_disk: 1}; nodes declare them.
    custom: dict[str, float] = Field(default_factory=dict)
    max_concurrent: int | None = Field(None, ge=1)
    # How long to wait for an autoscaler to add a node that carries the resources asked for;
    # 0 fails at once when no node has them.
    wait_for_nodes_s: float = Field(0.0, ge=0)

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in _RAY_BUILTIN_RESOURCES or not name.strip():
                raise ValueError(
                    f"{name!r} is not a custom resource name (use cpus_per_trial / gpus_per_trial)"
                )
            if not amount > 0:
                raise ValueError(f"{name!r}: the amount must be > 0, got {amount}")
        return value


class SweepConfig(_Strict):
    """A whole ``sweep.yaml``: every field, its default and meaning are in the README's
    configuration reference. Frozen; unknown fields are errors."""

    name: str = Field(..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    task: str = Field(..., min_length=1)
    task_settings: dict[str, Any] = Field(default_factory=dict)
    storage: str | None = None
    ray_address: str | None = None
    seed: int = 0
    sampler: Literal["layerwise", "tpe", "nsga2", "random", "gp", "grid"] = "layerwise"
    sampler_settings: SamplerSettings = SamplerSettings()
    objectives: dict[str, Literal["max", "min"]] = Field(
        default_factory=lambda: dict(DEFAULT_OBJECTIVES)
    )
    budget: Budget = Budget()
    search_space: SearchSpace = SearchSpace()
    trial: TrialSettings = TrialSettings()
    early_stopping: EarlyStopping = EarlyStopping()
    resources: Resources = Resources()
    latency: Latency = Latency()

    @model_validator(mode="before")
    @classmethod
    def _legacy_latency_fields(cls, data: Any) -> Any:
        trial = data.get("trial") if isinstance(data, dict) else None
        if not isinstance(trial, dict) or not set(trial) & set(_LEGACY_LATENCY_FIELDS):
            return data
        latency = dict(data.get("latency") or {})
        trial = dict(trial)
        for old, new in _LEGACY_LATENCY_FIELDS.items():
            if old in trial:
                latency.setdefault(new, trial.pop(old))
        return {**data, "trial": trial, "latency": latency}

    @model_validator(mode="after")
    def _amount_mode(self) -> SweepConfig:
        mode = self.search_space.amount_mode
        if self.sampler == "layerwise" and mode == "relative":
            raise ValueError(
                "search_space.amount_mode: sampler layerwise models each layer's own amount; "
                "set amount_mode: independent or leave it out"
            )
        if mode is not None:
            return self
        # Seeds from a scan give each layer its own amount: relative mode could not hold them.
        own = self.sampler == "layerwise" or self.search_space.seed_from is not None
        mode = "independent" if own else "relative"
        search = self.search_space.model_copy(update={"amount_mode": mode})
        return self.model_copy(update={"search_space": search})

    @model_validator(mode="after")
    def _max_drop(self) -> SweepConfig:
        if self.sampler_settings.max_drop is None:
            return self
        if self.sampler != "layerwise":
            raise ValueError(
                "sampler_settings.max_drop: only sampler layerwise reads it; "
                "set sampler: layerwise or leave max_drop out"
            )
        if self.objectives.get("accuracy") != "max":
            raise ValueError(
                "sampler_settings.max_drop: it bounds the accuracy objective; "
                "add accuracy: max to objectives or leave max_drop out"
            )
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: dict[str, str]) -> dict[str, str]:
        if not 1 <= len(value) <= 4:
            raise ValueError("give 1 to 4 objectives, e.g. {accuracy: max, latency_ms: min}")
        return value
