"""The layerwise sampler's fits (sweep/_layerwise_model.py): the fast forms give the answers of
the plain ones they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from sweep._layerwise_model import (
    CONVEX_RIDGE,
    SHAPE_WORK,
    SHAPES,
    Encoded,
    Sample,
    ShapeSearch,
    fit_convex,
    nnls_gram,
)

COMBOS = 6


def _trials(n: int, groups: int, seed: int = 0) -> tuple[Encoded, np.ndarray, np.ndarray]:
    """Random recipes and a convex accuracy-like loss of them (minimized, 0 at best)."""
    rng = np.random.default_rng(seed)
    amounts = rng.choice(np.round(np.arange(0.0, 0.91, 0.05), 6), size=(n, groups))
    encoded = Encoded(
        amounts, (rng.random((n, groups)) < 0.3).astype(float), rng.integers(6, size=n)
    )
    one_hot = np.eye(COMBOS)[encoded.combo]
    weights = 0.02 / rng.uniform(0.35, 0.95, groups) ** 4 / groups
    scale = np.where(encoded.structured > 0, 2.0, 1.0)
    loss = ((scale * amounts) ** 4) @ weights + one_hot @ rng.random(COMBOS) * 0.01
    loss += rng.normal(0, 1e-3, n)
    return encoded, one_hot, loss - loss.min()


@pytest.mark.parametrize("seed", range(4))
def test_nnls_gram_solves_what_scipys_nnls_solves_from_any_start(seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix, target = rng.normal(size=(80, 40)), rng.normal(size=80)
    gram, rhs = matrix.T @ matrix + 1e-3 * np.eye(40), matrix.T @ target
    stacked = np.vstack([matrix, np.sqrt(1e-3) * np.eye(40)])
    expected, _ = nnls(stacked, np.concatenate([target, np.zeros(40)]))
    cold, support = nnls_gram(gram, rhs)
    assert np.allclose(cold, expected, atol=1e-9)
    assert (support == (cold > 0)).all()
    for start in (support, ~support, rng.random(40) < 0.5):
        warm, _ = nnls_gram(gram, rhs, start)
        assert np.allclose(warm, expected, atol=1e-9)


def test_a_bootstrap_sample_as_weights_fits_what_its_repeated_rows_fit() -> None:
    encoded, one_hot, loss = _trials(60, 10)
    drawn = np.random.default_rng(1).integers(60, size=60)
    sample = Sample.of(drawn)
    assert sample.counts.sum() == 60 and len(sample.rows) < 60
    error, fit, _ = fit_convex(encoded, one_hot, loss, sample, (4.0, 1.6))
    # The plain form: every drawn row once, the ridge as rows of a tall system.
    scale = np.where(encoded.structured[drawn] > 0, 1.6, 1.0)
    features = np.hstack([one_hot[drawn], -one_hot[drawn], (scale * encoded.amounts[drawn]) ** 4.0])
    n = features.shape[1]
    system = np.vstack([features, np.sqrt(CONVEX_RIDGE) * np.eye(n)])
    coef, _ = nnls(system, np.concatenate([loss[drawn], np.zeros(n)]), maxiter=50 * n)
    assert np.allclose(fit.weight, coef[2 * COMBOS :], atol=1e-8)
    assert np.allclose(fit.base, coef[:COMBOS] - coef[COMBOS : 2 * COMBOS], atol=1e-8)
    assert error == pytest.approx(float(np.mean((features @ coef - loss[drawn]) ** 2)))
    assert np.allclose(fit.predict(encoded.take(drawn)), features @ coef)


def test_every_shape_is_fitted_while_cheap_then_the_kept_one_and_challengers() -> None:
    search = ShapeSearch()
    # Small: every shape, at every ask.
    assert search.shapes(rows=50, features=30) == list(SHAPES)
    encoded, one_hot, loss = _trials(300, 100)
    sample = Sample.of(np.arange(300))
    kept = search.fit(encoded, one_hot, loss, sample)
    # Large (work for 1.5 fits): the kept shape, and a challenger every other ask.
    features = 2 * COMBOS + 100
    rows = int(SHAPE_WORK / 1.5 / features**2)
    asks = [search.shapes(rows, features) for _ in range(2 * (len(SHAPES) - 1))]
    assert all(shapes[0] == (kept.exponent, kept.factor) for shapes in asks)
    assert [len(shapes) for shapes in asks] == [1, 2] * (len(SHAPES) - 1)
    challengers = {shape for shapes in asks for shape in shapes[1:]}
    assert challengers == set(SHAPES) - {(kept.exponent, kept.factor)}
    # Larger still: a challenger every few asks all the same.
    assert sum(len(search.shapes(rows * 100, features)) - 1 for _ in range(8)) == 2
