"""The quadratures of integrated gradients, as Captum's ``approximation_parameters`` defines them."""

from __future__ import annotations

import functools

import numpy as np

from ..errors import InputError

__all__ = ["quadrature", "METHODS", "CHUNK_BYTES"]

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
#: Default bound on one chunk's interpolated input (bytes); gradients take as much again.
CHUNK_BYTES = 256 * 2**20


def check_quadrature(method: str, n_steps: int) -> int:
    """n_steps as an int, after checking that ``method`` is known and ``n_steps`` enough for it."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n = int(n_steps)
    if n < 1 or (method != "gausslegendre" and n < 2):
        least = 1 if method == "gausslegendre" else 2
        raise InputError(f"n_steps must be >= {least} for {method}, got {n_steps}")
    return n


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), float64 [n_steps]: the points in [0, 1] and their weights, as Captum's
    ``approximation_parameters`` defines them (Riemann rules need n_steps > 1). As in Captum, the
    trapezoid rule keeps the step 1/n and halves the end weights (they sum to 1 - 1/n). Cached:
    Gauss-Legendre's nodes cost an eigenvalue problem of size n_steps."""
    alphas, weights = _rule(method, check_quadrature(method, n_steps))
    return alphas.copy(), weights.copy()


@functools.lru_cache(maxsize=32)
def _rule(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (x + 1), 0.5 * w
    weights = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = np.linspace(0, 1, n)
    elif method == "riemann_left":
        alphas = np.linspace(0, 1 - 1 / n, n)
    elif method == "riemann_right":
        alphas = np.linspace(1 / n, 1, n)
    else:
        alphas = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    return alphas, weights
