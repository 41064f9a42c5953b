"""The layerwise sampler's per-layer models (see :mod:`sweep._layerwise`): encoded trials, the
fits, and what a fitted model predicts and costs per layer.

Sized for deep models: at 300 layer groups and 1,000 trials an ask used to fit 20 non-negative
least squares problems of 800 x 300 from scratch, about 0.8 s of CPU, most of it here. Now the
bootstrap's repeated rows are weights (one row each); the ridge-regularized problems are solved
in their normal-equations form (same minimizer) by block principal pivoting, started from the
support of the same shape's last solution, which the next bootstrap sample changes little (a
few solves instead of hundreds of active-set steps); and where fitting every exponent and
structured factor at every ask costs too much, a few are compared per ask (:class:`ShapeSearch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from threadpoolctl import ThreadpoolController

from sweep._cholesky import cholesky, cholesky_solve
from sweep._layerwise_units import coupled_units
from sweep._space import AMOUNT_PREFIX, METHOD_PARAM, METHOD_PREFIX, UNSTRUCTURED, Space
from trials import deployed_form

EXPONENTS = (1.5, 2.0, 3.0, 4.0, 6.0)  # g: how convex a layer's accuracy cost is in its amount
STRUCTURED_FACTORS = (1.0, 1.25, 1.6, 2.0)  # k: structured pruning costs as a k-times amount
SHAPES = tuple((e, f) for e in EXPONENTS for f in STRUCTURED_FACTORS)
CONVEX_RIDGE = 1e-4  # convex models: on the objective less its best value
PIVOTS = 50  # block principal pivoting steps before falling back to scipy's NNLS
# Work (rows x features^2 multiply-adds, the normal equations' cost) of the convex fits of one
# ask: every shape while that fits (to about 100 layer groups at 1,000 trials), else the kept
# shape and challengers as the rest allows (at 300 groups and 1,000 trials, one every other ask:
# about 7 ms of CPU an ask), and at least one every CHALLENGE_EVERY asks.
SHAPE_WORK = 4.8e7
CHALLENGE_EVERY = 4
STRUCTURED = "structured"
FIT_FRACTION = 0.5  # accuracy-like objectives are fitted on this best fraction of the trials

_threads: ThreadpoolController | None = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread: the sampler's matrices (hundreds wide) gain nothing from more, and the
    driver shares its machine with the trials; on 2 busy cores, OpenBLAS's second thread made a
    300 x 300 solve 70 times slower (2 ms against 140). The limit is process-wide while it
    holds: the driver's process runs no other numerical work (trials run in Ray workers)."""
    global _threads
    if _threads is None:  # finding the BLAS libraries takes milliseconds: once per process
        _threads = ThreadpoolController()
    with _threads.limit(limits=1, user_api="blas"):
        yield


Row = tuple[np.ndarray, np.ndarray, int]  # one trial's amounts, structured flags and combo


class Codec:
    """A recipe's Optuna parameters <-> its row, over the layer groups of ``space`` (tied
    layers are one): amounts (``low`` where a group's is not searched), structured flags and
    the (order, granularity) index. Tied layers share an amount but each has its own method
    parameter: a group's layers take one method, read from (and written to) every member that
    has the choice."""

    def __init__(self, space: Space) -> None:
        self.groups = list(dict.fromkeys(space.owners.values()))
        self.members = {
            group: [name for name in space.layers if space.owners[name] == group]
            for group in self.groups
        }
        self.can_structure = np.array(
            [any(len(space.methods_of(n)) > 1 for n in self.members[g]) for g in self.groups]
        )
        self.global_method = space.global_method()
        self.orders = list(space.orders)
        self.granularities = list(space.search.granularities)
        self.n_combos = len(self.orders) * len(self.granularities)
        # Each combo's deployed form (trials.deployed_form): prune_ptq and prune_qat at one
        # granularity load as the same graph, so their size and latency share one base.
        forms = [deployed_form(o, g) for o in self.orders for g in self.granularities]
        self.form = np.array([list(dict.fromkeys(forms)).index(name) for name in forms])
        self.distributions = space.distributions()
        self.units = coupled_units(space, self.groups, self.can_structure)
        self._space = space
        low, high, self.step = space.base_grid()
        self.grid = np.round(low + self.step * np.arange(round((high - low) / self.step) + 1), 6)
        self.low = float(self.grid[0])  # a group's amount where it is not searched
        # Each group's removed share at each grid amount (rows: groups): what a structured
        # recipe's row is modeled by.
        self.removed = np.array([[self._removed(g, a) for a in self.grid] for g in self.groups])

    def _removed(self, group: str, amount: float) -> float:
        """The share of ``group``'s channels that structured pruning by ``amount`` removes
        (:meth:`sweep._space.Space.removed_share`; tied layers: weighted by their weights)."""
        members = self.members[group]
        weights = np.array([max(1, self._space.layer_params.get(n, 0)) for n in members], float)
        shares = [self._space.removed_share(n, amount) for n in members]
        return float(weights @ shares / weights.sum())

    def effective(self, encoded: Encoded) -> Encoded:
        """``encoded`` with each structured amount replaced by the share it removes."""
        amounts = encoded.amounts
        index = np.rint((amounts - self.grid[0]) / self.step).astype(int)
        on_grid = (index >= 0) & (index < len(self.grid))
        index = np.clip(index, 0, len(self.grid) - 1)
        # np.isclose(..., atol=1e-9) written out: its own checks cost more than all the rest.
        on_grid &= np.abs(self.grid[index] - amounts) <= 1e-9 + 1e-5 * np.abs(amounts)
        rows = np.arange(amounts.shape[1])[None, :]
        shares = np.where(on_grid, self.removed[rows, index], amounts)
        structured = encoded.structured > 0
        for i, j in zip(*np.nonzero(structured & ~on_grid), strict=True):  # a re-run recipe's
            shares[i, j] = self._removed(self.groups[j], float(amounts[i, j]))
        return Encoded(np.where(structured, shares, amounts), encoded.structured, encoded.combo)

    def row(self, values: dict[str, Any]) -> Row:
        """One recipe's amounts, structured flags and (order, granularity) index."""
        amounts, structured = [], []
        for col, group in enumerate(self.groups):
            amounts.append(float(values.get(AMOUNT_PREFIX + group, self.low)))
            methods = (
                [values.get(METHOD_PARAM)]
                if self.global_method
                else [values.get(METHOD_PREFIX + name) for name in self.members[group]]
            )
            structured.append(bool(self.can_structure[col]) and STRUCTURED in methods)
        order = self.orders.index(values["order"])
        combo = order * len(self.granularities) + self.granularities.index(values["granularity"])
        coupled_amounts, coupled = self.couple(np.array(amounts), np.array(structured, dtype=float))
        return coupled_amounts, coupled, combo

    def couple(self, amounts: np.ndarray, structured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A row as structured pruning applies it: every group of a coupled unit
        (:mod:`sweep._layerwise_units`) with a structured member is structured, by the largest
        amount a structured member asks for. (What an unstructured member's own amount adds on
        the weights that remain is not modeled; the sampler asks no such recipe.)"""
        amounts, structured = amounts.copy(), structured.copy()
        for unit in self.units:
            on = structured[unit] > 0
            if on.any():
                amounts[unit] = amounts[unit][on].max()
                structured[unit] = 1.0
        return amounts, structured

    def decode(self, amounts: np.ndarray, structured: np.ndarray, combo: int) -> dict[str, Any]:
        """The parameters of a row (with one method for all layers: the majority's)."""
        order, granularity = divmod(combo, len(self.granularities))
        params: dict[str, Any] = {
            "order": self.orders[order],
            "granularity": self.granularities[granularity],
        }
        global_votes = 0
        for col, group in enumerate(self.groups):
            if AMOUNT_PREFIX + group in self.distributions:
                params[AMOUNT_PREFIX + group] = round(float(amounts[col]), 6)
            for name in self.members[group]:
                if METHOD_PREFIX + name in self.distributions:
                    params[METHOD_PREFIX + name] = STRUCTURED if structured[col] else UNSTRUCTURED
            global_votes += int(structured[col]) - int(not structured[col])
        if METHOD_PARAM in self.distributions:  # method_scope global: the majority's method
            params[METHOD_PARAM] = STRUCTURED if global_votes > 0 else UNSTRUCTURED
        return params


@dataclass(frozen=True)
class Encoded:
    """Trials as arrays: amounts and structured flags per layer group, (order, granularity)."""

    amounts: np.ndarray  # (n, groups)
    structured: np.ndarray  # (n, groups), 0/1
    combo: np.ndarray  # (n,) index into orders x granularities

    @classmethod
    def of(cls, rows: Sequence[Row], groups: int) -> Encoded:
        shape = (len(rows), groups)
        return cls(
            np.array([row[0] for row in rows], dtype=float).reshape(shape),
            np.array([row[1] for row in rows], dtype=float).reshape(shape),
            np.array([row[2] for row in rows], dtype=int),
        )

    def extended(self, other: Encoded) -> Encoded:
        return Encoded(
            np.vstack([self.amounts, other.amounts]),
            np.vstack([self.structured, other.structured]),
            np.concatenate([self.combo, other.combo]),
        )

    def take(self, rows: np.ndarray) -> Encoded:
        return Encoded(self.amounts[rows], self.structured[rows], self.combo[rows])


@dataclass(frozen=True)
class Fit:
    """One objective's fitted model (minimized form)."""

    base: np.ndarray  # per (order, granularity)
    weight: np.ndarray  # convex: w per group; linear: slope per group (unstructured)
    structured_slope: np.ndarray  # linear only: slope per group when structured
    exponent: float = 1.0  # convex only
    factor: float = 1.0  # convex only: structured as a factor-times amount

    def layer_costs(self, amounts: np.ndarray, structured: bool) -> np.ndarray:
        """(groups, k): each group's cost at each of ``amounts``, by one method; ``amounts``:
        (k,), the same for every group, or (groups, k)."""
        amounts = np.broadcast_to(amounts, (len(self.weight), amounts.shape[-1]))
        if self.exponent == 1.0:
            slope = self.structured_slope if structured else self.weight
            return slope[:, None] * amounts
        scale = self.factor if structured else 1.0
        return self.weight[:, None] * (scale * amounts) ** self.exponent

    def predict(self, encoded: Encoded) -> np.ndarray:
        structured = encoded.structured > 0
        if self.exponent == 1.0:
            slope = np.where(structured, self.structured_slope, self.weight)
            per_group = slope * encoded.amounts
        else:
            scale = np.where(structured, self.factor, 1.0)
            per_group = self.weight * (scale * encoded.amounts) ** self.exponent
        return self.base[encoded.combo] + per_group.sum(axis=1)

    def with_unseen_bases(
        self, encoded: Encoded, y: np.ndarray, sample: Sample, pick: Callable[[np.ndarray], Any]
    ) -> Fit:
        """This fit with the base of each combo that no row of ``sample`` ran taken from the
        trials that ran it (``encoded``, ``y``: every modeled trial): ``pick`` of their values
        less the model's per-group costs, over those whose costs are within what the fit saw
        (else the one of least costs). Fitted on the better trials, an order absent from them
        for being worse had a base of 0 there, the best value, and was asked again and again;
        and past the fitted range the costs overshoot where the accuracy has collapsed (its
        drop stops at chance), which made such an order's base negative. A combo that no trial
        ran keeps its base: untried, it may be good."""
        costs = self.predict(encoded) - self.base[encoded.combo]
        seen = float(costs[sample.rows].max(initial=0.0))
        ran = np.isin(np.arange(len(self.base)), encoded.combo[sample.rows])
        base = self.base.copy()
        for combo in np.flatnonzero(~ran):
            mine = np.flatnonzero(encoded.combo == combo)
            if not mine.size:
                continue
            within = mine[costs[mine] <= seen]
            used = within if within.size else mine[[np.argmin(costs[mine])]]
            base[combo] = float(pick(y[used] - costs[used]))
        return replace(self, base=base)


@dataclass(frozen=True)
class Sample:
    """The bootstrap resample of the trials a model is fitted on: distinct rows and how many
    times each was drawn (a row drawn k times weighs k in the least squares)."""

    rows: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, drawn: np.ndarray) -> Sample:
        rows, counts = np.unique(drawn, return_counts=True)
        return cls(rows, counts.astype(float))


def _gram(rows: np.ndarray, ridge: float) -> np.ndarray:
    """rows^T rows + ridge * I (numpy computes ``x.T @ x`` as a symmetric rank-k update)."""
    return rows.T @ rows + ridge * np.eye(rows.shape[1])


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """gram^-1 rhs for a symmetric positive definite gram (ridge-regularized: it always is)."""
    return cholesky_solve(cholesky(gram), rhs)


def nnls_gram(
    gram: np.ndarray, rhs: np.ndarray, passive: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """argmin 1/2 x^T gram x - rhs^T x over x >= 0 (gram positive definite), and its support.

    Block principal pivoting (Kim and Park, SIAM J. Sci. Comput. 33(6), 2011) from the support
    ``passive``: solve on the support, then move every variable that breaks the optimality
    conditions (negative on the support, negative gradient off it) across at once, with Murty's
    one-at-a-time rule as the backup that makes it finish. From a nearby solution's support it
    takes a few solves. Past :data:`PIVOTS` steps, scipy's NNLS (Lawson-Hanson) solves it.
    """
    n = len(rhs)
    support = np.zeros(n, dtype=bool) if passive is None else passive.copy()
    tolerance = 1e-12 * max(1.0, float(np.abs(rhs).max(initial=0.0)))
    fewest, backup = n + 1, 3
    for _ in range(PIVOTS):
        x = np.zeros(n)
        on = np.flatnonzero(support)
        if on.size:
            x[on] = _solve(gram[np.ix_(on, on)], rhs[on])
        gradient = gram @ x - rhs
        wrong = np.where(support, x < -tolerance, gradient < -tolerance)
        count = int(wrong.sum())
        if count == 0:
            return np.maximum(x, 0.0), support
        if count < fewest:
            fewest, backup = count, 3
            support ^= wrong
        elif backup > 0:
            backup -= 1
            support ^= wrong
        else:
            support[np.flatnonzero(wrong)[-1]] ^= True
    lower = np.linalg.cholesky(gram)
    x, _ = nnls(lower.T, solve_triangular(lower, rhs, lower=True), maxiter=50 * n)
    return x, x > 0


def fit_convex(
    encoded: Encoded,
    one_hot: np.ndarray,
    y: np.ndarray,
    sample: Sample,
    shape: tuple[float, float],
    passive: np.ndarray | None = None,
) -> tuple[float, Fit, np.ndarray]:
    """The convex model of exponent and structured factor ``shape``, by non-negative ridge least
    squares on ``sample`` (``passive``: a support to start from), its mean squared error there,
    and its support."""
    exponent, factor = shape
    rows, counts = sample.rows, sample.counts
    scale = np.where(encoded.structured[rows] > 0, factor, 1.0)
    cost = (scale * encoded.amounts[rows]) ** exponent
    # Bases may take either sign: one non-negative column for each sign.
    features = np.hstack([one_hot[rows], -one_hot[rows], cost])
    root = np.sqrt(counts)[:, None]
    gram = _gram(root * features, CONVEX_RIDGE)
    coef, support = nnls_gram(gram, features.T @ (counts * y[rows]), passive)
    error = float(counts @ (features @ coef - y[rows]) ** 2 / counts.sum())
    combos = one_hot.shape[1]
    base = coef[:combos] - coef[combos : 2 * combos]
    unused = np.zeros(encoded.amounts.shape[1])
    return error, Fit(base, coef[2 * combos :], unused, exponent, factor), support


def ridge_solve(features: np.ndarray, target: np.ndarray, strength: float) -> np.ndarray:
    """argmin ||features x - target||^2 + strength ||x||^2, from whichever normal equations are
    smaller: with fewer rows than features (deep models), the same solution as
    X^T (X X^T + r I)^-1 y = (X^T X + r I)^-1 X^T y."""
    if features.shape[0] < features.shape[1]:
        return features.T @ _solve(_gram(features.T, strength), target)
    return _solve(_gram(features, strength), features.T @ target)


class ShapeSearch:
    """The exponent and structured factor (the shape) of one objective's convex model.

    An ask fits every shape of :data:`SHAPES` and keeps the one of least error, as long as that
    fits in :data:`SHAPE_WORK`. Past it (deep models, many trials), it fits the shape kept at the
    last ask, and challengers, the next ones in a cycle over the others, as the rest of the work
    allows (a fraction of one carries over to the next ask), on the same bootstrap sample, and
    keeps the best: every shape is still compared with the kept one now and then. (A challenger
    or two at every ask, whatever the size, made small searches worse: the best shape changes
    from ask to ask while the trials are few, and they are cheap to fit.)"""

    def __init__(self) -> None:
        self._kept: tuple[float, float] | None = None
        self._next = 0
        self._credit = 0.0  # challengers' work saved up, in fits
        self._support: dict[tuple[float, float], np.ndarray] = {}  # each shape's last

    def shapes(self, rows: int, features: int) -> list[tuple[float, float]]:
        """The shapes to fit on ``rows`` distinct rows of ``features`` features."""
        fits = SHAPE_WORK / max(1, rows * features**2)
        if self._kept is None or fits >= len(SHAPES):
            return list(SHAPES)
        self._credit += max(fits - 1.0, 1.0 / CHALLENGE_EVERY)
        count = int(self._credit + 1e-9)
        self._credit -= count
        others = [shape for shape in SHAPES if shape != self._kept]
        start, self._next = self._next, self._next + count
        return [self._kept] + [others[(start + k) % len(others)] for k in range(count)]

    def fit(self, encoded: Encoded, one_hot: np.ndarray, y: np.ndarray, sample: Sample) -> Fit:
        features = 2 * one_hot.shape[1] + encoded.amounts.shape[1]
        tried = []
        for shape in self.shapes(len(sample.rows), features):
            error, fit, support = fit_convex(
                encoded, one_hot, y, sample, shape, self._support.get(shape)
            )
            self._support[shape] = support
            tried.append((error, fit))
        best = min(tried, key=lambda scored: scored[0])[1]
        self._kept = (best.exponent, best.factor)
        return best


def better_trials(loss: np.ndarray) -> np.ndarray:
    """The trials an accuracy-like model is fitted on: the better FIT_FRACTION, or those above
    the floor where that reaches it. In a deep model most first trials can be on the floor (at
    100 layers of ``synthetic``, every uniform level from 0.3 up): fitted on it, the model
    proposed nothing else for the rest of the sweep (scripts/bench_depth.py)."""
    kept = loss <= np.quantile(loss, FIT_FRACTION)
    above = loss < loss.max()
    return above if kept.all() and above.sum() >= 2 else kept
