"""The recipe: what to do to each layer, and in which order.

The unit of search and of recommendation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA_VERSION = 2
# Recipes written before ``runtime`` existed (schema 1) read as the onnxruntime recipes they are
# equivalent to: every field kept its meaning.
READABLE_VERSIONS = (1, 2)
# Optional top-level object of a recipe file saying where it came from (sweep, trial, metrics);
# read by tools such as ``sweep apply``, ignored by :meth:`Recipe.from_dict`.
SOURCE_FIELD = "source"

METHODS = ("unstructured", "structured")
# prune_ptq: prune, fine-tune, calibrate, static int8. prune_qat: prune, fine-tune, train with
# int8 simulated, static int8. prune_dynamic: prune, fine-tune, int8 weights of the Linear (and
# LSTM) layers with activations quantized at run time: no calibration. prune_float: prune,
# fine-tune, no quantization (a smaller, and with structured pruning faster, fp32 model; where
# int8 does not pay, the answer).
ORDERS = ("prune_ptq", "prune_qat", "prune_dynamic", "prune_float")
GRANULARITIES = ("per_tensor", "per_channel")
LAYER_GRANULARITIES = (*GRANULARITIES, "none")  # "none": the layer stays in float
# The int8 flavour of the target CPU: x86 keeps weights to 7 bits (safe on x86 CPUs without
# VNNI), onednn (x86 with VNNI) and qnnpack (ARM) use all 8.
BACKENDS = ("x86", "onednn", "qnnpack")
# Where the int8 model runs, and is timed: the runtime decides how it is quantized and saved.
RUNTIMES = ("onnxruntime",)


class RecipeError(ValueError):
    """A recipe that cannot be applied: the message names the field and the fix."""


def _check_choice(field_name: str, value: object, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        raise RecipeError(f"{field_name}: {value!r} is not one of {', '.join(options)}")


def _check_count(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{field_name}: {value!r} must be an integer >= {minimum}")


def deployed_form(order: str, granularity: str) -> str:
    """What the runtime loads for a recipe of ``order`` and ``granularity``, as far as its size
    and speed go: ``prune_ptq`` and ``prune_qat`` export the same static int8 graph (their
    weights' values differ, not their layout), ``prune_float`` a float graph whatever the
    granularity."""
    _check_choice("order", order, ORDERS)
    _check_choice("granularity", granularity, GRANULARITIES)
    if order == "prune_float":
        return "float"
    return f"{'dynamic' if order == 'prune_dynamic' else 'static'}_int8_{granularity}"


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is compressed.

    ``amount`` is in [0, 1). Method ``unstructured``: the fraction of the layer's weights set to
    zero (L1 magnitude). Method ``structured``: the fraction of its output channels physically
    removed (L2 norm of each channel's weights), together with the channels they feed; coupled
    layers are pruned as one group (see :mod:`trials._structured`).
    ``granularity`` of ``None`` means "use the recipe's global granularity".
    """

    amount: float = 0.0
    method: str = "unstructured"
    granularity: str | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.amount, bool)
            or not isinstance(self.amount, int | float)
            or not math.isfinite(self.amount)
            or not 0.0 <= self.amount < 1.0
        ):
            raise RecipeError(f"amount: {self.amount!r} must be a number in [0, 1)")
        _check_choice("method", self.method, METHODS)
        if self.granularity is not None:
            _check_choice("granularity", self.granularity, LAYER_GRANULARITIES)


@dataclass(frozen=True)
class Recipe:
    """A complete compression recipe.

    ``layers`` maps fully qualified module names (as in ``model.named_modules()``) to their
    :class:`LayerSpec`. Layers that are absent are left unpruned and use the global granularity.
    Layers with method ``structured`` are pruned first (they change shapes), then the
    ``unstructured`` ones on what remains. ``round_to`` (>= 1): structured pruning keeps a multiple
    of this many output channels per layer, and at least this many (never zero); a sweep's recipes
    use the runtime's :data:`trials.CHANNEL_MULTIPLE` unless its config says otherwise (1, the
    default here, is what recipes written before ``round_to`` meant).
    """

    layers: Mapping[str, LayerSpec] = field(default_factory=dict)
    order: str = "prune_ptq"
    granularity: str = "per_tensor"
    backend: str = "onednn"
    runtime: str = "onnxruntime"
    finetune_epochs: int = 1
    qat_epochs: int = 1
    calibration_batches: int = 8
    learning_rate: float = 1e-3
    round_to: int = 1

    def __post_init__(self) -> None:
        _check_choice("order", self.order, ORDERS)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_count("round_to", self.round_to, 1)
        _check_count("finetune_epochs", self.finetune_epochs, 0)
        _check_count("qat_epochs", self.qat_epochs, 1 if self.order == "prune_qat" else 0)
        _check_count("calibration_batches", self.calibration_batches, 1)
        if not (isinstance(self.learning_rate, int | float) and 0 < self.learning_rate < 10):
            raise RecipeError(f"learning_rate: {self.learning_rate!r} must be in (0, 10)")
        for name, spec in self.layers.items():
            if not isinstance(spec, LayerSpec):
                raise RecipeError(f"layers.{name}: expected a LayerSpec, got {type(spec).__name__}")
        # A read-only copy, so that a frozen recipe really cannot change under a running trial.
        object.__setattr__(self, "layers", dict(self.layers))

    def layer(self, name: str) -> LayerSpec:
        """The spec of ``name``, with the global granularity filled in."""
        spec = self.layers.get(name, LayerSpec())
        if spec.granularity is None:
            spec = replace(spec, granularity=self.granularity)
        return spec

    def check_layers(self, known: Iterable[str], *, complete: bool = False) -> None:
        """Raise if the recipe names a layer that the model does not have as a prunable layer,
        or, with ``complete``, if it leaves out one of the model's prunable layers."""
        known_set = set(known)
        unknown = sorted(set(self.layers) - known_set)
        if unknown:
            hint = ", ".join(sorted(known_set)[:8]) + (" ..." if len(known_set) > 8 else "")
            raise RecipeError(
                f"layers: {unknown[0]!r} is not a prunable layer of this model "
                f"(prunable layers: {hint}); is the recipe for another model?"
            )
        missing = sorted(known_set - set(self.layers))
        if complete and missing:
            shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise RecipeError(
                f"layers: the recipe does not mention {len(missing)} prunable layer(s) of this "
                f"model ({shown}); is it for another model? Add them with amount 0 to keep them"
            )

    def with_layers(self, layers: Mapping[str, LayerSpec]) -> Recipe:
        """A copy of this recipe with ``layers`` in place of its per-layer specs."""
        return replace(self, layers=dict(layers))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: every layer's granularity resolved, amounts as plain floats."""
        return {
            "schema_version": SCHEMA_VERSION,
            "order": self.order,
            "granularity": self.granularity,
            "backend": self.backend,
            "runtime": self.runtime,
            "finetune_epochs": self.finetune_epochs,
            "qat_epochs": self.qat_epochs,
            "calibration_batches": self.calibration_batches,
            "learning_rate": self.learning_rate,
            "round_to": self.round_to,
            "layers": {
                name: {
                    "amount": float(spec.amount),
                    "method": spec.method,
                    "granularity": self.layer(name).granularity,
                }
                for name, spec in sorted(self.layers.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe of a :meth:`to_dict` object (its ``source`` field is ignored); raises
        RecipeError naming the field for an unknown field, wrong value or schema version."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"recipe: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            supported = ", ".join(map(str, READABLE_VERSIONS))
            raise RecipeError(f"schema_version: {version!r} is not supported (reads {supported})")
        known = {f for f in cls.__dataclass_fields__ if f != "layers"} | {
            "layers",
            "schema_version",
            SOURCE_FIELD,
        }
        extra = sorted(set(data) - known)
        if extra:
            raise RecipeError(
                f"{extra[0]}: unknown recipe field (known: {', '.join(sorted(known))})"
            )
        raw_layers = data.get("layers", {})
        if not isinstance(raw_layers, Mapping):
            raise RecipeError("layers: expected an object mapping layer names to settings")
        layers: dict[str, LayerSpec] = {}
        for name, raw in raw_layers.items():
            if not isinstance(raw, Mapping):
                raise RecipeError(
                    f"layers.{name}: expected an object with amount, method, granularity"
                )
            unknown = sorted(set(raw) - {"amount", "method", "granularity"})
            if unknown:
                raise RecipeError(f"layers.{name}.{unknown[0]}: unknown layer field")
            try:
                layers[name] = LayerSpec(**raw)
            except RecipeError as exc:
                raise RecipeError(f"layers.{name}.{exc}") from None
        kwargs = {
            k: v for k, v in data.items() if k not in ("layers", "schema_version", SOURCE_FIELD)
        }
        return cls(layers=layers, **kwargs)

    def to_json(self, indent: int | None = 2) -> str:
        """The :meth:`to_dict` object as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """The recipe of :meth:`to_json` text; raises RecipeError for invalid JSON or content."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)
