"""The layerwise sampler's model of size and latency (sweep/_layerwise_linear.py): a ridge
regression with free bases, pooled slopes and per-group deviations whose shrinkage GCV chooses."""

from __future__ import annotations

import numpy as np
import pytest

from sweep._layerwise_linear import ShrunkLinear, deviations, loo_ridge, pooled
from sweep._layerwise_model import Encoded, Sample

COMBOS = 4
GROUPS = 30


def _recipes(n: int, seed: int) -> tuple[Encoded, np.ndarray]:
    rng = np.random.default_rng(seed)
    amounts = rng.choice(np.round(np.arange(0.0, 0.91, 0.05), 6), size=(n, GROUPS))
    structured = (rng.random((n, GROUPS)) < 0.3).astype(float)
    encoded = Encoded(amounts, structured, rng.integers(COMBOS, size=n))
    return encoded, np.eye(COMBOS)[encoded.combo]


SHARES = np.random.default_rng(9).dirichlet(np.ones(GROUPS))
BASES = np.array([300.0, 320.0, 150.0, 160.0])


def _size(encoded: Encoded, slopes: np.ndarray, structured_slopes: np.ndarray) -> np.ndarray:
    loose = encoded.amounts * (1 - encoded.structured)
    removed = encoded.amounts * encoded.structured
    return BASES[encoded.combo] + loose @ slopes + removed @ structured_slopes


def test_where_trials_tell_the_groups_apart_each_has_its_own_slope() -> None:
    """Exact sums (synthetic's), many trials: GCV chooses almost no ridge."""
    rng = np.random.default_rng(1)
    slopes, structured_slopes = -rng.uniform(5, 50, GROUPS), -rng.uniform(20, 100, GROUPS)
    encoded, one_hot = _recipes(300, seed=2)
    fit = ShrunkLinear(SHARES).fit(
        encoded, one_hot, _size(encoded, slopes, structured_slopes), Sample.of(np.arange(300))
    )
    assert np.allclose(fit.weight, slopes, atol=0.5)
    assert np.allclose(fit.structured_slope, structured_slopes, atol=0.5)
    assert np.allclose(fit.base, BASES, atol=0.5)
    fresh, _ = _recipes(100, seed=3)
    assert np.allclose(fit.predict(fresh), _size(fresh, slopes, structured_slopes), atol=1.0)


def test_where_they_cannot_it_predicts_the_pooled_effect_not_the_noise() -> None:
    """Fewer trials than slopes, and noise: a slope proportional to each group's share. The
    least-squares interpolation (a token ridge, what the sampler used before) predicts fresh
    recipes worse than their mean does; the shrunk model predicts them within the noise."""
    slopes, structured_slopes = -200 * SHARES, -400 * SHARES
    encoded, one_hot = _recipes(40, seed=4)
    noise = np.random.default_rng(5).normal(0, 2.0, 40)
    size = _size(encoded, slopes, structured_slopes) + noise
    fit = ShrunkLinear(SHARES).fit(encoded, one_hot, size, Sample.of(np.arange(40)))
    fresh, fresh_hot = _recipes(500, seed=6)
    truth = _size(fresh, slopes, structured_slopes)
    error = float(np.sqrt(np.mean((fit.predict(fresh) - truth) ** 2)))
    features = np.hstack(
        [one_hot, encoded.amounts * (1 - encoded.structured), encoded.amounts * encoded.structured]
    )
    token = features.T @ np.linalg.solve(features @ features.T + 1e-3 * np.eye(40), size)
    fresh_features = np.hstack(
        [fresh_hot, fresh.amounts * (1 - fresh.structured), fresh.amounts * fresh.structured]
    )
    interpolated = float(np.sqrt(np.mean((fresh_features @ token - truth) ** 2)))
    assert error < 3.0 < interpolated
    assert (fit.structured_slope < fit.weight).mean() > 0.9  # structured removes more, per group


def test_leave_one_out_chooses_no_ridge_for_exact_sums_and_the_most_for_noise() -> None:
    encoded, one_hot = _recipes(200, seed=7)
    shared, own = pooled(encoded, SHARES), deviations(encoded)
    exact = encoded.amounts @ np.linspace(1.0, 3.0, GROUPS)
    noise = np.random.default_rng(8).normal(size=200)
    loose = loo_ridge(one_hot, shared, own, exact / exact.std())
    tight = loo_ridge(one_hot, shared, own, noise)
    assert loose.strength < 1e-2 < 1e2 < tight.strength
    # On noise, the shared slopes shrink too: in one combo, the model predicts about the same
    # for every recipe.
    fit = ShrunkLinear(SHARES).fit(encoded, one_hot, noise, Sample.of(np.arange(200)))
    fresh, _ = _recipes(500, seed=13)
    fresh = Encoded(fresh.amounts, fresh.structured, np.zeros(500, dtype=int))
    assert float(np.std(fit.predict(fresh))) < 0.2 * float(np.std(noise))


@pytest.mark.parametrize("trials", [20, 200])  # fewer rows than features, and more
def test_a_bootstrap_sample_fits_the_ridge_regression_of_its_repeated_rows(trials: int) -> None:
    encoded, one_hot = _recipes(trials, seed=10)
    size = encoded.amounts @ np.linspace(1.0, 3.0, GROUPS) + 5.0 * encoded.combo
    size += np.random.default_rng(11).normal(0, 0.5, trials)
    drawn = np.random.default_rng(12).integers(trials, size=trials)
    model = ShrunkLinear(SHARES)
    fit = model.fit(encoded, one_hot, size, Sample.of(drawn))
    assert model.shrinkage is not None
    strength, pool = model.shrinkage.strength, model.shrinkage.pool
    # The plain form: every drawn row once, free bases, the ridge as rows of a tall system on
    # the pooled and per-group columns (the target divided by its standard deviation).
    repeated = encoded.take(drawn)
    scale = float(np.std(size))
    columns = np.hstack(
        [
            pool * pooled(repeated, SHARES),
            repeated.amounts * (1 - repeated.structured),
            repeated.amounts * repeated.structured,
        ]
    )
    present = np.unique(repeated.combo)
    bases = np.eye(COMBOS)[repeated.combo][:, present]
    width = columns.shape[1]
    system = np.vstack(
        [
            np.hstack([bases, columns]),
            np.hstack([np.zeros((width, len(present))), np.sqrt(strength) * np.eye(width)]),
        ]
    )
    target = np.concatenate([size[drawn] / scale, np.zeros(width)])
    coef = np.linalg.lstsq(system, target, rcond=None)[0] * scale
    expected = bases @ coef[: len(present)] + columns @ coef[len(present) :]
    assert np.allclose(fit.predict(repeated), expected, atol=1e-6 * scale)
