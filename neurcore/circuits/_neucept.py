"""NeuCEPT: critical neurons with a precision guarantee, and the mechanisms they reveal (Vu, Nguyen,
Thai, ICDM 2022; https://arxiv.org/abs/2209.08448; anchor repo vunhatminh/NeuCEPT).

Works on arrays: ``X`` [n_samples, n_neurons] is a layer's activations over a data set (channels
averaged over space) and ``y`` [n_samples] the logit of the class explained.

Critical neurons (:func:`critical_neurons`). Model-X knockoffs from ``knockpy``, as the anchor
(``KnockoffFilter(ksampler="gaussian", fstat=...)``): Gaussian knockoffs of the activations, a
coefficient difference ``W_j = |b_j| - |b~_j|``, and the knockoff+ threshold, which keeps the
false discovery rate at most ``fdr``. Repeated ``n_runs`` times with fresh knockoffs (and rows,
with ``max_samples``); a neuron's score is the fraction of runs that select it. Practicalities:

- The statistic defaults to the debiased lasso (``"dlasso"``), not the anchor's cross-validated
  lasso (``"lasso"``, still available). Channels of a layer are related to each other non-linearly,
  which Gaussian knockoffs do not reproduce, and the lasso's shrinkage lets a null channel that
  stands in for signal channels win over its knockoff. On the zeroed planted circuit (conv4, where
  the class logit depends on 12 known channels only, so every other channel is an exact null), one
  run on each of 40 independent data sets of 1,000 images at fdr 0.1
  (``benchmarks/bench_neucept_fdr.py``): the lasso's false discovery proportion averaged
  0.159 +- 0.022 (standard error; above the target), the debiased lasso's 0.083 +- 0.010, recall
  1.00 for both; the null channels chosen most are the same two for both. On Gaussian data both
  control the FDR (0.080 and 0.066); the debiased lasso has less power there (recall 0.64 against
  0.78).

- Constant neurons (zero variance, e.g. dead ReLU channels) are never selectable: they are dropped
  before the knockoffs and indices are mapped back; their frequency is 0.
- ``X`` and ``y`` are standardised (z-scores over all rows).
- The covariance is the Ledoit-Wolf shrinkage estimate (knockpy's default) over all rows; it is
  positive definite even when ``X`` is rank deficient or ``n_samples < n_neurons``. The knockoff
  S-matrix (``knockoff_method``, default "mvr", knockpy's default: minimum variance-based
  reconstructability, solved by coordinate descent) is computed once and shared by the runs.
  Highly correlated neurons get knockoffs close to themselves, which costs power. Exact copies
  break the Gaussian model: the shrunk estimate puts their correlation below 1 (0.9 in a test
  with 70 neurons), a signal's selections split between its copies, and the copy counts as a
  false discovery; remove duplicate neurons first if that matters.
- Model-X knockoffs do not need ``n_samples >= 2 n_neurons`` (fixed-X knockoffs do, and are not
  used); the FDR guarantee rests on the covariance estimate, so with fewer than two samples per
  neuron a warning says that control is approximate.
- knockoff+ cannot select fewer than ``1 / fdr`` neurons (at ``fdr=0.1``, at least 10; at the
  anchor's 0.02 for hidden layers, at least 50): below that it selects none. ``knockoff_plus=False``
  uses the plain knockoff threshold (knockpy's ``offset=0``), which controls only the modified
  FDR ``E[V / (R + 1/fdr)]`` but can select fewer.
- knockpy draws from numpy's global random state: each run seeds it and the caller's state is
  restored afterwards (not thread safe).

Mechanisms (:func:`mechanisms`): the samples clustered by the raw activations of the critical
neurons (KMeans, Gaussian mixture or agglomerative clustering, as the anchor; k up to 30), scored
by :func:`label_entropy`, the entropy of fine-grained labels within each mechanism.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..clustering import CLUSTER_METHODS, cluster, cluster_by_silhouette
from ..errors import InputError

__all__ = ["CriticalNeurons", "Mechanisms", "critical_neurons", "label_entropy", "mechanisms", "STATISTICS",
           "SAMPLERS", "KNOCKOFF_METHODS", "CLUSTER_METHODS"]

STATISTICS = ("dlasso", "lasso", "lsm", "ridge", "ols", "margcorr")
SAMPLERS = ("gaussian",)
KNOCKOFF_METHODS = ("mvr", "mmi", "sdp", "equicorrelated")
MIN_SAMPLES = 10  # the lasso statistic cross-validates over 5 folds


@dataclass
class CriticalNeurons:
    """Critical neurons of one layer for one class output (:func:`critical_neurons`)."""

    frequency: np.ndarray  # float [n_neurons]: fraction of runs that selected each neuron
    selected: np.ndarray  # int [k]: frequency >= min_frequency, by frequency desc then index
    runs: list[np.ndarray]  # int [k_r] per run: the neurons that run selected, ascending
    fdr: float  # target false discovery rate of each run
    statistic: str
    sampler: str
    n_runs: int
    min_frequency: float
    knockoff_method: str = "mvr"
    knockoff_plus: bool = True
    constant: np.ndarray | None = None  # int: the zero-variance neurons, never selectable


@dataclass
class Mechanisms:
    """Samples grouped by the activation pattern of critical neurons (:func:`mechanisms`)."""

    labels: np.ndarray  # int [n_samples]: the mechanism (cluster) of each sample, 0..k-1
    k: int
    centers: np.ndarray  # float [k, len(neurons)]: each mechanism's center, raw activations
    neurons: np.ndarray  # int [len(neurons)]: the columns of X that were clustered
    method: str = "kmeans"
    silhouette: np.ndarray | None = None  # float [len(ks)] score of each k tried, when k was chosen
    ks: np.ndarray | None = None  # int: the k tried, when k was chosen


# ------------------------------------------------------------------ validation
def _matrix(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"{name} must be a 2-D array [n_samples, n_neurons], got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise InputError(f"{name} must be a numeric array, got dtype {X.dtype} (shape {X.shape})")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise InputError(f"{name} (shape {X.shape}) has NaN or inf values, "
                         f"first at {tuple(int(i) for i in bad)}")
    return X


def _vector(y, n: int, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"{name} must have shape ({n},) to match X's rows, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {y.dtype} (shape {y.shape})")
    y = y.astype(np.float64, copy=False)
    if not np.isfinite(y).all():
        raise InputError(f"{name} (shape {y.shape}) has NaN or inf values, "
                         f"first at {int(np.argmin(np.isfinite(y)))}")
    return y


def _integer(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _choice(value, name: str, choices) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# ------------------------------------------------------------------ critical neurons
@contextlib.contextmanager
def _numpy_global_seed(seed: int):
    """Seed numpy's global random state (knockpy draws from it) and restore the caller's after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _knockpy_hints_silenced():
    """Silence the install hints knockpy repeats on every call; other warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*scikit-dsdp package is not installed")
        warnings.filterwarnings("ignore", message=r"(?s).*choldate")
        yield


def _s_matrix(sigma: np.ndarray, method: str) -> np.ndarray:
    """knockpy's S-matrix [p, p] for Gaussian knockoffs of covariance ``sigma`` [p, p], made to satisfy
    ``2 sigma - S > 0`` and ``2 S - S sigma^-1 S > 0`` with margin, so sampling never has to repair it."""
    from knockpy import smatrix, utilities

    kwargs = {"dsdp_warning": False} if method == "sdp" else {}
    S = smatrix.compute_smatrix(sigma, method=method, **kwargs)
    # Shrink S until the knockoff conditional covariance 2S - S sigma^-1 S is safely positive definite.
    inv = np.linalg.inv(sigma)
    for _ in range(30):
        V = 2 * S - S @ inv @ S
        if utilities.calc_mineig(V) > 1e-6 * float(np.mean(np.diag(S)) + 1e-12):
            break
        S = 0.95 * S
    return S


def _check_arguments(X, y, fdr, n_runs, min_frequency, statistic, sampler, knockoff_method, seed,
                     max_samples) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(X float64 [n, c], y float64 [n], n_runs, seed, rows per run) after checking every argument of
    :func:`critical_neurons`, in the order of its signature, then the data's size and spread."""
    X = _matrix(X)
    n = X.shape[0]
    y = _vector(y, n)
    if isinstance(fdr, bool) or not isinstance(fdr, (int, float, np.floating)) or not 0 < fdr < 1:
        raise InputError(f"fdr must be a number in (0, 1), got {fdr!r}")
    n_runs = _integer(n_runs, "n_runs", 1)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, (int, float, np.floating)) or not (
        0 < min_frequency <= 1
    ):
        raise InputError(f"min_frequency must be a number in (0, 1], got {min_frequency!r}")
    _choice(statistic, "statistic", STATISTICS)
    _choice(sampler, "sampler", SAMPLERS)
    _choice(knockoff_method, "knockoff_method", KNOCKOFF_METHODS)
    seed = _integer(seed, "seed", 0)
    rows_per_run = n if max_samples is None else min(n, _integer(max_samples, "max_samples", MIN_SAMPLES))
    if n < MIN_SAMPLES:
        raise InputError(f"X has {n} samples (shape {X.shape}); knockoffs need at least {MIN_SAMPLES}")
    if np.ptp(y) == 0:
        raise InputError(f"y (shape {y.shape}) is constant: no neuron can explain it")
    return X, y, n_runs, seed, rows_per_run


def _warn_few_samples(rows_per_run: int, n_kept: int) -> None:
    """Warn, at the caller of :func:`critical_neurons`, that FDR control is only approximate."""
    if rows_per_run < 2 * n_kept:
        warnings.warn(
            f"critical_neurons: {rows_per_run} samples per run for {n_kept} non-constant neurons "
            "(fewer than 2 per neuron): the covariance is a Ledoit-Wolf shrinkage estimate and FDR "
            "control is only approximate; use more samples for the guarantee",
            UserWarning,
            stacklevel=3,
        )


def _standardised(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the columns of Z and of y, over all rows."""
    return (Z - Z.mean(axis=0)) / Z.std(axis=0), (y - y.mean()) / y.std()


def _knockoff_model(Z: np.ndarray, knockoff_method: str, setup: np.random.SeedSequence):
    """(sigma, S): the Ledoit-Wolf covariance [p, p] of Z's columns and the knockoff S-matrix [p, p],
    computed once and shared by the runs."""
    from knockpy import utilities

    # The S-matrix solvers may draw from numpy's global random state.
    with _numpy_global_seed(int(setup.generate_state(1)[0])), _knockpy_hints_silenced():
        sigma, _ = utilities.estimate_covariance(Z, tol=1e-2, shrinkage="ledoitwolf")
        S = _s_matrix(sigma, knockoff_method)
    return sigma, S


def _knockoff_run(Z, t, sigma, S, child: np.random.SeedSequence, rows_per_run: int, *, fdr, statistic: str,
                  sampler: str, knockoff_plus: bool) -> np.ndarray:
    """One run: fresh knockoffs (and rows, when ``rows_per_run`` is below Z's), the statistic W, and the
    knockoff(+) threshold; the indices (columns of Z) of the selected neurons, ascending."""
    from knockpy import knockoff_stats
    from knockpy.knockoff_filter import KnockoffFilter

    n, p = Z.shape
    fstat_kwargs = {"y_dist": "gaussian"} if statistic in ("lasso", "lsm") else {}
    run_seed, rows_seed = child.generate_state(2)
    rows = np.arange(n)
    if rows_per_run < n:
        rows = np.sort(np.random.default_rng(rows_seed).choice(n, rows_per_run, replace=False))
    with _numpy_global_seed(int(run_seed)), _knockpy_hints_silenced():
        kfilter = KnockoffFilter(fstat=statistic, ksampler=sampler, knockoff_kwargs={"S": S})
        kfilter.forward(X=Z[rows], y=t[rows], mu=np.zeros(p), Sigma=sigma, fdr=fdr, fstat_kwargs=fstat_kwargs)
    W = np.asarray(kfilter.W, np.float64)
    threshold = knockoff_stats.data_dependent_threshhold(W, fdr=fdr, offset=1 if knockoff_plus else 0)
    return np.flatnonzero((W >= threshold) & (W > 0))


def _selected(frequency: np.ndarray, min_frequency: float) -> np.ndarray:
    """int: the neurons selected at least ``min_frequency`` of the time, by frequency desc then index."""
    order = np.lexsort((np.arange(len(frequency)), -frequency))
    return order[frequency[order] >= min_frequency].astype(np.int64)


def critical_neurons(
    X: np.ndarray,
    y: np.ndarray,
    *,
    fdr: float = 0.1,
    n_runs: int = 10,
    statistic: str = "dlasso",
    sampler: str = "gaussian",
    min_frequency: float = 0.5,
    seed: int = 0,
    max_samples: int | None = None,
    knockoff_method: str = "mvr",
    knockoff_plus: bool = True,
) -> CriticalNeurons:
    """Critical neurons of a layer for a class logit: model-X knockoffs at target FDR ``fdr``, repeated.

    NeuCEPT's critical-neuron step (Vu, Nguyen, Thai, "NeuCEPT: Locally Discover Neural Networks'
    Mechanism via Critical Neurons Identification with Precision Guarantee", arXiv:2209.08448).
    X: float [n_samples, n_neurons], a layer's activations; y: float [n_samples], the class logit.
    fdr: target false discovery rate of each run, in (0, 1). n_runs: knockoff runs, each with its
    own knockoffs (seeded from ``seed``) and, if ``max_samples`` is set and smaller than n_samples,
    its own random subset of that many rows. statistic: knockpy feature statistic, one of
    ``STATISTICS`` ("dlasso": debiased lasso coefficient difference, see the module docstring;
    "lasso": the cross-validated lasso, the anchor's).
    sampler: "gaussian" (model-X Gaussian knockoffs). min_frequency: in (0, 1], the selection
    frequency a neuron needs to be in ``selected``. knockoff_method: knockpy's S-matrix method,
    one of ``KNOCKOFF_METHODS``. knockoff_plus: True for knockoff+ (FDR control; selects nothing
    or at least 1/fdr neurons), False for the plain knockoff threshold (modified FDR).
    See the module docstring for how constant neurons, rank-deficient covariances and few
    samples are handled. Warns (UserWarning) when there are fewer than 2 samples per neuron.

    Returns a :class:`CriticalNeurons`: each neuron's selection frequency over the runs, the
    neurons selected, and each run's selection.
    """
    X, y, n_runs, seed, rows_per_run = _check_arguments(X, y, fdr, n_runs, min_frequency, statistic, sampler,
                                                        knockoff_method, seed, max_samples)
    c = X.shape[1]
    spread = np.ptp(X, axis=0)
    constant, kept = np.flatnonzero(spread == 0), np.flatnonzero(spread > 0)
    settings = {"fdr": float(fdr), "statistic": statistic, "sampler": sampler, "n_runs": n_runs,
                "min_frequency": float(min_frequency), "knockoff_method": knockoff_method,
                "knockoff_plus": bool(knockoff_plus), "constant": constant}
    if len(kept) == 0:
        runs = [np.zeros(0, np.int64) for _ in range(n_runs)]
        return CriticalNeurons(frequency=np.zeros(c), selected=np.zeros(0, np.int64), runs=runs, **settings)
    _warn_few_samples(rows_per_run, len(kept))

    Z, t = _standardised(X[:, kept], y)
    setup, *children = np.random.SeedSequence(seed).spawn(n_runs + 1)
    sigma, S = _knockoff_model(Z, knockoff_method, setup)
    runs = []
    counts = np.zeros(c)
    for child in children:
        chosen = kept[_knockoff_run(Z, t, sigma, S, child, rows_per_run, fdr=fdr, statistic=statistic,
                                    sampler=sampler, knockoff_plus=knockoff_plus)]
        runs.append(chosen.astype(np.int64))
        counts[chosen] += 1
    frequency = counts / n_runs
    return CriticalNeurons(frequency=frequency, selected=_selected(frequency, min_frequency), runs=runs,
                           **settings)


# ------------------------------------------------------------------ mechanisms
def mechanisms(X: np.ndarray, neurons: Sequence[int] | np.ndarray, *, k: int | None = None,
               method: str = "kmeans", max_k: int = 30, seed: int = 0) -> Mechanisms:
    """Mechanisms: the samples of X [n_samples, n_neurons] clustered by the raw activations of
    ``neurons`` (int [m], e.g. ``critical_neurons(...).selected``), as in the anchor.

    method: "kmeans" (10 inits), "gmm" (full covariances) or "agglomerative" (Ward), scikit-learn,
    ``random_state=seed``. k: the number of mechanisms; None picks the k in 2..min(max_k,
    n_samples - 1) with the best silhouette score (on at most
    :data:`neurcore.clustering.SILHOUETTE_SAMPLES` samples).
    """
    X = _matrix(X)
    n, c = X.shape
    idx = np.asarray(neurons)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"neurons must be a non-empty 1-D integer array, got shape {idx.shape} "
                         f"dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= c:
        raise InputError(f"neurons must index X's {c} columns (X shape {X.shape}); "
                         f"got values {idx.min()}..{idx.max()}")
    method = _choice(method, "method", CLUSTER_METHODS)
    seed = _integer(seed, "seed", 0)
    Z = X[:, idx]
    silhouette = ks = None
    if k is None:
        max_k = _integer(max_k, "max_k", 2)
        ks = np.arange(2, min(max_k, n - 1) + 1)
        if len(ks) == 0:
            raise InputError(f"X has {n} samples (shape {X.shape}); "
                             "choosing k by silhouette needs at least 3")
        k, labels, centers, silhouette = cluster_by_silhouette(Z, ks, method, seed)
    else:
        k = _integer(k, "k", 1)
        if k > n:
            raise InputError(f"k={k} exceeds the {n} samples of X (shape {X.shape})")
        labels, centers = cluster(Z, k, method, seed)
    return Mechanisms(labels=labels, k=k, centers=np.asarray(centers, np.float64),
                      neurons=idx.astype(np.int64), method=method, silhouette=silhouette, ks=ks)


def label_entropy(labels: Sequence[int] | np.ndarray, fine_labels: Sequence | np.ndarray, *,
                  weighted: bool = True) -> float:
    """Entropy (bits) of ``fine_labels`` [n] within each mechanism of ``labels`` [n], averaged over
    mechanisms weighted by their size (the paper's evaluation: low means each mechanism holds one
    fine-grained class). ``weighted=False`` gives the anchor's plain mean over mechanisms."""
    labels, fine = np.asarray(labels), np.asarray(fine_labels)
    if labels.ndim != 1 or fine.shape != labels.shape or labels.size == 0:
        raise InputError(
            "labels and fine_labels must be non-empty 1-D arrays of one length, "
            f"got shapes {labels.shape} and {fine.shape}"
        )
    _, cluster = np.unique(labels, return_inverse=True)
    _, fine = np.unique(fine, return_inverse=True)
    table = np.zeros((cluster.max() + 1, fine.max() + 1))
    np.add.at(table, (cluster, fine), 1)
    sizes = table.sum(axis=1)
    prob = table / sizes[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(prob > 0, prob * np.log2(prob), 0.0).sum(axis=1)
    weights = sizes / sizes.sum() if weighted else np.full(len(sizes), 1 / len(sizes))
    return float(max(weights @ entropy, 0.0))
