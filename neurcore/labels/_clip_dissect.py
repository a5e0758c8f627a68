"""CLIP-Dissect: label every unit of a layer with the concept whose image-text similarity pattern
matches the unit's top-activating probe images (Oikarinen & Weng, "CLIP-Dissect: Automatic
Description of Neuron Representations in Deep Vision Networks", ICLR 2023; the anchor is its repository
Trustworthy-ML-Lab/CLIP-dissect, ``similarity.py``, ``utils.py``, ``describe_neurons.py``).

Inputs are plain arrays:

- ``image_text_sim`` float [n_images, n_concepts]: cosine similarity of the probe images with the
  concept texts. The anchor (``utils.get_similarity_from_activations``) L2-normalizes the image and
  the text embeddings and takes their product, with no centring; :func:`image_text_similarity`
  does exactly that.
- ``unit_acts`` float [n_images, n_units]: one activation per image and unit (spatial mean for conv
  layers, the CLS token for ViTs, as the anchor's ``pool_mode="avg"``).

Similarity functions (``similarity=``), as in the anchor, all returning [n_units, n_concepts]:

- ``soft_wpmi`` (default; top_k 100, a 10, lam 1, p_start 0.998, p_end 0.97): P = softmax over
  concepts of a*sim per image; each unit's top_k images (by activation, descending) get inclusion
  probabilities p_i = p_start - i/top_k*(p_start - p_end), i = 0..top_k-1 (the anchor's formula: the
  last p is one step above p_end); log p(t|B) = sum_i log(1 + p_i (P(t|x_i) - 1) + 1e-7);
  log p(t) = logsumexp over the layer's units of log p(t|B) - log(n_units);
  sim = log p(t|B) - lam log p(t).
- ``wpmi`` (top_k 28, a 2, lam 0.6): log p(t|B) = sum_i log(P(t|x_i) + 1e-7), then as above.
- ``rank_reorder`` (p 3, top_fraction 0.05, scale_p 0.5): on the unit's top n*top_fraction images,
  err(t) = mean |act_j - act sorted into the images' order by sim(t)|^p / baseline / mean_sim(t)^scale_p;
  sim = -err.
- ``cos_similarity``: cosine over images between the unit's activation column and the concept's sim column.
- ``cos_similarity_cubed``: the same after centring each column over images and cubing it; norms
  clipped below at 1e-3.

The label of a unit is the argmax over concepts; ties go to the first concept (a tie: within 64
machine epsilons, relative, of the maximum, since identical columns can round differently). The
scores are array operations over all concepts at once (numpy), with units in blocks sized to the
cache; there is no loop over concepts. log p(t) couples the units, so wpmi and soft_wpmi compute
every unit's log p(t|B) before any unit's score, even when ``units`` asks for a few.

Where this differs from the anchor, on purpose:

- top-k ties in activation go to the lower image index (torch.topk leaves them unspecified), and
  argsort ties in rank_reorder likewise (stable sorts).
- rank_reorder's baseline is the exact expectation of the anchor's Monte-Carlo estimate (5 random
  permutations): mean over all image pairs (i, j) of |act_i - act_j|^p; a zero baseline (constant
  top activations, where every error is 0 too) is taken as 1. mean_sim(t) is clipped below at 1e-6
  (the anchor gives NaN for a negative mean cosine).
- cos_similarity: a zero column (a unit or concept that is 0 on every image) gives similarity 0
  instead of NaN.
- top_k > n_images is an error (torch.topk fails there too); so is a rank_reorder top set < 1 image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..results import Explanation
from ._checks import UnitIndices, concept_matrix, finite_2d, unit_indices, unit_rows

__all__ = ["SIMILARITY_FUNCTIONS", "ClipDissect", "image_text_similarity", "similarity_matrix"]

#: The anchor's similarity functions and their default parameters (``similarity.py``).
SIMILARITY_FUNCTIONS = {
    "soft_wpmi": dict(top_k=100, a=10.0, lam=1.0, p_start=0.998, p_end=0.97),
    "wpmi": dict(top_k=28, a=2.0, lam=0.6),
    "rank_reorder": dict(p=3.0, top_fraction=0.05, scale_p=0.5),
    "cos_similarity": dict(),
    "cos_similarity_cubed": dict(min_norm=1e-3),
}
_MIN_PROB = 1e-7          # the anchor's min_prob inside the logs
_BLOCK_BYTES = 1 << 23    # one gathered block [top_k, units, concepts]: fits the last-level cache


def image_text_similarity(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity [n_images, n_texts] of image [n, D] and text [T, D] embeddings (float32).

    As the anchor: both L2-normalized along D, then multiplied; no centring of the text features.
    """
    img = finite_2d(image_emb, "image_emb")
    txt = finite_2d(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image_emb has dimension {img.shape[1]} but text_emb has {txt.shape[1]}")
    img = unit_rows(img.astype(np.float32), "image_emb")
    txt = unit_rows(txt.astype(np.float32), "text_emb")
    return img @ txt.T


class ClipDissect:
    """CLIP-Dissect over a fixed probe: ``ClipDissect(image_text_sim, names).explain(unit_acts)``.

    Oikarinen & Weng, "CLIP-Dissect: Automatic Description of Neuron Representations in Deep Vision
    Networks", ICLR 2023; the module doc lists the similarity functions and where they differ from
    the paper's code.

    image_text_sim: float [n_images, n_concepts], cosine similarities of the probe images with the
    concept texts (see :func:`image_text_similarity`); finite, not empty. Kept as ``self.sim``.
    names: the n_concepts concept names (unique, non-empty), in column order. Kept as ``self.names``.
    """

    def __init__(self, image_text_sim: np.ndarray, names: Sequence[str]):
        sim, names = concept_matrix(image_text_sim, names, "image_text_sim")
        if sim.shape[0] == 0 or sim.shape[1] == 0:
            raise InputError(f"image_text_sim is empty: shape {sim.shape}")
        self.sim = sim
        self.names = names

    @property
    def n_images(self) -> int:
        """The number of probe images, the rows of ``image_text_sim`` and of every ``unit_acts``."""
        return self.sim.shape[0]

    def similarity(self, unit_acts: np.ndarray, *, similarity: str = "soft_wpmi", units: UnitIndices = None,
                   dtype: str = "float32", **params: float) -> np.ndarray:
        """The unit x concept similarity matrix [len(units), n_concepts] (float64) of one similarity function.

        unit_acts: float [n_images, n_units], one activation per probe image and unit.
        similarity: one of SIMILARITY_FUNCTIONS. units: indices of the units to score (default all).
        dtype: "float32" (the anchor's) or "float64", the precision of the computation.
        params: that function's parameters (SIMILARITY_FUNCTIONS lists them and their anchor defaults).
        """
        acts = self._check_acts(unit_acts)
        return similarity_matrix(self.sim, acts, similarity=similarity, units=units, dtype=dtype, **params)

    def explain(self, unit_acts: np.ndarray, *, similarity: str = "soft_wpmi", top_k: int | None = None,
                a: float | None = None, lam: float | None = None, p_start: float = 0.998,
                p_end: float = 0.97, layer: str | None = None, units: UnitIndices = None, n_top: int = 5,
                dtype: str = "float32", **params: float) -> list[Explanation]:
        """One Explanation per unit: the argmax concept as ``formula``, its score as
        ``metrics["similarity"]``.

        unit_acts: float [n_images, n_units], one activation per probe image and unit.
        similarity: one of SIMILARITY_FUNCTIONS. top_k, a, lam: soft_wpmi / wpmi parameters; None takes
        the chosen function's anchor default (soft_wpmi 100, 10, 1; wpmi 28, 2, 0.6). p_start, p_end:
        soft_wpmi's inclusion probabilities. params: rank_reorder's p, top_fraction, scale_p or
        cos_similarity_cubed's min_norm. units: indices of the units to explain (default all); wpmi and
        soft_wpmi still use the whole layer for log p(t). layer: the layer name recorded in each
        Explanation. n_top: concepts listed in ``extra["top"]`` as ``[name, similarity]``, best first.
        dtype: "float32" (the anchor's) or "float64".
        """
        acts = self._check_acts(unit_acts)
        if similarity in ("soft_wpmi", "wpmi"):
            defaults = SIMILARITY_FUNCTIONS[similarity]
            params.update(top_k=defaults["top_k"] if top_k is None else top_k,
                          a=defaults["a"] if a is None else a, lam=defaults["lam"] if lam is None else lam)
            if similarity == "soft_wpmi":
                params.update(p_start=p_start, p_end=p_end)
        elif top_k is not None or a is not None or lam is not None:
            raise InputError(f"top_k, a and lam apply to soft_wpmi and wpmi, not to {similarity!r}")
        unit_ids = unit_indices(units, acts.shape[1])
        sims = similarity_matrix(self.sim, acts, similarity=similarity, units=unit_ids, dtype=dtype, **params)
        best = _first_best(sims, dtype)
        top = _top_concepts(sims, best, n_top)
        used = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
        out = []
        for row, u in enumerate(unit_ids):
            b = int(best[row])
            out.append(Explanation(
                unit=int(u), method="clip-dissect", formula=self.names[b], iou=None, length=1, layer=layer,
                metrics={"similarity": float(sims[row, b])},
                extra={"top": [[self.names[int(c)], float(sims[row, c])] for c in top[row]],
                       "similarity_fn": similarity, "params": used}))
        return out

    def _check_acts(self, unit_acts) -> np.ndarray:
        acts = finite_2d(unit_acts, "unit_acts")
        if acts.shape[0] != self.n_images:
            raise InputError(f"unit_acts has {acts.shape[0]} image rows but image_text_sim has "
                             f"{self.n_images}")
        if acts.shape[1] == 0:
            raise InputError("unit_acts has no unit columns")
        return acts


def similarity_matrix(image_text_sim: np.ndarray, unit_acts: np.ndarray, *, similarity: str = "soft_wpmi",
                      units: UnitIndices = None, dtype: str = "float32", **params: float) -> np.ndarray:
    """Unit x concept similarity [len(units), n_concepts] (float64) for plain arrays (see the module doc).

    image_text_sim: float [n_images, n_concepts]; unit_acts: float [n_images, n_units]; similarity:
    one of SIMILARITY_FUNCTIONS; units: indices of the units to score (default all); dtype: "float32"
    or "float64"; params: the function's parameters, overriding its defaults in SIMILARITY_FUNCTIONS.
    """
    if similarity not in SIMILARITY_FUNCTIONS:
        raise InputError(f"similarity: unknown function {similarity!r}; "
                         f"known: {sorted(SIMILARITY_FUNCTIONS)}")
    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    kw = dict(SIMILARITY_FUNCTIONS[similarity])
    unknown = set(params) - set(kw)
    if unknown:
        raise InputError(f"{similarity} takes parameters {sorted(kw)}, not {sorted(unknown)}")
    kw.update(params)
    sim = finite_2d(image_text_sim, "image_text_sim")
    acts = finite_2d(unit_acts, "unit_acts")
    if acts.shape[0] != sim.shape[0]:
        raise InputError(f"unit_acts has {acts.shape[0]} image rows but image_text_sim has {sim.shape[0]}")
    unit_ids = unit_indices(units, acts.shape[1])
    S = np.ascontiguousarray(sim, dtype=dtype)
    A_rank = acts.astype(np.float64)          # top-k order from the activations as given (float64 holds them)
    if similarity == "soft_wpmi":
        out = _soft_wpmi(S, A_rank, unit_ids, **kw)
    elif similarity == "wpmi":
        out = _wpmi(S, A_rank, unit_ids, **kw)
    elif similarity == "rank_reorder":
        out = _rank_reorder(S, A_rank[:, unit_ids], **kw)
    elif similarity == "cos_similarity":
        out = _cos_similarity(S, A_rank[:, unit_ids].astype(dtype))
    else:
        out = _cos_similarity_cubed(S, A_rank[:, unit_ids].astype(dtype), **kw)
    return out.astype(np.float64, copy=False)


# ---------------------------------------------------------------------------------------------------------
# the similarity functions, all units at once
#
# The scores are elementwise work on gathered blocks [top_k, units, concepts] (10^9 elements for
# 512 units x 20,000 concepts x top 100), so they are bound by memory traffic: units go through one
# reused buffer sized to stay in the last-level cache, and each numpy pass runs on it in place.


def _top_indices(A: np.ndarray, top_k: int) -> np.ndarray:
    """Indices [top_k, U] of each column's top_k rows, descending; ties go to the lower row index."""
    return np.argsort(-A, axis=0, kind="stable")[:top_k]


def _check_top_k(top_k, n_images: int, name: str) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"{name}: top_k must be an integer >= 1, got {top_k!r}")
    if top_k > n_images:
        raise InputError(f"{name}: top_k = {top_k} exceeds the probe's {n_images} images; "
                         f"pass top_k <= {n_images}")
    return int(top_k)


def _chunk(rows: int, n_concepts: int, itemsize: int) -> int:
    """Units per block so that a gathered [rows, units, n_concepts] block stays within the budget."""
    return max(1, _BLOCK_BYTES // max(1, rows * n_concepts * itemsize))


def _softmax_rows(X: np.ndarray, a: float) -> np.ndarray:
    """softmax over each row of a * X, in X's dtype (one new array, the rest in place)."""
    P = np.multiply(X, X.dtype.type(a))
    P -= P.max(axis=1, keepdims=True)
    np.exp(P, out=P)
    P /= P.sum(axis=1, keepdims=True)
    return P


def _log_p_given_top(P: np.ndarray, inds: np.ndarray, p_in) -> np.ndarray:
    """sum_i log(1 + p_i (P[inds[i, u]] - 1) + 1e-7) -> [U, C]; p_in None means sum_i log(P + 1e-7)."""
    k, U = inds.shape
    C = P.shape[1]
    out = np.empty((U, C), P.dtype)
    step = min(U, _chunk(k, C, P.itemsize))
    buf = np.empty((k * step, C), P.dtype)
    if p_in is not None:
        scale = p_in.astype(P.dtype)[:, None, None]
        # 1 + p(P - 1) + eps = p P + (1 - p + eps)
        shift = (1.0 - p_in + _MIN_PROB).astype(P.dtype)[:, None, None]
    for s in range(0, U, step):
        idx = inds[:, s:s + step]
        m = idx.shape[1]
        g = buf[:k * m]
        np.take(P, idx.reshape(-1), axis=0, out=g, mode="clip")  # indices are valid; "clip" avoids a copy
        g = g.reshape(k, m, C)
        if p_in is not None:
            np.multiply(g, scale, out=g)
            np.add(g, shift, out=g)
        else:
            np.add(g, P.dtype.type(_MIN_PROB), out=g)
        np.log(g, out=g)
        np.sum(g, axis=0, out=out[s:s + m])
    return out


def _pmi(log_p_given: np.ndarray, unit_ids, lam: float) -> np.ndarray:
    """log p(t|B) - lam * (logsumexp over all units - log n_units), rows of ``unit_ids``."""
    top = log_p_given.max(axis=0)
    log_p = top + np.log(np.exp(log_p_given - top).sum(axis=0)) - math.log(log_p_given.shape[0])
    return log_p_given[unit_ids] - log_p_given.dtype.type(lam) * log_p


def _soft_wpmi(S, A, unit_ids, *, top_k, a, lam, p_start, p_end):
    top_k = _check_top_k(top_k, S.shape[0], "soft_wpmi")
    for name, v in (("p_start", p_start), ("p_end", p_end)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"soft_wpmi: {name} must lie in [0, 1], got {v}")
    p_in = p_start - np.arange(top_k) / top_k * (p_start - p_end)
    return _pmi(_log_p_given_top(_softmax_rows(S, a), _top_indices(A, top_k), p_in), unit_ids, lam)


def _wpmi(S, A, unit_ids, *, top_k, a, lam):
    top_k = _check_top_k(top_k, S.shape[0], "wpmi")
    return _pmi(_log_p_given_top(_softmax_rows(S, a), _top_indices(A, top_k), None), unit_ids, lam)


def _rank_reorder(S, A, *, p, top_fraction, scale_p):
    n, C = S.shape
    top_n = int(n * top_fraction)
    if top_n < 1:
        raise InputError(f"rank_reorder: top_fraction {top_fraction} of {n} images leaves no image; "
                         f"needs n_images * top_fraction >= 1")
    inds = _top_indices(A, top_n)                                   # [top_n, U], descending activation
    target = np.take_along_axis(A, inds, axis=0).astype(S.dtype)    # [top_n, U] descending values
    ascending = target[::-1]                                        # activation of rank r (0 = lowest)
    U = A.shape[1]
    out = np.empty((U, C), S.dtype)
    step = min(U, _chunk(top_n, C, 8 + 2 * S.itemsize), _chunk(top_n, top_n, S.itemsize))
    for s in range(0, U, step):
        idx = inds[:, s:s + step]
        m = idx.shape[1]
        t = target[:, s:s + m]
        # exact E over a random permutation pi of mean_i |x_i - x_pi(i)|^p = mean over all pairs (i, j)
        baseline = (np.abs(t.T[:, :, None] - t.T[:, None, :]) ** p).mean(axis=(1, 2))    # [m]
        baseline = np.where(baseline > 0, baseline, 1.0)
        g = S[idx.reshape(-1)].reshape(top_n, m, C)                 # sim of the top images
        avg = np.maximum(g.mean(axis=0), 1e-6)                      # [m, C]
        order = np.argsort(g, axis=0, kind="stable")                # image at sim-rank r
        # the image at sim-rank r is compared with the r-th lowest activation
        reorg = np.take_along_axis(np.broadcast_to(t[:, :, None], g.shape), order, axis=0)
        err = (np.abs(reorg - ascending[:, s:s + m, None]) ** p).mean(axis=0)
        out[s:s + m] = -(err / baseline[:, None] / avg ** scale_p)
    return out


def _column_unit(X: np.ndarray, min_norm: float = 0.0) -> np.ndarray:
    norm = np.linalg.norm(X, axis=0, keepdims=True)
    if min_norm > 0:
        return X / np.maximum(norm, min_norm)
    return X / np.where(norm > 0, norm, 1.0)


def _cos_similarity(S, A):
    return _column_unit(A).T @ _column_unit(S)


def _cubed_centred(X: np.ndarray) -> np.ndarray:
    X = X - X.mean(axis=0, keepdims=True)
    C = X * X
    C *= X
    return C


def _cos_similarity_cubed(S, A, *, min_norm):
    return _column_unit(_cubed_centred(A), min_norm).T @ _column_unit(_cubed_centred(S), min_norm)


# ---------------------------------------------------------------------------------------------------------
# input checks and helpers


def _first_best(sims: np.ndarray, dtype: str) -> np.ndarray:
    """Each row's label: the first concept within rounding of the row's maximum.

    Scores of identical concept columns may differ in the last bits (vectorized loops round their
    tail differently), so a tie is a score within 64 machine epsilons (relative) of the maximum.
    """
    eps = np.finfo(np.float32 if dtype == "float32" else np.float64).eps
    top = sims.max(axis=1, keepdims=True)
    return (sims >= top - 64 * eps * np.maximum(np.abs(top), 1.0)).argmax(axis=1)


def _top_concepts(sims: np.ndarray, best: np.ndarray, n_top: int) -> np.ndarray:
    """Indices [U, min(n_top, C)]: the label, then the best other concepts by score (ties to the lower
    index)."""
    U, C = sims.shape
    k = min(int(n_top), C)
    if k <= 0:
        return np.zeros((U, 0), np.int64)
    rows = np.arange(U)
    rest = sims.copy()
    rest[rows, best] = -np.inf
    m = k - 1
    if m == 0:
        return best[:, None]
    part = np.argpartition(-rest, m - 1, axis=1)[:, :m]
    vals = np.take_along_axis(rest, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.concatenate([best[:, None], np.take_along_axis(part, order, axis=1)], axis=1)
