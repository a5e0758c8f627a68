"""How good a vision-language model's zero-shot labels are on the synthetic world, and its LinEx
calibration: concept-presence ROC-AUC, the number a label is only as good as."""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..probe import SyntheticWorld
from ..probe.captions import MIN_COVERAGE
from ._vlm import VisionLanguageModel, concept_prompt

__all__ = ["AUC_SEED", "CALIBRATION_SEED", "concept_auc", "auc_by_category", "fit_calibration"]

#: Held-out synthetic-world seeds: the default probe uses seed 0, the tiny CLIPs train on their own.
AUC_SEED = 7001
CALIBRATION_SEED = 7002


def _held_out(world, n_images: int, seed: int, size: int, min_coverage: float):
    """(images uint8 [n, s, s, 3], present bool [n, n_concepts], names, categories)."""
    if world is None:
        world = SyntheticWorld(n_images=n_images, size=size, seed=seed)
    if not hasattr(world, "concept_maps"):
        raise InputError(f"{getattr(world, 'name', 'probe')}: concept presence needs exact concept maps "
                         f"(a SyntheticWorld)")
    n = min(n_images, world.n_images)
    images, present = [], []
    for s in range(0, n, 256):
        e = min(n, s + 256)
        images.append(world.images(s, e))
        cov = world.concept_maps(s, e).mean(axis=(2, 3))
        present.append(cov >= min_coverage if min_coverage > 0 else cov > 0)
    return np.concatenate(images), np.concatenate(present), list(world.concept_names), \
        list(world.concept_categories)


def _cosines(vlm, images, names):
    return vlm.encode_image(images) @ vlm.encode_text([concept_prompt(c) for c in names]).T


def concept_auc(vlm: VisionLanguageModel, world: SyntheticWorld | None = None, n_images: int = 500,
                seed: int = AUC_SEED, *, min_coverage: float = MIN_COVERAGE) -> dict[str, float]:
    """Zero-shot concept presence, ROC-AUC per concept name: score = cos(image, text of
    :func:`concept_prompt`), truth = the concept covers >= ``min_coverage`` (a fraction of the
    pixels) of the image (exact masks). Images: ``world``'s first ``n_images`` or a fresh
    ``SyntheticWorld`` (64 px, ``seed``, held out from every training and probe seed). NaN where a
    concept is never or always present."""
    from sklearn.metrics import roc_auc_score

    images, present, names, _ = _held_out(world, n_images, seed, 64, min_coverage)
    cos = _cosines(vlm, images, names)
    out = {}
    for c, name in enumerate(names):
        y = present[:, c]
        out[name] = float(roc_auc_score(y, cos[:, c])) if 0 < y.sum() < len(y) else float("nan")
    return out


def auc_by_category(auc: dict[str, float], world: SyntheticWorld | None = None) -> dict[str, float]:
    """Mean AUC per concept category (and ``all``), NaNs left out; ``auc`` as :func:`concept_auc`
    returns it, categories from ``world`` (default: the synthetic world's; unknown names: ``other``)."""
    world = world or SyntheticWorld(n_images=1)
    cats = dict(zip(world.concept_names, world.concept_categories))
    out: dict[str, list] = {}
    for name, v in auc.items():
        if not math.isnan(v):
            out.setdefault(cats.get(name, "other"), []).append(v)
            out.setdefault("all", []).append(v)
    return {k: float(np.mean(v)) for k, v in out.items()}


def fit_calibration(vlm: VisionLanguageModel, world: SyntheticWorld | None = None, n_images: int = 500,
                    seed: int = CALIBRATION_SEED, *,
                    min_coverage: float = MIN_COVERAGE) -> tuple[float, float]:
    """LinEx calibration (a, b) of P(c|x) = sigmoid(a * (cos + b)) for ``vlm``.

    Logistic regression (scikit-learn, practically unregularised) of exact
    concept presence (the concept covers >= ``min_coverage`` of the image) on
    the cosine between the image and the concept's prompt (:func:`concept_prompt`),
    pooled over all concepts and ``n_images`` held-out synthetic-world images
    (``world``'s, or a fresh world of 64 px, ``seed``, distinct from every
    training and probe seed): the fitted logit w * cos + c gives a = w,
    b = c / w. The tiny CLIPs store theirs with their weights (``calibration``
    in the cached checkpoint).
    """
    from sklearn.linear_model import LogisticRegression

    images, present, names, _ = _held_out(world, n_images, seed, 64, min_coverage)
    cos = _cosines(vlm, images, names)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(cos.reshape(-1, 1), present.reshape(-1))
    w, c = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if abs(w) < 1e-9:
        raise InputError(f"{vlm.name}: cosines carry no presence signal, the calibration is undefined")
    return w, c / w
