"""The embedded vision-language models: tiny CLIPs trained on the synthetic concept world.

``load_vlm("default")`` and ``load_vlm("default-2")`` are tiny CLIPs built by open_clip's own model
classes from configs shipped in ``neurcore/labels/vlm_configs`` (a ModifiedResNet vision tower
reading 64-pixel images upsampled to 128, so that its stride-2 stem works at the images' own
resolution, and a ViT with 8-pixel patches at 64), trained contrastively (Radford et al., "Learning
Transferable Visual Models From Natural Language Supervision", ICML 2021) on the synthetic world's
images and random crops with captions computed from their exact concept masks
(:mod:`neurcore.probe.captions`), once, then cached under :func:`neurcore._io.cache_dir`. The
second one (other architecture, other seeds) is the independent VLM of LinEx's simulation score.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_path, cache_dir
from ..errors import InputError
from ..probe import SyntheticWorld
from ..probe.captions import Captioner
from ._vlm import OpenClipVLM, VisionLanguageModel, concept_prompt
from ._vlm_quality import CALIBRATION_SEED, fit_calibration

if TYPE_CHECKING:
    import torch

__all__ = ["TINY_CLIPS", "DEFAULT_VLMS", "TinyClip", "load_vlm", "tiny_clip", "train_tiny_clip"]


@dataclass(frozen=True)
class TinyClip:
    """An embedded tiny CLIP: its open_clip config, cache file and seeds."""

    config: str         # open_clip config name (neurcore/labels/vlm_configs/<config>.json)
    file: str           # cache file under neurcore._io.cache_dir()
    world_seed: int     # synthetic world of its training images
    seed: int           # weight initialisation, crops and caption draws
    steps: int          # optimizer steps (TRAIN_BATCH crops each): about 2.5 minutes on 2 CPU cores


TINY_CLIPS = {
    "resnet": TinyClip("neurcore-tiny-resnet", "tiny-clip-resnet-v1.pt", world_seed=5202, seed=22,
                       steps=600),
    "vit": TinyClip("neurcore-tiny-vit", "tiny-clip-vit-v1.pt", world_seed=5101, seed=11, steps=1000),
}
#: ``default`` is the better of the two (ModifiedResNet: convolutions see the textures and shapes of
#: small objects that the 8-pixel patches of the tiny ViT mostly miss); ``default-2`` is LinEx's second
#: VLM.
DEFAULT_VLMS = {"default": "resnet", "default-2": "vit"}
#: Preprocessing of the tiny CLIPs: a crop is squashed to 64 x 64 whole (captions describe all of it).
_TINY_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "resize_mode": "squash",
                    "interpolation": "bilinear"}
TRAIN_IMAGES = 3000
WORLD_SIZE = 64  # the synthetic world's default image size (the default probe's)
WHOLE_SHARE = 0.25        # training samples that are whole images
OBJECT_CROP_SHARE = 0.25  # ... crops around an object; the rest random crops
TRAIN_BATCH = 64
TRAIN_LR = 2e-3


def load_vlm(name: str = "default", weights: str | None = None, *, progress: bool = True,
             device: str | torch.device = "cpu",
             calibration: tuple[float, float] | None = None) -> VisionLanguageModel:
    """``default`` (tiny CLIP, ModifiedResNet), ``default-2`` (the independent tiny CLIP, ViT),
    both trained and cached on first use, or any open_clip architecture by name with ``weights``
    (a local file or directory; random seeded weights without; the tiny CLIPs take none).

    progress: a progress bar while a tiny CLIP trains. device: where the model runs.
    calibration: LinEx's (a, b), replacing the model's own (see :class:`OpenClipVLM`).
    """
    if name in DEFAULT_VLMS:
        if weights:
            raise InputError(f"--weights: the {name} vision-language model brings its own weights")
        vlm = tiny_clip(DEFAULT_VLMS[name], progress=progress)
        if calibration:
            vlm.calibration = (float(calibration[0]), float(calibration[1]))
        return vlm.to(device)
    return OpenClipVLM(name, weights, calibration=calibration, device=device)


def tiny_clip(variant: str = "resnet", *, progress: bool = True) -> OpenClipVLM:
    """The embedded tiny CLIP ``resnet`` or ``vit``: trained on first use (under three minutes on
    2 CPU cores), then read from ``cache_dir()/tiny-clip-<variant>-v1.pt``."""
    spec = _tiny_spec(variant)
    path = os.path.join(cache_dir(), spec.file)
    if not os.path.isfile(path):
        vlm, info = train_tiny_clip(variant, progress=progress)
        with atomic_path(path) as tmp:
            _save_tiny(vlm, info, tmp)
    return OpenClipVLM(spec.config, path, preprocess_cfg=_TINY_PREPROCESS,
                       cache_key=os.path.splitext(spec.file)[0])


def _tiny_spec(variant: str) -> TinyClip:
    if variant not in TINY_CLIPS:
        raise InputError(f"tiny CLIP {variant!r}: expected one of {', '.join(TINY_CLIPS)}")
    return TINY_CLIPS[variant]


def _save_tiny(vlm: OpenClipVLM, info: dict, path: str) -> None:
    import torch

    torch.save({"state_dict": vlm.model.state_dict(), "calibration": list(vlm.calibration),
                "config": vlm.name, "train": info}, path)


def train_tiny_clip(variant: str = "resnet", *, steps: int | None = None, n_images: int = TRAIN_IMAGES,
                    batch_size: int = TRAIN_BATCH, lr: float = TRAIN_LR, calibration_images: int = 500,
                    progress: bool = True) -> tuple[OpenClipVLM, dict]:
    """Trains a tiny CLIP from its seeds; returns (vlm with fitted calibration, training info).

    Data: ``n_images`` synthetic-world images (64 px, the variant's own world
    seed), generated once, then drawn each step as crops: a quarter whole
    images, a quarter squares of 25-60% of the side around a random object
    pixel (as SIEVE's crops), the rest a quarter to all of each side with
    aspect 3:4 to 4:3; mirrored half the time. Each crop is captioned from its
    own exact masks (:class:`~neurcore.probe.captions.Captioner`: a concept
    counts when it covers >= 1% of the crop; augmented: random phrase subsets
    and orders, dropped adjectives, 40% one bare concept word).

    Loss, with the model's ``logit_scale`` (CLIP's symmetric InfoNCE), the mean of:
    image -> text and text -> image over the batch's captions plus one foil per
    caption (the caption with one object's texture, shape or colour, or its word,
    swapped so that it is false: hard negatives); and text -> image for every
    concept prompt (:func:`concept_prompt`) over the batch's crops, the
    zero-shot use itself. Targets spread over every text that is true of a crop
    (all its phrases are), so a one-word caption ``"sky"`` is no negative of the
    other crops with sky; with no such duplicates and no foils the first two
    terms are CLIP's loss exactly. AdamW (weight decay on matrices only), linear
    warm-up over 5% of the steps, then cosine decay; ``logit_scale`` clamped to
    ln 100. ``steps`` defaults to the variant's (about three minutes on 2 CPU
    cores, image generation included); small values serve tests.
    Calibration: :func:`fit_calibration` on ``calibration_images`` held-out images.
    """
    import torch
    from tqdm import tqdm

    spec = _tiny_spec(variant)
    steps = spec.steps if steps is None else int(steps)
    if steps < 1 or n_images < 1 or batch_size < 2:
        raise InputError(f"train_tiny_clip: need steps >= 1, n_images >= 1, batch_size >= 2; got "
                         f"{steps}, {n_images}, {batch_size}")
    started = time.perf_counter()
    vlm = OpenClipVLM(spec.config, None, seed=spec.seed, preprocess_cfg=_TINY_PREPROCESS,
                      cache_key=f"{spec.config}-training")
    model = vlm.model
    world = SyntheticWorld(n_images=n_images, size=WORLD_SIZE, seed=spec.world_seed)
    captioner = Captioner(world.concept_names, world.concept_categories)
    bar = tqdm(total=n_images + steps, desc=f"tiny CLIP ({variant})", unit="step", disable=not progress,
               leave=False)
    images = np.zeros((n_images, world.size, world.size, 3), np.uint8)
    atoms = np.zeros((n_images, world.size, world.size), np.int16)
    scenes = np.zeros(n_images, np.int64)
    for i in range(n_images):
        images[i], masks = world.sample(i)
        scenes[i], atoms[i] = captioner.atom_map(masks)
        if i % 100 == 99 or i == n_images - 1:
            bar.update(i + 1 - bar.n)
    rng = np.random.default_rng([spec.seed, 1])
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) /
                                                                              max(1, steps - warmup))))
    model.train()
    losses = []
    flush_denormal = torch.set_flush_denormal(True)  # tiny weights and gradients go denormal: slow on CPUs
    try:
        _fit(model, vlm, images, atoms, scenes, captioner, opt, sched, steps, batch_size, rng, spec.seed, bar,
             losses)
    finally:
        if flush_denormal:
            torch.set_flush_denormal(False)
    bar.close()
    model.eval()
    train_seconds = time.perf_counter() - started
    vlm.calibration = fit_calibration(vlm, n_images=calibration_images)
    info = {"steps": steps, "n_images": n_images, "batch_size": batch_size, "lr": lr,
            "world_seed": spec.world_seed, "seed": spec.seed, "train_seconds": round(train_seconds, 1),
            "final_loss": float(np.mean(losses[-20:])), "calibration_images": calibration_images,
            "calibration_seed": CALIBRATION_SEED}
    return vlm, info


def _fit(model, vlm, images, atoms, scenes, captioner, opt, sched, steps, batch_size, rng, seed, bar, losses):
    """The contrastive training loop of :func:`train_tiny_clip` (multi-positive symmetric InfoNCE)."""
    import torch

    def text_to_image(logits, pos):
        """Multi-positive InfoNCE of texts (rows of logits.T) over the crops; texts true of no crop
        (foils, absent concepts) have no target and are left out."""
        pos_t, logits_t = pos.T[pos.sum(0) > 0], logits.T[pos.sum(0) > 0]
        return -(torch.log_softmax(logits_t, 1) * pos_t / pos_t.sum(1, keepdim=True)).sum(1).mean()

    prompts = vlm.tokenizer([concept_prompt(c) for c in captioner.concept_names])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(steps):
            crops, texts, positive, _, present = _training_batch(images, atoms, scenes, captioner, batch_size,
                                                                 rng)
            img, txt, scale = model(vlm.preprocess(crops), torch.cat([vlm.tokenizer(texts), prompts]))[:3]
            txt, words = txt[: len(texts)], txt[len(texts):]
            logits = scale * img @ txt.T                       # [crops, texts]
            pos = torch.from_numpy(positive).float()
            loss_i = -(torch.log_softmax(logits, 1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
            loss_t = text_to_image(logits, pos)
            # Every concept prompt ranks every crop: the zero-shot use, trained in every step.
            loss_w = text_to_image(scale * img @ words.T, torch.from_numpy(present).float())
            loss = (loss_i + loss_t + loss_w) / 3
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")


def _training_batch(images, atoms, scenes, captioner: Captioner, batch_size: int, rng, foils: bool = True):
    """(crops: list of uint8 [h, w, 3], texts, positive bool [B, T]: text j true of crop i,
    owner int [T]: the crop text j was written for, present bool [B, n_concepts]: concepts of each crop).

    texts: one augmented caption per crop (text i belongs to crop i), then, with ``foils``, the
    foils of those captions (:meth:`Captioner.caption_and_foil`) as hard negatives."""
    n, s = images.shape[:2]
    crops, texts, truth, said, foil_texts, foil_said, foil_owner = [], [], [], [], [], [], []
    for b, i in enumerate(rng.integers(n, size=batch_size)):
        u = rng.random()
        if u < WHOLE_SHARE:
            y0, x0, h, w = 0, 0, s, s
        elif u < WHOLE_SHARE + OBJECT_CROP_SHARE and (atoms[i] >= captioner.n_stuff_atoms).any():
            # around an object, as SIEVE crops
            ys, xs = np.nonzero(atoms[i] >= captioner.n_stuff_atoms)
            k = int(rng.integers(len(ys)))
            h = w = round(s * rng.uniform(0.25, 0.6))
            y0 = int(np.clip(ys[k] - h // 2, 0, s - h))
            x0 = int(np.clip(xs[k] - w // 2, 0, s - w))
        else:
            h = round(s * rng.uniform(0.25, 1.0))
            w = int(np.clip(round(h * math.exp(rng.uniform(-0.29, 0.29))), s // 4, s))
            y0, x0 = int(rng.integers(s - h + 1)), int(rng.integers(s - w + 1))
        crop = images[i, y0 : y0 + h, x0 : x0 + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        d = captioner.describe(int(scenes[i]), captioner.atom_counts(atoms[i, y0 : y0 + h, x0 : x0 + w]))
        if foils:
            (text, ids), foil = captioner.caption_and_foil(d, rng)
        else:
            (text, ids), foil = captioner.caption(d, rng), None
        crops.append(np.ascontiguousarray(crop))
        texts.append(text)
        truth.append(captioner.truth(d))
        said.append(ids)
        if foil is not None:
            foil_texts.append(foil[0])
            foil_said.append(foil[1])
            foil_owner.append(b)
    said_matrix = np.zeros((len(said) + len(foil_said), captioner.n_phrases), np.float32)
    for row, ids in enumerate(said + foil_said):
        said_matrix[row, ids] = 1
    false_of = (~np.stack(truth)).astype(np.float32)           # [B, phrases]: phrase false of crop i
    positive = (false_of @ said_matrix.T) == 0                 # [B crops, texts]
    owner = np.array(list(range(len(texts))) + foil_owner)
    present = np.stack(truth)[:, : len(captioner.concept_names)]
    return crops, texts + foil_texts, positive, owner, present
