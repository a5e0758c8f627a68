"""Plain numpy reference of the fused integrated-gradients accumulation.

The tests compare the C++, CUDA and Triton kernels of :func:`neurcore.attribution.ig_accumulate`
with it on fresh random inputs.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["ig_accumulate"]


def ig_accumulate(grads: np.ndarray, weights: np.ndarray, delta: np.ndarray,
                  reduce_spatial: bool) -> np.ndarray:
    """The increment that the fused integrated-gradients kernel adds to ``out``, in float64.

    grads: [T, S, U, C, P], the gradients of T target outputs at S interpolation steps for U
    examples, C channels and P spatial positions (P = H * W, or 1). weights: [S], the quadrature
    weights of the steps (step size included). delta: [U, C, P], input minus baseline.

    Returns float64 [T, U, C] when ``reduce_spatial`` (sum over s and p of
    ``weights[s] * delta[u, c, p] * grads[t, s, u, c, p]``), else float64 [T, U, C, P]
    (``delta[u, c, p] * sum_s weights[s] * grads[t, s, u, c, p]``). Integrated gradients:
    Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
    """
    g = np.asarray(grads, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    if g.ndim != 5 or w.shape != (g.shape[1],) or d.shape != g.shape[2:]:
        raise InputError(f"ig_accumulate: shapes grads {g.shape}, weights {w.shape}, delta {d.shape} "
                         "do not agree")
    summed = np.einsum("s,tsucp->tucp", w, g) * d[None]
    return summed.sum(axis=3) if reduce_spatial else summed
