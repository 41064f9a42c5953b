"""The layerwise sampler's model of a minimized objective (size, latency): linear in each layer
group's amount, per method, with shrinkage chosen from the data.

A deep model has more layer groups than a sweep has trials to tell them apart: ``resnet`` at the
benchmark's size has 37 groups, so 74 per-group slopes, fitted from 34 trials on. Fitted by least
squares with a token ridge (what this module replaces), the slopes interpolated the trials and
their measurement noise. On ``tpe``'s trials of ``resnet`` (scripts/bench_search.py), 5-fold
cross-validated, that size model was off by 71 KB at 54 trials (the sizes' spread: 77 KB) and by
27 KB at 102; its latency model by 1.5 ms at 54 trials and 1.3 ms at 102, where the latencies
spread 0.45 and 0.78 ms, nearly all of it noise (another trial trains on the other core). A
model that promised nothing for structured pruning, or all of it for one random layer, did not
lead the sampler to the heavily structured recipes that make ``resnet`` small.

So each slope is a shared part plus the group's own deviation (a hierarchical prior, the mixed
model of empirical-Bayes ridge): the shared part is four pooled features, per method the amounts
summed weighted by each group's share of the weights and averaged over the groups (a removed
weight's and a removed layer's effect); the deviations are penalized by a ridge, and the pooled
features by a lighter one, both chosen by leave-one-out cross-validation on the trials. Where the
trials cannot tell layers apart, the deviations shrink to zero and the model is the pooled one;
where they can (``synthetic``'s exact sums, many trials), the ridge is small and each group has
its own slope; where the objective is noise, the pooled slopes shrink too. On the same trials:
size off by 15 KB at 54 trials and 14 KB at 102, latency by 0.48 and 0.80 ms, what the noise
leaves.

The (order, granularity) bases are not penalized: they are projected out before the ridge is
solved, then fitted to what it leaves (a combo the sample has no trial of takes their mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweep._layerwise_model import Encoded, Fit, Sample, ridge_solve

# Ridge strengths leave-one-out chooses among, as multiples of the mean eigenvalue of the
# deviations' Gram matrix: from nearly none (each group on its own) to nearly total (the pooled
# model).
TAUS = np.logspace(-4.0, 4.0, 17)
# The shared columns' prior scale against one group's own (their ridge is the strength divided by
# its square), chosen with the strength: large where the groups' shared effect is clear (a
# pooled slope from 40 trials of 30 groups, tests/sweep/test_layerwise_linear.py), small where
# the objective is noise (latency measured beside another trial's training).
POOL_SCALES = (10.0, 100.0, 1000.0)
# The shrinkage is chosen on at most this many trials, evenly spread over the sweep's: its
# eigendecompositions grow with the cube of the rows (at 300 layer groups and 1,000 trials, 0.9 s
# of CPU on all of them, 0.1 s on 400), and the choice, relative to the Gram matrix's scale,
# moves little with more.
SELECT_ROWS = 400
# The shrinkage is chosen again once the trials have grown by this share: its eigendecomposition
# costs as much as tens of fits, and the choice moves little from one trial to the next.
RESELECT_GROWTH = 0.25


@dataclass(frozen=True)
class Shrinkage:
    strength: float  # the ridge on each group's own slopes
    pool: float  # the shared slopes' scale: their ridge is strength / pool**2


def pooled(encoded: Encoded, shares: np.ndarray) -> np.ndarray:
    """(n, 4): per method (unstructured, structured), the amounts summed by weight share and
    averaged over the groups."""
    amounts, structured = encoded.amounts, encoded.structured
    loose, removed = amounts * (1 - structured), amounts * structured
    count = max(1, amounts.shape[1])
    return np.stack(
        [loose @ shares, removed @ shares, loose.sum(1) / count, removed.sum(1) / count], axis=1
    )


def deviations(encoded: Encoded) -> np.ndarray:
    """(n, 2 * groups): each group's amount, unstructured then structured."""
    amounts, structured = encoded.amounts, encoded.structured
    return np.hstack([amounts * (1 - structured), amounts * structured])


def _basis(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the span of ``columns`` (a combo without trials adds nothing)."""
    left, singular, _ = np.linalg.svd(columns, full_matrices=False)
    return left[:, singular > 1e-10 * max(1.0, float(singular.max(initial=0.0)))]


def _outside(basis: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` less their projection on the span of ``basis``."""
    return values - basis @ (basis.T @ values)


def _loo_scores(
    basis: np.ndarray, free: np.ndarray, y: np.ndarray, strengths: np.ndarray
) -> np.ndarray:
    """The leave-one-out mean squared error of the ridge fit of ``y`` on ``free`` at each of
    ``strengths``, the span of ``basis`` unpenalized: in closed form from one
    eigendecomposition, each row's residual over one less its leverage (as scikit-learn's
    ``RidgeCV`` computes it). Rows that the basis fits alone (alone in their combo) do not
    score."""
    centred, target = _outside(basis, free), _outside(basis, y)
    # The left singular vectors of centred and their eigenvalues, from the smaller Gram matrix.
    if centred.shape[0] <= centred.shape[1]:
        eigen, left = np.linalg.eigh(centred @ centred.T)
    else:
        eigen, right = np.linalg.eigh(centred.T @ centred)
        left = centred @ right
    keep = eigen > 1e-10 * max(1.0, float(eigen.max(initial=0.0)))
    eigen, left = eigen[keep], left[:, keep]
    left = left / np.linalg.norm(left, axis=0)
    along = left.T @ target
    fixed_leverage = (basis**2).sum(axis=1)
    scored = fixed_leverage < 1.0 - 1e-9
    scores = np.zeros(len(strengths))
    for k, strength in enumerate(strengths):
        kept = eigen / (eigen + strength)
        residual = target - left @ (kept * along)
        leverage = fixed_leverage + (left**2) @ kept
        loo = residual[scored] / np.maximum(1.0 - leverage[scored], 1e-9)
        scores[k] = float(np.mean(loo**2)) if loo.size else 0.0
    return scores


def spread_rows(count: int) -> np.ndarray:
    """At most ``SELECT_ROWS`` of ``count`` trials, evenly spread over them: the rows a
    shrinkage is chosen on."""
    return np.unique(np.linspace(0, count - 1, min(count, SELECT_ROWS)).round()).astype(int)


def loo_ridge(one_hot: np.ndarray, shared: np.ndarray, own: np.ndarray, y: np.ndarray) -> Shrinkage:
    """The shrinkage of least leave-one-out error for ``y`` (every row once): the ridge on the
    groups' ``own`` columns (a multiple of their Gram matrix's mean eigenvalue, one of
    :data:`TAUS`) and the ``shared`` columns' prior scale (one of :data:`POOL_SCALES`), the
    combos' bases unpenalized. (Generalized cross-validation, its cheaper cousin, chose
    interpolation with fewer trials than columns, where its average leverage is a 0/0.)"""
    basis = _basis(one_hot)
    centred = _outside(basis, own)
    unit = float((centred**2).sum()) / max(1, min(centred.shape)) or 1.0
    strengths = TAUS * unit
    best: tuple[float, Shrinkage] | None = None
    for pool in POOL_SCALES:
        scores = _loo_scores(basis, np.hstack([pool * shared, own]), y, strengths)
        k = int(np.argmin(scores))
        if best is None or scores[k] < best[0]:
            best = (float(scores[k]), Shrinkage(float(strengths[k]), pool))
    return best[1] if best is not None else Shrinkage(unit, POOL_SCALES[-1])


class ShrunkLinear:
    """One minimized objective's model, refitted at each ask on a bootstrap sample, its
    shrinkage chosen by leave-one-out on every modeled trial now and then (see the module
    docstring)."""

    def __init__(self, shares: np.ndarray) -> None:
        self._shares = shares
        self.shrinkage: Shrinkage | None = None  # the one chosen last
        self._chosen_at = 0  # trials when it was chosen

    def fit(self, encoded: Encoded, one_hot: np.ndarray, y: np.ndarray, sample: Sample) -> Fit:
        scale = float(np.std(y)) or 1.0
        shared, own = pooled(encoded, self._shares), deviations(encoded)
        if self.shrinkage is None or len(y) >= (1 + RESELECT_GROWTH) * self._chosen_at:
            some = spread_rows(len(y))
            self.shrinkage = loo_ridge(one_hot[some], shared[some], own[some], y[some] / scale)
            self._chosen_at = len(y)
        pool = self.shrinkage.pool
        rows, root = sample.rows, np.sqrt(sample.counts)
        free = root[:, None] * np.hstack([pool * shared[rows], own[rows]])
        bases_rows, target = root[:, None] * one_hot[rows], root * y[rows] / scale
        basis = _basis(bases_rows)
        coef = ridge_solve(_outside(basis, free), _outside(basis, target), self.shrinkage.strength)
        bases = np.linalg.lstsq(bases_rows, target - free @ coef, rcond=None)[0] * scale
        seen = np.bincount(encoded.combo[rows], weights=sample.counts, minlength=len(bases))
        if (seen == 0).any():  # a combo no trial of the sample ran: the mean of the others
            bases[seen == 0] = seen @ bases / seen.sum()
        coef = coef * scale
        groups = encoded.amounts.shape[1]
        common, own_coef = pool * coef[:4], coef[4:]
        spread = np.full(groups, 1.0 / max(1, groups))
        return Fit(
            base=bases,
            weight=common[0] * self._shares + common[2] * spread + own_coef[:groups],
            structured_slope=common[1] * self._shares + common[3] * spread + own_coef[groups:],
        )
