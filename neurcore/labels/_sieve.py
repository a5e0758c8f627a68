"""SIEVE: select, hypothesize, verify ("Select, Hypothesize and Verify: Towards Verified Neuron
Concept Interpretation").

- **Select**: a unit is well-defined when the ratio of the 99th percentile to
  the median of its per-image activations exceeds ``tau`` (the paper's main
  table: 10; its sweep: 4-12); its top ``top_n`` (20) probe images are kept.
- **Hypothesize**: each top image is cropped to the region of the unit's
  highest activation, the crops are embedded by a vision-language model and
  clustered (Ward agglomerative, k by silhouette, scikit-learn); every concept
  of the vocabulary is scored per cluster by its mean cosine with the
  cluster's crops and the top ``top_k`` concepts of each cluster are the
  unit's hypotheses.
- **Verify**: images are generated for each hypothesis and its Activation
  Rate is the fraction of them on which the unit exceeds its top-1%
  threshold on the probe (:class:`neurcore.labels.Verifier`, the same
  verifier every method is scored by). Hypotheses below the layer's initial
  mean AR are discarded and the mean recomputed over the rest.

A unit's label is its hypothesis of highest Activation Rate (ties: the higher
cluster score). There is no public code of SIEVE; where the paper's text
leaves a value open (the crop size, k) the choice is a documented parameter.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..activations import unit_scores
from ..clustering import ward_silhouette
from ..errors import InputError
from ..results import Explanation, read_jsonl, write_jsonl
from ._verify import Verifier, mean_activation_rate_filtered
from ._vlm import VisionLanguageModel

if TYPE_CHECKING:
    from ..probe import Probe

__all__ = ["Sieve", "peak_crop_boxes", "selection_ratio", "top_samples"]


def selection_ratio(scores: np.ndarray) -> np.ndarray:
    """SIEVE's selectivity: 99th percentile over median of each unit's per-image activations,
    float [U] from scores [n_images, U]. A unit whose median is at most 0 while its 99th
    percentile is positive fires on few images only: its ratio is +inf; a unit whose 99th
    percentile is at most 0 never fires: 0."""
    scores = np.asarray(scores, dtype=np.float64)
    p99 = np.percentile(scores, 99, axis=0)
    med = np.median(scores, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(med > 0, p99 / np.where(med > 0, med, 1.0), np.inf)
    return np.where(p99 > 0, ratio, 0.0)


def top_samples(scores: np.ndarray, n: int = 20) -> np.ndarray:
    """Indices of each unit's ``n`` highest-scoring images, best first: int [U, n] (ties: lower index)."""
    scores = np.asarray(scores)
    n = min(n, len(scores))
    order = np.argsort(-scores, axis=0, kind="stable")[:n]
    return order.T.copy()


def peak_crop_boxes(maps: np.ndarray, image_size: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """Square crops around each map's highest activation: maps [n, h, w] -> int [n, 4] (y0, x0, y1, x1)
    in image pixels, of side ``fraction`` of the image's shorter side, moved inside the image.
    The peak is the centre of the map cell of highest value (first in row-major order on ties)."""
    if not 0 < fraction <= 1:
        raise InputError(f"crop fraction must lie in (0, 1], got {fraction}")
    maps = np.asarray(maps)
    n, h, w = maps.shape
    H, W = image_size
    side = max(1, round(fraction * min(H, W)))
    flat = maps.reshape(n, -1).argmax(axis=1)
    cy = (flat // w + 0.5) * H / h
    cx = (flat % w + 0.5) * W / w
    y0 = np.clip(np.round(cy - side / 2).astype(np.int64), 0, H - side)
    x0 = np.clip(np.round(cx - side / 2).astype(np.int64), 0, W - side)
    return np.stack([y0, x0, y0 + side, x0 + side], axis=1)


class Sieve:
    """SIEVE over one layer: ``Sieve(vlm, vocabulary, verifier).explain(acts, probe, ...)``.

    "Select, Hypothesize and Verify: Towards Verified Neuron Concept Interpretation"; the module
    doc gives the three steps and the values the paper leaves open.

    vlm: a :class:`~neurcore.labels.VisionLanguageModel` (crops are embedded with it).
    vocabulary: concept phrases (not empty); text_emb: their embeddings [C, D] (computed with
    ``vlm`` when None).
    verifier: a :class:`~neurcore.labels.Verifier` for the layer, or None to stop after hypothesizing.
    """

    def __init__(self, vlm: VisionLanguageModel, vocabulary: Iterable[str], verifier: Verifier | None = None,
                 *, text_emb: np.ndarray | None = None):
        self.vlm = vlm
        self.vocabulary = list(vocabulary)
        if not self.vocabulary:
            raise InputError("SIEVE: the vocabulary is empty")
        self.text_emb = np.asarray(text_emb if text_emb is not None else vlm.encode_text(self.vocabulary),
                                   dtype=np.float32)
        if self.text_emb.shape[0] != len(self.vocabulary):
            raise InputError(f"SIEVE: {self.text_emb.shape[0]} text embeddings for {len(self.vocabulary)} "
                             f"phrases")
        self.verifier = verifier

    def hypothesize(self, crops: np.ndarray, *, max_k: int = 5, top_k: int = 3) -> list[dict]:
        """Hypotheses from one unit's crops uint8 [n, S, S, 3]: per cluster (Ward, k <= ``max_k`` by
        silhouette) its top ``top_k`` concepts by mean cosine, as dicts {concept, cluster, size, score},
        one per distinct concept (kept from the cluster that scores it highest), best score first."""
        emb = np.asarray(self.vlm.encode_image(crops), dtype=np.float32)
        labels, k = ward_silhouette(emb, max_k)
        sims = emb @ self.text_emb.T  # [n, C]
        best: dict[str, dict] = {}
        for c in range(k):
            members = labels == c
            score = sims[members].mean(axis=0)
            for j in np.argsort(-score, kind="stable")[:top_k]:
                name = self.vocabulary[j]
                h = {"concept": name, "cluster": int(c), "size": int(members.sum()), "score": float(score[j])}
                if name not in best or h["score"] > best[name]["score"]:
                    best[name] = h
        return sorted(best.values(), key=lambda h: -h["score"])

    def explain(self, acts: np.ndarray, probe: Probe, *, scores: np.ndarray | None = None, tau: float = 10.0,
                top_n: int = 20, crop: float = 0.5, max_k: int = 5, top_k: int = 3,
                units: Sequence[int] | None = None, layer: str | None = None, parts_dir: str | None = None,
                progress: bool = False) -> list[Explanation]:
        """Explain units of a layer, one Explanation per unit in ``units`` (default all), in order.

        acts: maps [n_images, U, h, w] (a memmap is fine); scores: per-image activations
        [n_images, U] (default: the spatial mean of acts); probe: the images (``probe.images``).
        Units are selected by ``tau`` (:func:`selection_ratio`); unselected units get
        ``formula=None`` and their ratio. top_n: top images per unit; crop: the crops' side as a
        fraction of the image's shorter side (:func:`peak_crop_boxes`); max_k, top_k: as
        :meth:`hypothesize`. layer: the layer name recorded in each Explanation.
        parts_dir: where each unit's result is written as soon as it is known (a rerun reuses them, so
        an interrupted run does not redo verified hypotheses). The global mean-AR filter runs last.
        """
        from tqdm import tqdm

        acts = np.asarray(acts)  # a memmap stays on disk: asarray makes a view, not a copy
        if acts.ndim != 4:
            raise InputError(f"SIEVE: activations must be maps [n_images, units, h, w], "
                             f"got shape {acts.shape}")
        if scores is None:
            scores = unit_scores(acts)
        if scores.shape != acts.shape[:2]:
            raise InputError(f"SIEVE: scores {scores.shape} do not match activations {acts.shape[:2]}")
        if probe.n_images != len(scores):
            raise InputError(f"SIEVE: the probe has {probe.n_images} images, the activations {len(scores)}")
        units = list(range(acts.shape[1])) if units is None else [int(u) for u in units]
        ratio = selection_ratio(scores)
        tops = top_samples(scores, top_n)
        if parts_dir:
            os.makedirs(parts_dir, exist_ok=True)

        def part_file(u):
            return os.path.join(parts_dir, f"unit-{u:06d}.jsonl") if parts_dir else None

        done = {u: read_jsonl(part_file(u)) for u in units if part_file(u) and os.path.isfile(part_file(u))}
        # hypotheses of every selected unit first, so that the verifier can generate all their images at
        # once (on a cluster, with an engine), then each unit verified and written
        hyps = {u: self._hypotheses(u, acts, probe, tops[u], crop, max_k, top_k)
                for u in tqdm(units, desc=f"sieve {layer or ''}".strip(), disable=not progress, leave=False)
                if u not in done and ratio[u] > tau}
        if hasattr(self.verifier, "prefetch"):  # a Verifier; a stand-in may only score
            self.verifier.prefetch(h["concept"] for unit_hyps in hyps.values() for h in unit_hyps)
        out = []
        for u in units:
            if u in done:
                out.extend(done[u])
                continue
            r = self._explain_unit(u, ratio[u], tops[u], tau, hyps.get(u), layer)
            if part_file(u):
                write_jsonl(part_file(u), [r])
            out.append(r)
        _filter_by_mean(out)
        return out

    def _hypotheses(self, u, acts, probe, top, crop, max_k, top_k) -> list[dict]:
        """Unit ``u``'s hypotheses from crops of its ``top`` images around its peak activations."""
        images = np.stack([probe.images(int(i), int(i) + 1)[0] for i in top])
        maps = np.stack([np.asarray(acts[int(i), u], dtype=np.float32) for i in top])
        boxes = peak_crop_boxes(maps, images.shape[1:3], crop)
        crops = np.stack([im[y0:y1, x0:x1] for im, (y0, x0, y1, x1) in zip(images, boxes)])
        return self.hypothesize(crops, max_k=max_k, top_k=top_k)

    def _explain_unit(self, u, ratio, top, tau, hyps, layer) -> Explanation:
        selected = bool(ratio > tau)
        extra = {"ratio": float(ratio) if np.isfinite(ratio) else "inf", "selected": selected,
                 "top_samples": [int(i) for i in top]}
        if not selected:
            return Explanation(unit=u, method="sieve", formula=None, iou=None, layer=layer, extra=extra)
        extra["clusters"] = len({h["cluster"] for h in hyps})
        if self.verifier is not None:
            for h in hyps:
                h.update(self.verifier.score(h["concept"], [u])[0])
            hyps.sort(key=lambda h: (-(h["activation_rate"] if h["activation_rate"] is not None else -1.0),
                                     -h["score"]))
        extra["hypotheses"] = hyps
        best = hyps[0]
        metrics = {"similarity": best["score"]}
        for key in ("activation_rate", "cosy_auc", "cosy_mad"):
            if best.get(key) is not None:
                metrics[key] = best[key]
        return Explanation(unit=u, method="sieve", formula=best["concept"], iou=None, length=1, layer=layer,
                           metrics=metrics, extra=extra)


def _filter_by_mean(results: list[Explanation]) -> None:
    """SIEVE's verification filter over every hypothesis of the layer
    (:func:`neurcore.labels.mean_activation_rate_filtered`): those below the initial mean Activation
    Rate are marked ``retained: False``; each unit's extra records whether its label survived and
    the mean before and after."""
    hyps = [h for r in results for h in r.extra.get("hypotheses", []) if h.get("activation_rate") is not None]
    if not hyps:
        return
    initial, kept, final = mean_activation_rate_filtered(np.array([h["activation_rate"] for h in hyps]))
    for h, keep in zip(hyps, kept):
        h["retained"] = bool(keep)
    for r in results:
        if r.extra.get("hypotheses"):
            for h in r.extra["hypotheses"]:
                h.setdefault("retained", False)
            r.extra["retained"] = r.extra["hypotheses"][0]["retained"]
            r.extra["mean_activation_rate"] = {"initial": float(initial), "retained": float(final)}
