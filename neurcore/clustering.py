"""Clustering shared by the method families (scikit-learn underneath): k clusters by KMeans, a
Gaussian mixture or Ward's agglomerative clustering, or the k with the best silhouette score.

NeuCEPT's mechanisms, NeurFlow's semantic and neuron groups and SIEVE's hypotheses all cluster
vectors this way.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .errors import InputError

__all__ = ["CLUSTER_METHODS", "SILHOUETTE_SAMPLES", "cluster", "cluster_by_silhouette", "ward_silhouette"]

CLUSTER_METHODS = ("kmeans", "gmm", "agglomerative")
SILHOUETTE_SAMPLES = 2000  # silhouette scores on at most this many samples (it is O(n^2))


def cluster(Z: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels int64 [n] and centers [k, d] of ``Z`` [n, d] in ``k`` clusters.

    method: "kmeans" (10 inits), "gmm" (full covariances) or "agglomerative" (Ward);
    ``random_state=seed`` where the method draws at random.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(Z)
        return model.labels_.astype(np.int64), model.cluster_centers_
    if method == "gmm":
        model = GaussianMixture(n_components=k, covariance_type="full", random_state=seed).fit(Z)
        return model.predict(Z).astype(np.int64), model.means_
    if method != "agglomerative":
        raise InputError(f"method must be one of {', '.join(map(repr, CLUSTER_METHODS))}; got {method!r}")
    labels = AgglomerativeClustering(n_clusters=k).fit_predict(Z).astype(np.int64)
    return labels, np.stack([Z[labels == j].mean(axis=0) for j in range(k)])


def cluster_by_silhouette(Z: np.ndarray, ks: Sequence[int] | np.ndarray, method: str = "kmeans",
                          seed: int = 0) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Cluster ``Z`` [n, d] with each k of ``ks`` and keep the k of the best silhouette score.

    Returns (k, labels int64 [n], centers [k, d], silhouette float [len(ks)]); a k whose clustering
    has fewer than 2 or more than n - 1 distinct labels scores -inf. Silhouettes are computed on at
    most :data:`SILHOUETTE_SAMPLES` samples. Raises :class:`~neurcore.errors.InputError` when no k
    splits ``Z`` into two or more clusters.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    n = len(Z)
    ks = np.asarray(ks)
    silhouette = np.full(len(ks), -np.inf)
    fits = {}
    sample = SILHOUETTE_SAMPLES if n > SILHOUETTE_SAMPLES else None
    for i, kk in enumerate(ks):
        with warnings.catch_warnings():  # k above the number of distinct points: scored, then skipped
            warnings.filterwarnings("ignore", message="Number of distinct clusters",
                                    category=ConvergenceWarning)
            labels, centers = cluster(Z, int(kk), method, seed)
        if 2 <= len(np.unique(labels)) <= n - 1:
            silhouette[i] = silhouette_score(Z, labels, sample_size=sample, random_state=seed)
        fits[int(kk)] = labels, centers
    if not np.isfinite(silhouette).any():
        raise InputError(f"no k in 2..{ks[-1]} split the vectors (shape {Z.shape}) into 2+ clusters")
    k = int(ks[int(np.argmax(silhouette))])
    labels, centers = fits[k]
    return k, labels, centers, silhouette


def ward_silhouette(vectors: np.ndarray, max_k: int) -> tuple[np.ndarray, int]:
    """Ward agglomerative clustering of [n, d] vectors with k in 2..max_k picked by the silhouette
    score -> (labels int64 [n], k); fewer than 3 distinct vectors form one cluster each (or one
    cluster when they repeat)."""
    n = len(vectors)
    distinct = len(np.unique(np.round(vectors, 6), axis=0)) if n else 0
    if n < 3 or distinct < 3 or max_k < 2:
        return (np.arange(n) if distinct == n else np.zeros(n, dtype=np.int64)), (n if distinct == n else 1)
    ks = np.arange(2, min(min(max_k, distinct - 1), n - 1) + 1)
    k, labels, _, _ = cluster_by_silhouette(np.asarray(vectors, np.float64), ks, "agglomerative", seed=0)
    return labels, k
