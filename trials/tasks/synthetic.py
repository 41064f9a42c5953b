"""Built-in ``synthetic``: an analytic benchmark whose metrics are known functions of the recipe.

Nothing is trained or measured: a trial lasts exactly ``trial_seconds`` (so orchestration overhead
can be measured against trials of known length) and its metrics come from the closed forms
below, so a search can be scored against the exact Pareto front (:meth:`SyntheticTask.true_front`).

The model (:meth:`SyntheticTask.build_model`, used only to name the layers) is a chain of
``n_layers`` Linear layers ``layer00``, ``layer01``, ... with widths ``w_0 .. w_n`` drawn from
{16, 24, 32, 48, 64, 96, 128} by ``seed``. Layer ``i`` has ``p_i = w_i * w_{i+1}`` weights and
``c_i = w_{i+1}`` output channels (and biases). Its tolerance ``tau_i ~ U(0.35, 0.95)`` (also from
``seed``) is the amount at which pruning it alone costs 2 points of accuracy, so its sensitivity
``s_i = 0.02 / tau_i**4`` spans a factor of about 50 across layers.

For a recipe with, per layer, amount ``a_i``, method ``m_i`` and granularity ``g_i``
(``per_tensor``, ``per_channel`` or ``none`` = left in float), ``k_i = 1 - a_i`` if ``m_i`` is
``structured`` (channels physically removed) else ``1``, and ``P = sum p_i``:

- ``accuracy = clip(0.95 - sum_i [s_i * M(m_i) * a_i**4 + (p_i / P) * Q(g_i)] - O(order), 0, 1)``
  with ``M(unstructured) = 1``, ``M(structured) = 2.5``; ``Q(per_tensor) = 0.012``,
  ``Q(per_channel) = 0.003``, ``Q(none) = 0``; ``O(prune_ptq) = 0.004``, ``O(prune_qat) = 0.001``,
  ``O(prune_dynamic) = 0.003`` (the analytic model does not tell layer types apart: every
  layer counts as quantized under each order but ``prune_float``, where every layer counts as
  granularity ``none``).
  ``fp32_accuracy = 0.95``; ``accuracy_drop = fp32_accuracy - accuracy``.
- ``size_bytes = 1024 + sum_i [64 + B(g_i) * k_i * p_i + 4 * k_i * c_i + S(g_i, k_i * c_i)]``:
  int8 weights are ``B = 1`` byte (``none``: 4), float biases 4; quantization parameters
  ``S = 16`` bytes per layer for per_tensor, ``16`` per output channel for per_channel (so, as
  measured on real models, per-channel files are larger), ``0`` for ``none``. Unstructured zeros do
  not shrink the dense file; structured pruning does.
- ``compressed_bytes = 512 + sum_i [32 + B(g_i) * p_i * Z_i + 3.6 * k_i * c_i + 0.6 * S]`` with
  ``Z_i = 0.9 * (1 - a_i) + 0.05 * a_i`` for unstructured layers (a kept weight compresses
  to 0.9 byte, a zero to 0.05) and ``Z_i = 0.9 * (1 - a_i)`` for structured ones.
- ``latency_ms = sum_i [0.02 + 32 * p_i * T(g_i) * F(a_i, m_i) * 1e-6]`` for a batch of 32:
  ``T = 0.4`` ns per MAC in int8 (``per_channel``: 0.42, ``none``: 1.0), ``F = 1 - 0.6 * a``
  unstructured (as if sparse kernels skipped most zeros), ``F = 1 - a`` structured.
  ``fp32_latency_ms`` is the same with ``T = 1.0`` and ``a = 0``; ``speedup = fp32 / int8``.
- ``macs = sum_i k_i * p_i``; ``params = sum_i k_i * (p_i + c_i)``; ``nonzero_params`` counts
  ``p_i * (1 - a_i)`` weights and ``k_i * c_i`` biases; ``fp32_params = sum_i (p_i + c_i)``;
  ``sparsity = sum_i a_i * p_i / P``, of which ``removed_fraction`` sums the structured layers
  and ``zero_fraction`` the unstructured ones; ``channels_removed = sum_i (1 - k_i) * c_i``.
  Byte counts, parameter counts, MACs and channels are rounded to whole numbers, as a real trial
  reports them.
- ``fp32_size_bytes = 1024 + sum_i [64 + 4 * (p_i + c_i)]`` (the float model's file);
  ``fp32_compressed_bytes = 0.9 * fp32_size_bytes``.

Epochs, learning rate, backend and calibration batches do not change any metric. Every metric is
a constant plus a sum of per-layer terms, which is what makes the exact front cheap to compute.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
from torch import nn

from trials._recipe import GRANULARITIES, ORDERS, LayerSpec, Recipe

WIDTHS = (16, 24, 32, 48, 64, 96, 128)
TOLERANCE = (0.35, 0.95)
DROP_AT_TOLERANCE = 0.02
FP32_ACCURACY = 0.95
# Metrics that count things: whole numbers, like a real trial's.
_COUNTS = (
    "size_bytes",
    "compressed_bytes",
    "fp32_size_bytes",
    "fp32_compressed_bytes",
    "params",
    "nonzero_params",
    "fp32_params",
    "macs",
    "channels_removed",
)
STRUCTURED_DAMAGE = 2.5
QUANT_PENALTY = {"per_tensor": 0.012, "per_channel": 0.003, "none": 0.0}
FLOAT = "prune_float"
ORDER_PENALTY = {"prune_ptq": 0.004, "prune_qat": 0.001, "prune_dynamic": 0.003, "prune_float": 0.0}
WEIGHT_BYTES = {"per_tensor": 1.0, "per_channel": 1.0, "none": 4.0}
NS_PER_MAC = {"per_tensor": 0.4, "per_channel": 0.42, "none": 1.0}
FP32_NS_PER_MAC = 1.0
LATENCY_BATCH = 32
LAYER_OVERHEAD_MS = 0.02
FILE_BYTES, TENSOR_BYTES = 1024.0, 64.0
QPARAM_BYTES = 16.0
KEPT_BYTES, ZERO_BYTES, QPARAM_RATIO = 0.9, 0.05, 0.6
# Objectives that true_front knows, and their direction; every one is a sum of per-layer terms.
FRONT_METRICS = {
    "accuracy": "max",
    "accuracy_drop": "min",
    "compressed_bytes": "min",
    "size_bytes": "min",
    "latency_ms": "min",
    "speedup": "max",
    "macs": "min",
    "params": "min",
    "nonzero_params": "min",
    "sparsity": "max",
}


_UNPRUNED = LayerSpec()


@dataclass(frozen=True)
class FrontPoint:
    """One point of the true front: the recipe and every metric it gets."""

    recipe: Recipe
    metrics: dict[str, float]


def _layer_terms(
    p: float, c: float, s: float, amount: float, method: str, granularity: str
) -> dict[str, float]:
    """One layer's additive contribution to each metric (``loss`` is its accuracy cost)."""
    structured = method == "structured"
    keep = 1.0 - amount if structured else 1.0
    channels = keep * c
    qparams = {"per_tensor": QPARAM_BYTES, "per_channel": QPARAM_BYTES * channels, "none": 0.0}[
        granularity
    ]
    if structured:
        stored = KEPT_BYTES * (1.0 - amount)
        slowdown = 1.0 - amount
    else:
        stored = KEPT_BYTES * (1.0 - amount) + ZERO_BYTES * amount
        slowdown = 1.0 - 0.6 * amount
    weight_bytes = WEIGHT_BYTES[granularity]
    return {
        "loss": s * (STRUCTURED_DAMAGE if structured else 1.0) * amount**4,
        "quant_loss": QUANT_PENALTY[granularity],  # weighted by p / P by the caller
        "size_bytes": TENSOR_BYTES + weight_bytes * keep * p + 4.0 * channels + qparams,
        "compressed_bytes": TENSOR_BYTES / 2
        + weight_bytes * p * stored
        + 4.0 * KEPT_BYTES * channels
        + QPARAM_RATIO * qparams,
        "latency_ms": LAYER_OVERHEAD_MS
        + LATENCY_BATCH * p * NS_PER_MAC[granularity] * slowdown * 1e-6,
        "macs": keep * p,
        "params": keep * (p + c),
        "nonzero_params": p * (1.0 - amount) + channels,
        "pruned": amount * p,
        "removed": amount * p if structured else 0.0,
        "channels_removed": c - channels,
    }


class SyntheticTask:
    """An :class:`trials.AnalyticTask`: see the module docstring for every formula."""

    name = "synthetic"

    def __init__(self, n_layers: int = 12, trial_seconds: float = 0.0, seed: int = 0) -> None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= 1000:
            raise ValueError(f"n_layers: {n_layers!r} must be an integer in [1, 1000]")
        if not isinstance(trial_seconds, int | float) or not 0 <= trial_seconds < 86400:
            raise ValueError(f"trial_seconds: {trial_seconds!r} must be a number of seconds >= 0")
        self.n_layers, self.trial_seconds, self.seed = n_layers, float(trial_seconds), seed
        rng = np.random.default_rng(seed)
        widths = rng.choice(WIDTHS, size=n_layers + 1)
        self.layer_names = [f"layer{i:02d}" for i in range(n_layers)]
        self.widths = [int(w) for w in widths]
        self.weights = [float(widths[i] * widths[i + 1]) for i in range(n_layers)]  # p_i
        self.channels = [float(widths[i + 1]) for i in range(n_layers)]  # c_i
        self.tolerances = [float(t) for t in rng.uniform(*TOLERANCE, size=n_layers)]
        self.sensitivities = [DROP_AT_TOLERANCE / t**4 for t in self.tolerances]  # s_i
        self._total_weights = sum(self.weights)

    def build_model(self) -> nn.Module:
        """An untrained chain of Linear layers named ``layer00``, ``layer01``, ... (names only)."""
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        for i, name in enumerate(self.layer_names):
            modules[name] = nn.Linear(self.widths[i], self.widths[i + 1])
            if i < self.n_layers - 1:
                modules[f"relu{i:02d}"] = nn.ReLU()
        return nn.Sequential(modules)

    # -- metrics -----------------------------------------------------------------------------------
    def _terms(self, index: int, spec: LayerSpec, granularity: str) -> dict[str, float]:
        terms = _layer_terms(
            self.weights[index],
            self.channels[index],
            self.sensitivities[index],
            spec.amount,
            spec.method,
            granularity,
        )
        terms["loss"] += self.weights[index] / self._total_weights * terms.pop("quant_loss")
        return terms

    def analytic_metrics(self, recipe: Recipe) -> dict[str, float]:
        """Every metric a real trial records, from the closed forms in the module docstring."""
        recipe.check_layers(self.layer_names)
        totals: dict[str, float] = {}
        for index, name in enumerate(self.layer_names):
            spec = recipe.layers.get(name, _UNPRUNED)
            granularity = spec.granularity or recipe.granularity
            terms = self._terms(index, spec, "none" if recipe.order == FLOAT else granularity)
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value
        return self._finish(totals, recipe.order)

    def _finish(self, totals: Mapping[str, float], order: str) -> dict[str, float]:
        """Metrics from the per-layer sums and the recipe's global order."""
        p, c = self._total_weights, sum(self.channels)
        accuracy = min(max(FP32_ACCURACY - totals["loss"] - ORDER_PENALTY[order], 0.0), 1.0)
        fp32_size = FILE_BYTES + self.n_layers * TENSOR_BYTES + 4.0 * (p + c)
        fp32_latency = sum(
            LAYER_OVERHEAD_MS + LATENCY_BATCH * w * FP32_NS_PER_MAC * 1e-6 for w in self.weights
        )
        latency = totals["latency_ms"]
        metrics = {
            "accuracy": accuracy,
            "fp32_accuracy": FP32_ACCURACY,
            "accuracy_drop": FP32_ACCURACY - accuracy,
            "size_bytes": FILE_BYTES + totals["size_bytes"],
            "compressed_bytes": FILE_BYTES / 2 + totals["compressed_bytes"],
            "fp32_size_bytes": fp32_size,
            "fp32_compressed_bytes": KEPT_BYTES * fp32_size,
            "latency_ms": latency,
            "fp32_latency_ms": fp32_latency,
            "speedup": fp32_latency / latency,
            "sparsity": totals["pruned"] / p,
            "zero_fraction": (totals["pruned"] - totals["removed"]) / p,
            "removed_fraction": totals["removed"] / p,
            "params": totals["params"],
            "nonzero_params": totals["nonzero_params"],
            "fp32_params": p + c,
            "macs": totals["macs"],
            "channels_removed": totals["channels_removed"],
        }
        for name in _COUNTS:
            metrics[name] = float(round(metrics[name]))
        return metrics

    # -- the exact front ---------------------------------------------------------------------------
    def true_front(
        self,
        objectives: Mapping[str, str],
        *,
        amounts: Sequence[float] | None = None,
        methods: Sequence[str] = ("unstructured",),
        granularities: Sequence[str] = GRANULARITIES,
        orders: Sequence[str] = ORDERS,
        per_layer_granularity: bool = False,
    ) -> list[FrontPoint]:
        """The exact Pareto front of two objectives over the recipes of a discrete space.

        The space: every layer takes any amount of ``amounts`` (default 0, 0.05, ..., 0.95) and
        any method of ``methods``; the granularity is one of ``granularities`` for all layers (or
        per layer with ``per_layer_granularity``); the order is one of ``orders``. "True" means
        exact on that grid: no recipe of the space is better on both objectives than some point
        returned (up to float rounding), and every point returned is a recipe of the space.
        ``objectives`` maps two names of :data:`FRONT_METRICS` to ``"min"``/``"max"``; one of them
        must be ``accuracy`` or ``accuracy_drop``.

        How: both objectives are a constant plus a sum of per-layer terms, so for each global
        choice (order, and granularity unless per layer) the front is built layer by layer,
        keeping only the non-dominated partial sums (a partial sum that is dominated cannot lead
        to a point on the front); the fronts of the global choices are merged and filtered. Cost:
        about (front size) x (options per layer) x (layers), a fraction of a second by default.
        Returns the points sorted by the non-accuracy objective, best first.
        """
        accuracy_key, cost_key = self._check_objectives(objectives)
        grid = (
            [round(float(a), 10) for a in np.arange(0.0, 0.951, 0.05)]
            if amounts is None
            else [float(a) for a in amounts]
        )
        global_grans: Sequence[str | None] = [None] if per_layer_granularity else granularities
        sign = 1.0 if FRONT_METRICS[cost_key] == "min" else -1.0
        metric = {"speedup": "latency_ms", "sparsity": "pruned"}.get(cost_key, cost_key)
        offset = {"size_bytes": FILE_BYTES, "compressed_bytes": FILE_BYTES / 2}.get(metric, 0.0)
        candidates: list[tuple[str, str | None, list[LayerSpec], np.ndarray, np.ndarray]] = []
        # A float recipe's granularity changes nothing: one of them is enough.
        pairs = [
            (o, g) for o, g in product(orders, global_grans) if o != FLOAT or g is global_grans[0]
        ]
        for order, global_gran in pairs:
            # Options carry their granularity for the per-layer terms; with a global one, the
            # recipe's specs leave it to Recipe.granularity. A float recipe quantizes nothing.
            grans = ["none"] if order == FLOAT else [global_gran] if global_gran else granularities
            options = [LayerSpec(a, m, g) for a, m, g in product(grid, methods, grans)]
            specs = [LayerSpec(o.amount, o.method) for o in options] if global_gran else options
            choices, cost, loss = self._front_by_layer(options, sign, metric)
            accuracy = np.clip(FP32_ACCURACY - loss - ORDER_PENALTY[order], 0.0, 1.0)
            cost = cost + sign * offset
            candidates.extend(
                (order, global_gran, [specs[k] for k in c], x, -y)
                for c, x, y in zip(choices, cost, accuracy, strict=True)
            )
        keep = _non_dominated_2d(
            np.array([c[3] for c in candidates]), np.array([c[4] for c in candidates])
        )
        points: list[FrontPoint] = []
        for order, global_gran, chosen, _, _ in (candidates[i] for i in keep):
            recipe = Recipe(
                layers=dict(zip(self.layer_names, chosen, strict=True)),
                order=order,
                granularity=global_gran or "per_tensor",
            )
            points.append(FrontPoint(recipe, self.analytic_metrics(recipe)))
        return _pareto(points, accuracy_key, cost_key)  # the same points, from the real metrics

    def _check_objectives(self, objectives: Mapping[str, str]) -> tuple[str, str]:
        names = list(objectives)
        accuracy = [n for n in names if n in ("accuracy", "accuracy_drop")]
        if len(names) != 2 or len(accuracy) != 1:
            raise ValueError(
                "objectives: true_front takes two objectives, one of them accuracy or "
                f"accuracy_drop (got {', '.join(names) or 'none'})"
            )
        for name, direction in objectives.items():
            if FRONT_METRICS.get(name) != direction:
                known = ", ".join(f"{k}: {v}" for k, v in FRONT_METRICS.items())
                raise ValueError(f"objectives.{name}: {direction!r} is not supported ({known})")
        cost = next(n for n in names if n not in accuracy)
        return accuracy[0], cost

    def _front_by_layer(
        self, options: Sequence[LayerSpec], sign: float, metric: str
    ) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
        """Every non-dominated (signed cost, accuracy loss) sum over the layers' options: the
        option index chosen for each layer, and the two sums."""
        cost = np.zeros(1)
        loss = np.zeros(1)
        parents: list[np.ndarray] = []
        picks: list[np.ndarray] = []
        for index in range(self.n_layers):
            terms = [self._terms(index, spec, spec.granularity or "") for spec in options]
            option_cost = sign * np.array([t[metric] for t in terms])
            option_loss = np.array([t["loss"] for t in terms])
            all_cost = (cost[:, None] + option_cost[None, :]).ravel()
            all_loss = (loss[:, None] + option_loss[None, :]).ravel()
            keep = _non_dominated_2d(all_cost, all_loss)
            parents.append(keep // len(options))
            picks.append(keep % len(options))
            cost, loss = all_cost[keep], all_loss[keep]
        choices: list[tuple[int, ...]] = []
        for end in range(len(cost)):
            path, at = [], end
            for index in reversed(range(self.n_layers)):
                path.append(int(picks[index][at]))
                at = int(parents[index][at])
            choices.append(tuple(reversed(path)))
        return choices, cost, loss


def _non_dominated_2d(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points that no other point beats on both (minimized) coordinates."""
    order = np.lexsort((loss, cost))  # by cost, then loss
    best_before = np.minimum.accumulate(loss[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = loss[order][1:] < best_before[:-1]
    return order[keep]


def _pareto(points: list[FrontPoint], accuracy_key: str, cost_key: str) -> list[FrontPoint]:
    """Non-dominated points under the two objectives, sorted by the cost objective, best first."""

    def minimized(key: str) -> np.ndarray:
        sign = 1.0 if FRONT_METRICS[key] == "min" else -1.0
        return np.array([sign * p.metrics[key] for p in points])

    keep = _non_dominated_2d(minimized(cost_key), minimized(accuracy_key))
    return [points[i] for i in keep]
