"""Verification of neuron explanations by generated images: one verifier for every labelling method.

An explanation of a unit (a concept, a phrase, a formula) is turned into
images by a generator (:class:`~neurcore.labels.Generator`); the unit's
activations on them are compared with its activations on the probe:

* **Activation Rate** (SIEVE, "Select, Hypothesize and Verify: Towards
  Verified Neuron Concept Interpretation"): the fraction of
  generated images on which the unit exceeds its top-1% activation threshold
  on the probe (:func:`probe_thresholds`, :func:`activation_rate`); the mean
  over hypotheses is filtered by discarding those below the initial mean
  (:func:`mean_activation_rate_filtered`).
* **CoSy** (Kopf et al., "CoSy: Evaluating Textual Explanations of Neurons",
  NeurIPS 2024): the ROC-AUC with which the unit's activation separates
  generated images (positives) from probe "control" images (negatives), and
  the Mean Activation Difference MAD = (mean_gen - mean_ctrl) / std_ctrl
  (:func:`cosy_scores`).

All metric functions are vectorized over units: activations are float arrays
[n_images, U] (one column per unit, a scalar per image, e.g. the spatial mean
of a conv channel), and scores come back as float64 [U].
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_path
from ..activations import planted_maps
from ..errors import InputError
from ..models import as_maps, hooked
from ._generate import Generator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..distributed import ShardEngine
    from ..models import ModelSpec

__all__ = ["Verifier", "activation_rate", "cosy_scores", "mean_activation_rate_filtered", "probe_thresholds"]


def _as_acts(x, name: str, *, min_rows: int = 1) -> np.ndarray:
    """float64 [n, U] from [n, U] (or [n] for one unit); finite values and at least ``min_rows`` rows."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not a numeric array ({e})") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"{name}: expected activations [n_images, n_units], got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise InputError(f"{name}: need at least {min_rows} image(s), got shape {a.shape}")
    if a.shape[1] < 1:
        raise InputError(f"{name}: no units (shape {a.shape})")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: activations contain NaN or infinity")
    return a


def probe_thresholds(probe_acts: ArrayLike, top: float = 0.01) -> np.ndarray:
    """The per-unit activation threshold of the top ``top`` fraction of the probe (SIEVE's "Top 1%").

    probe_acts: [n_images, U] activations on the probe set. Returns float64 [U],
    the (1 - top) quantile of each column (numpy's default linear
    interpolation between order statistics).
    """
    if not 0.0 < float(top) < 1.0:
        raise InputError(f"probe_thresholds: top must be a fraction in (0, 1), got {top}")
    acts = _as_acts(probe_acts, "probe_thresholds: probe_acts")
    return np.quantile(acts, 1.0 - float(top), axis=0)


def activation_rate(generated: ArrayLike, thresholds: ArrayLike) -> np.ndarray | float:
    """SIEVE's Activation Rate: the fraction of generated images on which the unit fires strongly.

    AR_u = (1 / n_gen) * sum_i 1[a_u(x_i) > t_u] (strict >), with t_u the
    unit's top-1% threshold on the probe (:func:`probe_thresholds`).

    generated: [n_gen, U] activations on the images generated for each unit's
    hypothesis (column u belongs to unit u's hypothesis); thresholds: [U].
    Returns float64 [U] in [0, 1]; for 1-D ``generated`` [n_gen] (one unit)
    and a scalar threshold, a float.
    """
    one_unit = np.ndim(generated) == 1
    gen = _as_acts(generated, "activation_rate: generated")
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.shape != (gen.shape[1],):
        raise InputError(f"activation_rate: thresholds must have one value per unit ({gen.shape[1]}), "
                         f"got shape {np.shape(thresholds)}")
    if np.isnan(t).any():
        raise InputError("activation_rate: thresholds contain NaN")
    rate = (gen > t).mean(axis=0)
    return float(rate[0]) if one_unit else rate


def mean_activation_rate_filtered(rates: ArrayLike) -> tuple[float, np.ndarray, float]:
    """SIEVE's mean Activation Rate with its filter: hypotheses whose AR is below the initial mean AR
    are discarded and the mean is recomputed over the retained ones.

    rates: [H] Activation Rates of H hypotheses (NaN marks one that could not
    be verified: it is neither counted nor kept). Returns (initial_mean,
    kept bool [H], final_mean). A rate equal to the mean is kept (compared
    with a relative tolerance of 1e-12, so that equal rates are all kept
    despite rounding in the mean).
    """
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    valid = ~np.isnan(r)
    if not valid.any():
        raise InputError(f"mean_activation_rate_filtered: no (non-NaN) activation rates among {r.size}")
    initial = float(r[valid].mean())
    kept = valid & (r >= initial - 1e-12 * max(1.0, abs(initial)))
    final = float(r[kept].mean())
    return initial, kept, final


def cosy_scores(generated: ArrayLike, control: ArrayLike, *,
                zero_std: float = np.nan) -> tuple[np.ndarray, np.ndarray]:
    """CoSy's scores per unit (Kopf et al., "CoSy: Evaluating Textual Explanations of Neurons",
    NeurIPS 2024): (auc float64 [U], mad float64 [U]).

    generated: [n_gen, U] activations on the images generated from each unit's
    explanation (positives, label 1); control: [n_ctrl, U] activations on
    control images, the probe set (negatives, label 0).

    * AUC: ROC-AUC of separating generated from control by the unit's
      activation, ties counted half, i.e. the Mann-Whitney U statistic of the
      generated sample divided by n_gen * n_ctrl; computed from mid-ranks of
      the pooled column, all units at once (equals
      ``sklearn.metrics.roc_auc_score`` per unit).
    * MAD: (mean_gen - mean_ctrl) / std_ctrl with the population std (ddof 0)
      of the control activations. Where std_ctrl == 0 (a unit constant on the
      probe, e.g. a dead ReLU) MAD is undefined: it is 0.0 when every
      generated activation equals that constant too (identical samples), and
      ``zero_std`` otherwise (NaN by default; pass e.g. 0.0 for NaN-free
      scores, as JSON results need).
    """
    from scipy.stats import rankdata

    gen = _as_acts(generated, "cosy_scores: generated")
    ctrl = _as_acts(control, "cosy_scores: control")
    if gen.shape[1] != ctrl.shape[1]:
        raise InputError(f"cosy_scores: generated has {gen.shape[1]} units but control has "
                         f"{ctrl.shape[1]} (shapes {gen.shape}, {ctrl.shape})")
    n_gen, n_ctrl = gen.shape[0], ctrl.shape[0]
    ranks = rankdata(np.concatenate([gen, ctrl]), method="average", axis=0)
    u_gen = ranks[:n_gen].sum(axis=0) - n_gen * (n_gen + 1) / 2.0
    auc = u_gen / (n_gen * n_ctrl)

    diff = gen.mean(axis=0) - ctrl.mean(axis=0)
    std = ctrl.std(axis=0)
    # A constant column can have a tiny float std from rounding in its mean: treat it as exactly 0.
    constant = (ctrl == ctrl[:1]).all(axis=0)
    std[constant] = 0.0
    mad = np.empty_like(diff)
    ok = std > 0
    mad[ok] = diff[ok] / std[ok]
    same = ~ok & (gen == ctrl[:1]).all(axis=0)  # identical constant samples: no difference at all
    mad[~ok] = float(zero_std)
    mad[same] = 0.0
    return auc, mad


# --------------------------------------------------------------------------------------------------
# The model-driven verifier (generate -> activations -> the metrics above) follows below.


class Verifier:
    """One verifier for every labelling method: the Activation Rate (SIEVE) and CoSy's AUC and MAD of
    any explanation of a layer's units, from images a generator makes of it.

    spec: the :class:`~neurcore.models.ModelSpec`; layer: its layer; probe_scores: the units'
    per-image activations on the probe [n_images, U] (thresholds: their top ``top`` quantile,
    ``self.thresholds`` float64 [U]; the CoSy control set: the probe). generator: a
    :class:`~neurcore.labels.Generator`.
    Per explanation (prompt), ``n_images`` images are generated once (with ``seed``) and the whole
    layer is run on them, ``batch_size`` at a time; the scores of every unit are cached in
    ``cache_dir`` (one ``.npz`` per prompt, written atomically, with the first ``keep_images``
    images), so every method naming the same concept shares them and a rerun regenerates nothing.
    Planted units of ``spec`` are computed from the generated images' exact concept maps when the
    generator gives them (the synthetic world), and are NaN (not scored) otherwise. engine: where
    :meth:`prefetch` generates (a Ray cluster, one task per prompt); None: here, as prompts are scored.
    """

    def __init__(self, spec: ModelSpec, layer: str, probe_scores: np.ndarray, generator: Generator, *,
                 n_images: int = 50, seed: int = 0, top: float = 0.01, cache_dir: str | None = None,
                 batch_size: int = 64, keep_images: int = 6, engine: ShardEngine | None = None):
        self.spec, self.layer, self.generator = spec, layer, generator
        self.engine = engine
        self.probe_scores = np.asarray(probe_scores, dtype=np.float32)
        self.thresholds = probe_thresholds(self.probe_scores, top)
        self.n_images, self.seed = int(n_images), int(seed)
        self.batch_size, self.keep_images = batch_size, keep_images
        self.cache_dir = cache_dir
        self.planted = [u for u in spec.planted if u.layer == layer]
        self._memo: dict[str, dict] = {}
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    def cache_path(self, prompt: str) -> str | None:
        """The file caching ``prompt``'s generated images and scores (keyed by the generator, the number of
        images, the seed and the prompt), or None without a ``cache_dir``."""
        if not self.cache_dir:
            return None
        ident = json.dumps([self.generator.describe(), self.n_images, self.seed, prompt], sort_keys=True)
        key = hashlib.sha1(ident.encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, f"{key}.npz")

    def prefetch(self, prompts: Iterable[str | None]) -> None:
        """Generate and score, on :attr:`engine` (a :class:`~neurcore.distributed.ShardEngine`: a task per
        prompt, on a GPU where the cluster has them), the ``prompts`` not yet cached, and cache them as
        :meth:`generated` would; without an engine, nothing (they are generated when first scored)."""
        if self.engine is None:
            return
        todo = [p for p in dict.fromkeys(prompts) if p is not None and p not in self._memo and
                not os.path.isfile(self.cache_path(p) or "")]
        if not todo:
            return
        alone = copy.copy(self)  # what a worker needs: no engine, no memo
        alone.engine, alone._memo = None, {}
        for call, got in self.engine.map_tasks(_generate_task, [{"prompt": p} for p in todo],
                                               {"verifier": alone}, "generate", gpu=True):
            self._store(call["prompt"], got)

    def generated(self, prompt: str) -> dict:
        """The generated images of ``prompt`` and the layer's scores on them, from the cache when there:
        {"scores": float32 [n_images, U] or None, "images": uint8 [k, H, W, 3] (the first
        ``keep_images``), "error": why the generator could not draw the prompt, or None}."""
        if prompt in self._memo:
            return self._memo[prompt]
        path = self.cache_path(prompt)
        if path and os.path.isfile(path):
            with np.load(path, allow_pickle=False) as z:
                got = {"scores": z["scores"] if z["scores"].size else None, "images": z["images"],
                       "error": str(z["error"]) or None}
        else:
            got = self._generate(prompt)
            self._store(prompt, got)
        self._memo[prompt] = got
        return got

    def _store(self, prompt: str, got: dict) -> None:
        """Keep ``got`` (what :meth:`_generate` made of ``prompt``) in memory and in the cache file."""
        path = self.cache_path(prompt)
        if path:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                scores = np.zeros(0, np.float32) if got["scores"] is None else got["scores"]
                np.savez(f, scores=scores, images=got["images"], error=np.array(got["error"] or ""),
                         prompt=np.array(prompt))
        self._memo[prompt] = got

    def _generate(self, prompt: str) -> dict:
        import torch

        try:
            if self.planted and hasattr(self.generator, "generate_with_maps"):
                images, cmaps = self.generator.generate_with_maps(prompt, self.n_images, self.seed)
            else:
                images, cmaps = self.generator.generate(prompt, self.n_images, self.seed), None
        except InputError as exc:  # a prompt the generator cannot draw: recorded, not fatal
            return {"scores": None, "images": np.zeros((0, 1, 1, 3), np.uint8), "error": str(exc)}
        module = self.spec.module
        device = next(module.parameters(), torch.zeros(0)).device
        chunks = []
        with torch.no_grad(), hooked(module, [self.layer]) as outputs:
            for s in range(0, len(images), self.batch_size):
                batch = images[s : s + self.batch_size]
                module(self.spec.preprocess(batch).to(device))
                maps = as_maps(outputs[self.layer]).float()
                scores = maps.mean(dim=(2, 3)).cpu().numpy()
                if self.planted:
                    if cmaps is not None:
                        extra = planted_maps(self.planted, cmaps[s : s + len(batch)],
                                             self.generator.world.concept_names, tuple(maps.shape[2:]),
                                             first_image=10_000_000 + s, seed=self.seed + 1)
                        extra = extra.mean(axis=(2, 3))
                    else:
                        extra = np.full((len(batch), len(self.planted)), np.nan, np.float32)
                    scores = np.concatenate([scores, extra], axis=1)
                chunks.append(scores.astype(np.float32))
        scores = np.concatenate(chunks)
        if scores.shape[1] != self.probe_scores.shape[1]:
            raise InputError(f"verifier: layer {self.layer} has {scores.shape[1]} units on generated images "
                             f"but {self.probe_scores.shape[1]} on the probe")
        return {"scores": scores, "images": np.asarray(images[: self.keep_images]), "error": None}

    def score(self, prompt: str | None, units: Iterable[int]) -> list[dict]:
        """Per unit of ``units`` (column indices of ``probe_scores``), in order: {"activation_rate",
        "cosy_auc", "cosy_mad"} of ``prompt`` (None values when the prompt is None, cannot be
        generated, or the unit is not scorable on generated images), plus "error" when the generator
        could not draw it."""
        units = [int(u) for u in units]
        empty = {"activation_rate": None, "cosy_auc": None, "cosy_mad": None}
        if prompt is None:
            return [dict(empty) for _ in units]
        got = self.generated(prompt)
        if got["scores"] is None:
            return [dict(empty, error=got["error"]) for _ in units]
        gen = got["scores"][:, units]
        finite = np.isfinite(gen).all(axis=0)
        safe = np.where(finite[None, :], gen, 0.0)
        ar = activation_rate(safe, self.thresholds[units])
        auc, mad = cosy_scores(safe, self.probe_scores[:, units])
        out = []
        for k in range(len(units)):
            if not np.isfinite(gen[:, k]).all():  # a planted unit without concept maps: not scorable
                out.append(dict(empty))
            else:  # MAD of a unit constant on the probe is undefined: recorded as missing
                out.append({"activation_rate": float(ar[k]), "cosy_auc": float(auc[k]),
                            "cosy_mad": float(mad[k]) if np.isfinite(mad[k]) else None})
        return out


def _generate_task(verifier: Verifier, *, prompt: str) -> dict:
    """One prompt's generated images and the layer's scores on them, on a worker (the model on its GPU
    when it has one)."""
    import torch

    if torch.cuda.is_available():
        verifier.spec.module.to("cuda")
    return verifier._generate(prompt)
