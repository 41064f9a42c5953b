"""The layerwise fits' Cholesky solves give scipy's results to the bit, and refuse what scipy
refuses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve

from sweep._cholesky import cholesky, cholesky_solve


@pytest.mark.parametrize("size", [1, 5, 29, 200])
def test_the_same_factor_and_solutions_as_scipy(size: int) -> None:
    rng = np.random.default_rng(size)
    rows = rng.normal(size=(size + 3, size))
    matrix = rows.T @ rows + 0.1 * np.eye(size)
    vector, columns = rng.normal(size=size), rng.normal(size=(size, 4))
    factor = cholesky(matrix)
    reference = cho_factor(matrix, check_finite=False)
    assert np.array_equal(np.triu(factor), np.triu(reference[0]))
    assert np.array_equal(cholesky_solve(factor, vector), cho_solve(reference, vector))
    assert np.array_equal(cholesky_solve(factor, columns), cho_solve(reference, columns))
    np.testing.assert_allclose(matrix @ cholesky_solve(factor, columns), columns, atol=1e-8)


def test_a_matrix_that_is_not_positive_definite_is_refused() -> None:
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]))
    assert cholesky(np.zeros((0, 0))).shape == (0, 0)
    assert cholesky_solve(np.zeros((0, 0)), np.zeros(0)).shape == (0,)
