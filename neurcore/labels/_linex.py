"""LinEx: linear explanations of units as weighted sums of concept probabilities (Oikarinen & Weng,
"Linear Explanations for Individual Neurons", ICML 2024; the anchor is its repository
Trustworthy-ML-Lab/Linear-Explanations: ``explain_neurons.py``, ``linear_explanation.py``,
``data_utils.py``, ``glm_saga/elasticnet.py``).

Inputs are plain arrays: concept probabilities P [n_images, n_concepts] in [0, 1] (from a
vision-language model, :func:`concept_probabilities`, or one-hot labels) and unit activations
[n_images, n_units] (spatial mean per image for conv layers, CLS token for ViTs).

The algorithm, as the anchor runs it:

1. Concept filter over all images: a concept is dropped when the mean of its 5 largest P is < 0.5
   or its standard deviation (n - 1) is < 1e-5 (``explain_neurons.py``). :attr:`LinEx.kept`.
2. Random train/val/test split of the images (``data_utils.save_train_test_split``: shuffle, then
   the first int(0.7 n) train, up to int(0.8 n) val, the rest test); here by ``seed``
   (:func:`split_indices`), recorded in each explanation.
3. Ranking: an elastic net on z-scored data, concepts by their train mean and std, activations by
   their mean and std over all images (``get_glm_datasets``); the anchor's GLM-SAGA call has a
   one-point path at lam / max(alpha, 0.001) with the penalty lam_eff (alpha |w|_1 + (1 - alpha) |w|^2 / 2)
   beside 0.5 * mean squared error, i.e. scikit-learn's ElasticNet(alpha=lam / alpha, l1_ratio=alpha)
   with an unpenalized intercept. We solve it exactly by coordinate descent (``sklearn.enet_path``)
   with the Gram matrix computed once for all units: 9-150x faster here than GLM-SAGA (PyPI
   glm-saga 0.1.2) with the anchor's settings (batch 512, 500 epochs, step 5e-4, lookbehind 5), which
   also stops far from the optimum (objective 0.49 vs 0.18-0.22; benchmarks/bench_label.py). The
   anchor ranks concepts by the signed weight, descending (``torch.sort(weight, descending=True)``),
   which puts every negative weight behind all zero ones; ``ranking="abs"`` (the default) ranks by
   |weight| so that units with negative concepts get them, ``ranking="signed"`` is the anchor's
   order. Ties (zero weights) are broken by the concept's inner product with the unit (|.| for
   "abs"), then by concept order.
4. Greedy search (``greedy_search``): at each step, the candidates are the first ``candidates``
   ranked concepts neither selected nor rejected; each is tried with the selected ones in a linear
   model refit on the train split on the original P scale (weights in activation units per unit of
   probability, so another VLM's P can be plugged in), scored by the Pearson r of its predictions on
   the val split. From the second step on, a candidate that raises r by less than ``min_gain`` is
   rejected for good; of the others the one with the highest r is added (first on ties). The search
   stops when no candidate is left or at ``max_concepts``.

Deviations, on purpose: the refit is the exact least-squares solution (the anchor runs 100 Adam
steps, lr 0.3, on the same squared error); the first concept is the candidate with the highest val r
even when no r is positive (the anchor then returns a malformed explanation); a constant prediction
has r = 0 (the anchor's np.corrcoef gives NaN); a concept constant on the train split is z-scored
to 0 instead of dividing by 0; a unit with constant activation gets no explanation (formula None).

Everything runs for all units at once: one Gram matrix for the elastic net, and per greedy step one
batch of small normal-equation systems (units x candidates) solved together; the per-unit work left
is one coordinate-descent call per unit on the shared Gram matrix.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from .._io import atomic_open
from ..errors import InputError
from ..results import Explanation
from ._checks import UnitIndices, check_names, concept_matrix, finite_2d, unit_indices, unit_rows

__all__ = [
    "LinEx",
    "concept_probabilities",
    "format_linear",
    "label_simulation_r",
    "pearson_columns",
    "simulation_r",
    "split_indices",
    "write_linex_table",
]

_GRAM_LIMIT = 8192          # concepts up to which the elastic net uses one shared Gram matrix
_GREEDY_CONCEPTS = 4096     # concepts per greedy batch (its covariance matrices are this squared)
_PREDICTION_BUDGET = 1 << 26  # bytes of val-split design blocks per greedy step


def concept_probabilities(image_emb: np.ndarray, text_emb: np.ndarray, a: float, b: float) -> np.ndarray:
    """P(c|x) = sigmoid(a * (cos(image, text) + b)) -> float32 [n_images, n_concepts].

    image_emb [n, D], text_emb [C, D]; both are L2-normalized here (as the anchor's ``get_clip_feats``).
    a, b: the VLM's calibration constants, finite; LinEx's published ones are in
    :data:`~neurcore.labels.CALIBRATION` (ViT-L-16-SigLIP-384: a = 60, b = -0.09).
    """
    img = finite_2d(image_emb, "image_emb")
    txt = finite_2d(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image_emb has dimension {img.shape[1]} but text_emb has {txt.shape[1]}")
    if not (np.isfinite(a) and np.isfinite(b)):
        raise InputError(f"calibration constants must be finite, got a={a}, b={b}")
    cos = unit_rows(img, "image_emb") @ unit_rows(txt, "text_emb").T
    z = a * (cos + b)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)    # sigmoid without overflow


def split_indices(n_images: int, split: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (train, val, test) image rows, each a sorted int64 array, as the anchor's split, by ``seed``.

    split: the (train, val, test) fractions, >= 0, summing to 1. A random permutation of the images;
    train = the first floor(f_train n), val up to floor((f_train + f_val) n), test the rest. An
    InputError when fewer than 3 train or 2 val images are left.
    """
    fr = np.asarray(split, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise InputError(f"split must be three fractions (train, val, test) >= 0 that sum to 1, "
                         f"got {split!r}")
    cut = np.floor(np.cumsum(fr)[:2] * n_images + 1e-9).astype(np.int64)
    perm = np.random.default_rng(seed).permutation(n_images)
    train, val, test = np.sort(perm[:cut[0]]), np.sort(perm[cut[0]:cut[1]]), np.sort(perm[cut[1]:])
    if len(train) < 3 or len(val) < 2:
        raise InputError(f"split {tuple(split)} of {n_images} images leaves {len(train)} train and "
                         f"{len(val)} val images; LinEx needs >= 3 and >= 2")
    return train, val, test


class LinEx:
    """LinEx over a fixed probe: ``LinEx(P, names).explain(unit_acts)``.

    Oikarinen & Weng, "Linear Explanations for Individual Neurons", ICML 2024; the module doc gives
    the algorithm and where it differs from the paper's code.

    P: float [n_images, n_concepts], concept probabilities in [0, 1] (>= 5 images, >= 1 concept),
    e.g. :func:`concept_probabilities`. Kept as ``self.P``.
    names: the n_concepts names (unique, non-empty), in column order. Kept as ``self.names``.
    The anchor's concept filter runs here: ``self.kept`` (int64 [k]) are the indices of the concepts
    that pass it (mean of the 5 largest P >= 0.5 and standard deviation >= 1e-5).
    """

    def __init__(self, P: np.ndarray, names: Sequence[str]):
        P, names = concept_matrix(P, names, "P")
        if P.shape[0] < 5 or P.shape[1] == 0:
            raise InputError(f"P needs >= 5 images and >= 1 concept, got shape {P.shape}")
        lo, hi = float(P.min()), float(P.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"P holds probabilities in [0, 1]; its values span [{lo:g}, {hi:g}]")
        top5 = np.partition(P, P.shape[0] - 5, axis=0)[-5:].mean(axis=0)
        std = P.std(axis=0, ddof=1)
        self.kept = np.flatnonzero((top5 >= 0.5) & (std >= 1e-5))
        self.P = P
        self.names = names

    @property
    def n_images(self) -> int:
        """The number of probe images, the rows of ``P`` and of every ``unit_acts``."""
        return self.P.shape[0]

    def explain(self, unit_acts: np.ndarray, *, lam: float = 0.05, alpha: float = 0.99,
                max_concepts: int = 10, min_gain: float = 0.02, candidates: int = 10,
                split: Sequence[float] = (0.7, 0.1, 0.2),
                seed: int = 0, ranking: str = "abs", layer: str | None = None, units: UnitIndices = None,
                tol: float = 1e-6) -> list[Explanation]:
        """One Explanation per unit: ``formula`` "0.83*sky + 0.41*red - 0.30*room", ``metrics["val_r"]``,
        ``extra`` concepts, weights (activation per unit of P, largest first), bias, split, split_seed.

        unit_acts: float [n_images, n_units]. lam, alpha: the elastic net's strength and L1 share.
        max_concepts, min_gain, candidates: the greedy search's length limit, minimum gain in val r and
        window. split, seed: :func:`split_indices`. ranking: "abs" or "signed" (the anchor's; see the
        module doc). layer: the layer name recorded in each Explanation. units: indices of the units
        to explain (default all). tol: coordinate-descent tolerance (scikit-learn's duality-gap criterion).
        A unit with constant activation, or any unit when no concept passes the filter, gets
        ``formula`` None and the reason in ``extra["reason"]``.
        """
        acts = finite_2d(unit_acts, "unit_acts")
        if acts.shape[0] != self.n_images:
            raise InputError(f"unit_acts has {acts.shape[0]} image rows but P has {self.n_images}")
        _check_params(lam, alpha, max_concepts, min_gain, candidates, ranking)
        unit_ids = unit_indices(units, acts.shape[1])
        train, val, _ = split_indices(self.n_images, split, seed)
        Y = acts[:, unit_ids].astype(np.float64)
        sd_all = Y.std(axis=0, ddof=1)
        # No concept passing the filter (a VLM whose P never reaches 0.5: uncalibrated or untrained)
        # leaves every unit unexplained, with the reason, rather than failing the whole layer.
        live = np.flatnonzero(sd_all > 0) if self.kept.size else np.zeros(0, np.int64)
        Pk = self.P[:, self.kept].astype(np.float64)

        if live.size:
            Yz = (Y[train][:, live] - Y[:, live].mean(axis=0)) / sd_all[live]
            Xz = _zscore_train(Pk[train])
            W, Xy = _enet_weights(Xz, Yz, lam, alpha, tol)
            ranked = _rank(W, Xy, ranking, min(Pk.shape[1], candidates * (max_concepts + 1)))
            sel, weights, bias, val_r = _greedy(Pk, Y[:, live], train, val, ranked, max_concepts, min_gain,
                                                candidates)
        out = []
        where = {int(u): i for i, u in enumerate(live)}
        for col, u in enumerate(unit_ids):
            extra = {"split": [float(f) for f in split], "split_seed": int(seed), "ranking": ranking}
            i = where.get(col)
            if i is None:
                reason = ("constant activation" if self.kept.size else
                          "no concept passes LinEx's filter (top-5 mean P >= 0.5, std >= 1e-5)")
                out.append(Explanation(unit=int(u), method="linex", formula=None, iou=None, length=0,
                                       layer=layer, metrics={"val_r": 0.0},
                                       extra={"concepts": [], "weights": [], "bias": float(Y[:, col].mean()),
                                              "reason": reason, **extra}))
                continue
            k = int((sel[i] >= 0).sum())
            order = np.argsort(-weights[i, :k], kind="stable")  # the anchor's table: largest weight first
            cons = [self.names[int(self.kept[sel[i, j]])] for j in order]
            ws = [float(weights[i, j]) for j in order]
            out.append(Explanation(unit=int(u), method="linex", formula=format_linear(cons, ws), iou=None,
                                   length=k, layer=layer, metrics={"val_r": float(val_r[i])},
                                   extra={"concepts": cons, "weights": ws, "bias": float(bias[i]), **extra}))
        return out


# ---------------------------------------------------------------------------------------------------------
# elastic net and ranking


def _zscore_train(X: np.ndarray) -> np.ndarray:
    mu = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    return np.where(sd > 0, (X - mu) / np.where(sd > 0, sd, 1.0), 0.0)


def _enet_weights(Xz: np.ndarray, Yz: np.ndarray, lam: float, alpha: float, tol: float):
    """Elastic-net weights [C, U] at lam / max(alpha, 0.001), l1_ratio alpha (intercept free) and
    X^T y_c [C, U]."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import enet_path

    C = Xz.shape[1]
    Yc = Yz - Yz.mean(axis=0)
    XyT = np.ascontiguousarray(Yc.T @ Xz)                 # [U, C]
    YcT = np.ascontiguousarray(Yc.T)
    Xf = np.asfortranarray(Xz - Xz.mean(axis=0))
    gram = np.ascontiguousarray(Xf.T @ Xf) if C <= _GRAM_LIMIT else False   # once for every unit
    W = np.zeros((C, Yz.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for u in range(Yz.shape[1]):
            _, coefs, _ = enet_path(Xf, YcT[u], l1_ratio=alpha, alphas=[lam / max(alpha, 1e-3)],
                                    precompute=gram, Xy=XyT[u] if gram is not False else None,
                                    check_input=False, tol=tol, max_iter=10000)
            W[:, u] = coefs[:, 0]
    return W, XyT.T


def _rank(W: np.ndarray, Xy: np.ndarray, ranking: str, R: int) -> np.ndarray:
    """Concept ranking [U, R]: by |w| (or w) descending, ties by |X^T y| (or X^T y), then concept order."""
    C = W.shape[0]
    idx = np.broadcast_to(np.arange(C)[:, None], W.shape)
    if ranking == "abs":
        order = np.lexsort((idx, -np.abs(Xy), -np.abs(W)), axis=0)
    else:
        order = np.lexsort((idx, -Xy, -W), axis=0)
    return np.ascontiguousarray(order[:R].T)


# ---------------------------------------------------------------------------------------------------------
# the greedy search, batched over units


def _greedy(P: np.ndarray, Y: np.ndarray, train, val, ranked: np.ndarray, max_concepts: int, min_gain: float,
            candidates: int):
    """Batched greedy search. Returns selected concepts [U, max_concepts] (-1 pad, columns of P),
    weights [U, max_concepts], bias [U], val r [U]."""
    U, R = ranked.shape
    per_batch = U if P.shape[1] <= _GREEDY_CONCEPTS else max(1, _GREEDY_CONCEPTS // R)
    sel = np.full((U, max_concepts), -1, np.int64)
    weights = np.zeros((U, max_concepts))
    bias = np.zeros(U)
    best_r = np.zeros(U)
    for s in range(0, U, per_batch):
        part = slice(s, min(U, s + per_batch))
        union, local = np.unique(ranked[part], return_inverse=True)
        local = local.reshape(ranked[part].shape)
        res = _greedy_batch(P[:, union], Y[:, part], train, val, local, max_concepts, min_gain, candidates)
        sel_local, weights[part], bias[part], best_r[part] = res
        sel[part] = np.where(sel_local >= 0, union[np.maximum(sel_local, 0)], -1)
    return sel, weights, bias, best_r


def _greedy_batch(P, Y, train, val, ranked, max_concepts, min_gain, candidates):
    U, R = ranked.shape
    Xt, Xv = P[train], P[val]
    mu_t = Xt.mean(axis=0)
    Xtc = Xt - mu_t
    G = Xtc.T @ Xtc                                        # train covariance of the concepts [m, m]
    yt_mean = Y[train].mean(axis=0)
    B = Xtc.T @ (Y[train] - yt_mean)                       # [m, U]
    Yv = Y[val]
    XvT = np.ascontiguousarray(Xv.T)                       # [m, n_val]
    status = np.zeros((U, R), np.int8)                     # 0 open, 1 selected, 2 rejected
    sel = np.full((U, max_concepts), -1, np.int64)
    weights = np.zeros((U, max_concepts))
    bias = yt_mean.copy()
    best_r = np.zeros(U)
    active = np.ones(U, bool)
    for step in range(max_concepts):
        openr = status == 0
        window = openr & (np.cumsum(openr, axis=1) <= candidates)
        active &= window.any(axis=1)
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        pos = np.argsort(~window[a], axis=1, kind="stable")[:, :candidates]  # window positions, in rank order
        valid = np.take_along_axis(window[a], pos, axis=1)                   # [A, W]
        cand = np.take_along_axis(ranked[a], pos, axis=1)                    # concept (local) per candidate
        A, Wn = cand.shape
        idx = np.concatenate([np.broadcast_to(sel[a, None, :step], (A, Wn, step)), cand[:, :, None]], axis=2)
        w = _solve(G[idx[..., :, None], idx[..., None, :]], B[idx, a[:, None, None]])   # [A, W, k]
        b = yt_mean[a, None] - np.einsum("awk,awk->aw", mu_t[idx], w)
        r = np.empty((A, Wn))
        step_a = max(1, _PREDICTION_BUDGET // (8 * Wn * (step + 1) * XvT.shape[1]))
        for c in range(0, A, step_a):
            part = slice(c, c + step_a)
            # predictions on the val split [a, W, n_val]
            pred = np.matmul(w[part, :, None, :], XvT[idx[part]])[:, :, 0, :] + b[part, :, None]
            m = pred.shape[0]
            r[part] = pearson_columns(pred.reshape(m * Wn, -1).T,
                                      np.repeat(Yv[:, a[part]], Wn, axis=1)).reshape(m, Wn)
        r = np.where(valid, r, -np.inf)
        if step == 0:
            ok = valid
        else:
            gain = r - best_r[a, None]
            reject = valid & (gain < min_gain)
            ri, rj = np.nonzero(reject)
            status[a[ri], pos[ri, rj]] = 2
            ok = valid & ~reject
        has = ok.any(axis=1)
        j = np.where(ok, r, -np.inf).argmax(axis=1)                              # first best
        active[a[~has]] = False
        a, j = a[has], j[has]
        ah = np.flatnonzero(has)
        status[a, pos[ah, j]] = 1
        sel[a, step] = cand[ah, j]
        weights[a, :step + 1] = w[ah, j]
        bias[a] = b[ah, j]
        best_r[a] = r[ah, j]
    return sel, weights, bias, best_r


def _solve(G: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Least-squares weights of the batched normal equations G w = B ([..., k, k], [..., k]), minimum norm
    where G is singular (collinear or constant concepts)."""
    try:
        w = np.linalg.solve(G, B[..., None])[..., 0]
        resid = np.abs(np.einsum("...ij,...j->...i", G, w) - B).max(axis=-1)
        scale = np.abs(G).max(axis=(-2, -1)) * np.abs(w).max(axis=-1) + np.abs(B).max(axis=-1)
        bad = ~(np.isfinite(w).all(axis=-1) & (resid <= 1e-8 * np.maximum(scale, 1e-300)))
    except np.linalg.LinAlgError:
        w = np.zeros(B.shape)
        bad = np.ones(B.shape[:-1], bool)
    if bad.any():
        w[bad] = np.einsum("nij,nj->ni", np.linalg.pinv(G[bad], rcond=1e-10, hermitian=True), B[bad])
    return w


# ---------------------------------------------------------------------------------------------------------
# scores and output


def pearson_columns(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of X and Y ([n, k] each) -> float64 [k]; 0 where either is
    constant (spread <= 1e-12 of its magnitude)."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    xc = X - X.mean(axis=0)
    yc = Y - Y.mean(axis=0)
    sx = np.sqrt((xc * xc).sum(axis=0))
    sy = np.sqrt((yc * yc).sum(axis=0))
    n = np.sqrt(X.shape[0])
    const = ((sx <= 1e-12 * n * np.abs(X).max(axis=0, initial=0.0))
             | (sy <= 1e-12 * n * np.abs(Y).max(axis=0, initial=0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=0) / (sx * sy)
    return np.where(const, 0.0, np.clip(r, -1.0, 1.0))


def simulation_r(explanations: Sequence[Explanation], P2: np.ndarray, names2: Sequence[str],
                 unit_acts: np.ndarray, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """LinEx's simulation score, float64 [len(explanations)]: per explanation (in order), the Pearson r
    on ``rows`` (the test split) between sum_k w_k P2(c_k|x) + bias and the activation of its unit
    (column ``unit`` of unit_acts [n_images, n_units]).

    P2 [n_images, C2]: concept probabilities from another VLM, names2 its concept names. rows: >= 2
    image indices. A constant prediction (an explanation without concepts) or a constant activation
    gives r = 0.
    """
    P2, col, acts, rows = _sim_inputs(P2, names2, unit_acts, rows)
    used = sorted({c for e in explanations for c in e.extra.get("concepts", [])})
    missing = [c for c in used if c not in col]
    if missing:
        raise InputError(f"names2 lacks {len(missing)} concept(s) the explanations use: {missing[:5]}")
    where = {c: i for i, c in enumerate(used)}
    Wm = np.zeros((len(used), len(explanations)))
    bias = np.zeros(len(explanations))
    units = np.zeros(len(explanations), np.int64)
    for i, e in enumerate(explanations):
        cons, ws = e.extra.get("concepts", []), e.extra.get("weights", [])
        if len(cons) != len(ws):
            raise InputError(f"explanation of unit {e.unit}: {len(cons)} concepts but {len(ws)} weights")
        for c, w in zip(cons, ws):
            Wm[where[c], i] += w
        bias[i] = e.extra.get("bias", 0.0)
        units[i] = _unit_column(e.unit, acts.shape[1])
    Pr = P2[rows][:, [col[c] for c in used]] if used else np.zeros((len(rows), 0))
    pred = Pr @ Wm + bias
    return pearson_columns(pred, acts[rows][:, units])


def label_simulation_r(labels: Sequence[str | None], P2: np.ndarray, names2: Sequence[str],
                       unit_acts: np.ndarray, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Simulation score of one-concept labels (Network Dissection, CLIP-Dissect), float64 [n_units]:
    per unit (column of unit_acts [n_images, n_units], len(labels) == n_units), the Pearson r on
    ``rows`` between P2(label|x) and the activation. P2 [n_images, C2] and names2 as in
    :func:`simulation_r`. A None label, a constant P2 column or a constant activation gives r = 0."""
    P2, col, acts, rows = _sim_inputs(P2, names2, unit_acts, rows)
    labels = list(labels)
    if len(labels) != acts.shape[1]:
        raise InputError(f"{len(labels)} labels for the {acts.shape[1]} units of unit_acts")
    missing = [lab for lab in labels if lab is not None and lab not in col]
    if missing:
        raise InputError(f"names2 lacks {len(missing)} label(s): {sorted(set(missing))[:5]}")
    has = np.array([lab is not None for lab in labels])
    pred = np.zeros((len(rows), len(labels)))
    if has.any():
        pred[:, has] = P2[rows][:, [col[lab] for lab in labels if lab is not None]]
    return pearson_columns(pred, acts[rows])


def format_linear(concepts: Sequence[str], weights: Sequence[float]) -> str | None:
    """"0.83*sky + 0.41*red - 0.30*room" (weights with 2 decimals, in the given order); None when empty."""
    if not concepts:
        return None
    parts = []
    for i, (c, w) in enumerate(zip(concepts, weights)):
        mag = f"{abs(w):.2f}*{c}"
        parts.append((("-" if w < 0 else "") + mag) if i == 0 else ((" - " if w < 0 else " + ") + mag))
    return "".join(parts)


def write_linex_table(path: str | os.PathLike, explanations: Iterable[Explanation]) -> None:
    """The anchor's LinEx table, atomically: ``layer, unit, val correlation, weight0, concept0, ...,
    weight9, concept9, bias`` (the anchor interleaves weight_i, concept_i; more pairs if an explanation
    is longer than 10); concepts largest weight first; empty slots written as the anchor does, 0 and 0."""
    explanations = list(explanations)
    slots = max([10] + [len(e.extra.get("concepts", [])) for e in explanations])
    header = ["layer", "unit", "val correlation"]
    for i in range(slots):
        header += [f"weight{i}", f"concept{i}"]
    header.append("bias")
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for e in explanations:
            cons, ws = e.extra.get("concepts", []), e.extra.get("weights", [])
            row = [e.layer or "", e.unit, e.metrics.get("val_r", 0.0)]
            for i in range(slots):
                row += [ws[i], cons[i]] if i < len(cons) else [0, 0]
            row.append(e.extra.get("bias", 0.0))
            w.writerow(row)


# ---------------------------------------------------------------------------------------------------------
# input checks


def _sim_inputs(P2, names2, unit_acts, rows):
    P2 = finite_2d(P2, "P2")
    names2 = [str(n) for n in names2]
    if len(names2) != P2.shape[1]:
        raise InputError(f"P2 has {P2.shape[1]} concept columns but {len(names2)} names2 were given")
    check_names(names2, "names2")
    acts = finite_2d(unit_acts, "unit_acts")
    if acts.shape[0] != P2.shape[0]:
        raise InputError(f"unit_acts has {acts.shape[0]} image rows but P2 has {P2.shape[0]}")
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.size < 2 or not np.issubdtype(rows.dtype, np.integer):
        raise InputError(f"rows must be a 1-d array of >= 2 image indices, got shape {rows.shape}, "
                         f"dtype {rows.dtype}")
    if rows.min() < 0 or rows.max() >= P2.shape[0]:
        raise InputError(f"rows: index outside the {P2.shape[0]} images")
    return P2, {n: i for i, n in enumerate(names2)}, acts, rows


def _unit_column(unit, n_units: int) -> int:
    if not 0 <= int(unit) < n_units:
        raise InputError(f"explanation of unit {unit}: unit_acts has only {n_units} units")
    return int(unit)


def _check_params(lam, alpha, max_concepts, min_gain, candidates, ranking):
    if not (np.isfinite(lam) and lam > 0):
        raise InputError(f"lam must be > 0, got {lam}")
    if not 0 < alpha <= 1:
        raise InputError(f"alpha (the L1 share) must lie in (0, 1], got {alpha}")
    for name, v in (("max_concepts", max_concepts), ("candidates", candidates)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    if not np.isfinite(min_gain):
        raise InputError(f"min_gain must be finite, got {min_gain}")
    if ranking not in ("abs", "signed"):
        raise InputError(f"ranking must be 'abs' or 'signed' (the anchor's), got {ranking!r}")
