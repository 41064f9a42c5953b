"""Cholesky factorization and solves of the small symmetric positive definite systems that the
layerwise sampler's fits solve, straight through LAPACK (``potrf``, ``potrs``).

These are the routines ``scipy.linalg.cho_factor`` and ``cho_solve`` call, with the same
arguments and so the same results, without their per-call checks, conversions and batching
wrapper: at the sizes solved here (a few to a few hundred rows), tens of thousands of times a
sweep, those cost 3-4x the factorization itself, and a quarter of a fit's CPU (issue 18).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def cholesky(matrix: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of ``matrix`` (float64, symmetric positive definite), as
    ``scipy.linalg.cho_factor(matrix)[0]`` (its lower triangle is not cleared: only
    :func:`cholesky_solve` reads it)."""
    if matrix.size == 0:
        return np.array(matrix, dtype=float)
    factor, info = lapack.dpotrf(matrix, lower=0, clean=0, overwrite_a=0)
    if info > 0:
        raise np.linalg.LinAlgError(
            f"{info}-th leading minor of the array is not positive definite"
        )
    if info < 0:
        raise ValueError(f"LAPACK dpotrf: illegal value in argument {-info}")
    return np.asarray(factor)


def cholesky_solve(factor: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``matrix^-1 rhs`` for the ``factor`` of :func:`cholesky` (``rhs``: a vector or columns)."""
    if factor.size == 0:
        return np.zeros_like(rhs, dtype=float)
    solution, info = lapack.dpotrs(factor, rhs, lower=0, overwrite_b=0)
    if info != 0:
        raise ValueError(f"LAPACK dpotrs: illegal value in argument {-info}")
    return np.asarray(solution)
