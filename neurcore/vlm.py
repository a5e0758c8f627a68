"""Vision-language models: one small interface over open_clip, and the embedded tiny CLIPs.

- :class:`VisionLanguageModel`: ``encode_image`` (uint8 images of any size ->
  L2-normalised float32 [B, D]), ``encode_text`` (strings -> [T, D]),
  ``preprocess`` (resize + normalise with the model's mean/std) and the
  LinEx calibration ``(a, b)`` of P(c|x) = sigmoid(a * (cos(x, c) + b))
  (Oikarinen & Weng, ICML 2024).
- :class:`OpenClipVLM`: any open_clip architecture by name
  (``open_clip.create_model``), weights from a local file or directory
  (nothing can be downloaded here; without weights they are random but
  seeded, so every run draws the same).
- The embedded defaults, ``load_vlm("default")`` and ``load_vlm("default-2")``:
  tiny CLIPs built by open_clip's own model classes from configs shipped in
  ``neurcore/vlm_configs`` (a ModifiedResNet vision tower reading 64-pixel
  images upsampled to 128, so that its stride-2 stem works at the images' own
  resolution, and a ViT with 8-pixel patches at 64), trained
  contrastively on the synthetic world's images and random crops with
  captions computed from their exact concept masks
  (:mod:`neurcore.probe.captions`), once, then cached under
  ``neurcore.models.cache_dir()``. The second one (other architecture,
  other seeds) is the independent VLM of LinEx's simulation score.
- :func:`embed_images` / :func:`embed_texts`: embeddings cached on disk,
  computed once per model; :func:`concept_auc`: zero-shot concept-presence
  ROC-AUC on held-out images, the number a label is only as good as.

Zero-shot text for a concept: :func:`concept_prompt` (the bare concept word,
which is what the tiny CLIPs are trained on and what CLIP-Dissect encodes).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_path, write_json
from .errors import InputError
from .probe.captions import MIN_COVERAGE, Captioner

__all__ = [
    "CALIBRATION",
    "FALLBACK_CALIBRATION",
    "TINY_CLIPS",
    "OpenClipVLM",
    "VisionLanguageModel",
    "auc_by_category",
    "concept_auc",
    "concept_prompt",
    "embed_images",
    "embed_texts",
    "fit_calibration",
    "load_vlm",
    "tiny_clip",
    "train_tiny_clip",
]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vlm_configs")

#: LinEx calibration (a, b) of P(c|x) = sigmoid(a * (cos + b)) per open_clip architecture (SPEC, LinEx).
CALIBRATION = {
    "ViT-L-16-SigLIP-384": (60.0, -0.09),
    "ViT-SO400M-14-SigLIP-384": (58.0, -0.13),
    "ViT-L-14-336": (58.0, -0.25),
}
#: Other architectures, unless given ``calibration=``: CLIP ViT-L-14-336's constants. Fit your own
#: with :func:`fit_calibration` (on the synthetic world) or on labelled data of your domain.
FALLBACK_CALIBRATION = CALIBRATION["ViT-L-14-336"]

#: Held-out synthetic-world seeds: the default probe uses seed 0, the tiny CLIPs train on their own.
AUC_SEED = 7001
CALIBRATION_SEED = 7002
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
_PREFERRED_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                      "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                      "pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.pt")


def concept_prompt(name: str) -> str:
    """The text to encode for a concept in zero-shot use: the bare concept word (``"sky"``).

    The tiny CLIPs learn one-word captions of present concepts, and CLIP-Dissect
    encodes its vocabulary words as they are; use this for every method, so the
    image-text cosines of all methods come from the same text."""
    return name


# ----------------------------------------------------------------- open_clip
_REGISTERED = False


def _open_clip():
    """open_clip with neurcore's tiny configs registered (once)."""
    global _REGISTERED
    try:
        import open_clip
    except ImportError:
        raise InputError("vision-language models need open_clip: pip install 'neurcore[vision]'") from None
    if not _REGISTERED:
        open_clip.add_model_config(CONFIG_DIR)
        _REGISTERED = True
    return open_clip


@contextlib.contextmanager
def _quiet():
    """open_clip logs a warning for every model built without pretrained weights: the rule here."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


class VisionLanguageModel:
    """A vision-language model: images and texts into one space of L2-normalised vectors.

    Attributes: ``name``; ``image_size`` (pixels S of the square input); ``embed_dim`` (D);
    ``calibration`` (a, b) for P(c|x) = sigmoid(a * (cos + b)); ``device``; ``mean``/``std``
    (per channel, on [0, 1]); ``resize_mode`` (``squash``: resize to S x S; ``shortest``: shortest
    side to S, then centre crop; ``longest``: longest side to S, then pad); ``cache_key``
    (names on-disk embedding caches: it changes with the weights).
    Subclasses implement :meth:`_image_features` and :meth:`_text_features`.
    """

    name: str
    image_size: int
    embed_dim: int
    calibration: tuple[float, float]
    cache_key: str
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "squash"
    interpolation: str = "bilinear"
    device = "cpu"

    def _image_features(self, x):
        """Unnormalised image features [B, D] of preprocessed images x [B, 3, S, S] on ``device``."""
        raise NotImplementedError

    def _text_features(self, texts: list[str]):
        """Unnormalised text features [T, D]."""
        raise NotImplementedError

    # ----------------------------------------------------------- images
    def preprocess(self, images):
        """uint8 images [B, H, W, 3], or a list of uint8 [H, W, 3] of different sizes ->
        float tensor [B, 3, S, S]: resized (``resize_mode``, ``interpolation``) and normalised."""
        import torch

        if isinstance(images, (list, tuple)):
            if not images:
                return torch.zeros((0, 3, self.image_size, self.image_size))
            return torch.cat([self.preprocess(_as_images(im, single=True)) for im in images])
        images = _as_images(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        x = self._resize(x)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def _resize(self, x):
        import torch.nn.functional as F

        s = self.image_size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash" or h == w:
            size = (s, s)
        elif self.resize_mode == "shortest":
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
        else:  # longest
            scale = s / max(h, w)
            size = (max(1, min(s, round(h * scale))), max(1, min(s, round(w * scale))))
        if (h, w) != size:
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x, size=size, mode=mode, align_corners=False,
                              antialias=size[0] < h or size[1] < w).clamp_(0, 1)
        h, w = size
        if self.resize_mode == "shortest" and (h, w) != (s, s):
            top, left = (h - s) // 2, (w - s) // 2
            x = x[..., top : top + s, left : left + s]
        elif (h, w) != (s, s):  # longest: pad with black, centred
            top, left = (s - h) // 2, (s - w) // 2
            x = F.pad(x, (left, s - w - left, top, s - h - top), value=0.0)
        return x

    def encode_image(self, images, *, batch_size: int = 64) -> np.ndarray:
        """uint8 [B, H, W, 3] (any H, W; or a list of [H, W, 3]) -> float32 [B, D], L2-normalised."""
        import torch

        n = len(images)
        out = np.zeros((n, self.embed_dim), np.float32)
        with torch.no_grad():
            for s in range(0, n, batch_size):
                x = self.preprocess(images[s : s + batch_size]).to(self.device)
                out[s : s + len(x)] = _normalise(self._image_features(x)).float().cpu().numpy()
        return out

    def encode_text(self, texts: list[str], *, batch_size: int = 256) -> np.ndarray:
        """list of strings -> float32 [T, D], L2-normalised."""
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"encode_text: expected a list of strings, got {type(texts).__name__}"
                             + ("" if isinstance(texts, str) else " with non-string items"))
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        with torch.no_grad():
            for s in range(0, len(texts), batch_size):
                chunk = list(texts[s : s + batch_size])
                out[s : s + len(chunk)] = _normalise(self._text_features(chunk)).float().cpu().numpy()
        return out

    def to(self, device):
        """Moves the model to ``device`` (e.g. ``"cuda"``); returns self."""
        import torch

        self.device = torch.device(device)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, image_size={self.image_size}, embed_dim={self.embed_dim})"


def _normalise(t):
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _as_images(images, single: bool = False) -> np.ndarray:
    a = np.asarray(images)
    if single:
        if a.ndim != 3 or a.shape[-1] != 3:
            raise InputError(f"images: each image must be uint8 [H, W, 3], got shape {a.shape}")
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or min(a.shape[1:3], default=0) < 1:
        raise InputError(f"images: expected uint8 [B, H, W, 3], got {a.dtype} {a.shape}")
    return a


class OpenClipVLM(VisionLanguageModel):
    """An open_clip model by architecture name (``open_clip.list_models()``), with weights from
    a local file or directory.

    weights: a state dict (``.safetensors``, ``.bin``, ``.pt``/``.pth``; a checkpoint dict holding
    ``state_dict`` works too, and its ``calibration`` [a, b] is used when present), or a directory
    holding one (open_clip's file names preferred; a ``tokenizer.json`` beside it serves models
    with a Hugging Face tokenizer). None: random weights drawn with ``seed``.
    calibration: (a, b); default: the file's, else :data:`CALIBRATION` by name, else
    :data:`FALLBACK_CALIBRATION`.
    Preprocessing: the mean/std/resize mode of the architecture's published weights
    (``open_clip.get_pretrained_cfg``), else open_clip's defaults.
    """

    def __init__(self, name: str, weights: str | None = None, *, calibration=None, device="cpu", seed: int = 0,
                 preprocess_cfg: dict | None = None, cache_key: str | None = None):
        import torch

        open_clip = _open_clip()
        known = open_clip.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise InputError(f"vision-language model {name!r}: open_clip does not know it{hint} "
                             f"(open_clip.list_models() has {len(known)})")
        weights_file = _weights_file(weights) if weights else None
        pp = dict(_published_preprocess(open_clip, name))
        pp.update(preprocess_cfg or {})
        with _quiet(), torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=pp)
            except Exception as exc:  # open_clip raises many kinds for a config it cannot build
                raise InputError(f"vision-language model {name!r}: open_clip cannot build it here: {exc}") from None
        checkpoint = {}
        if weights_file:
            checkpoint = _load_weights(model, weights_file, name)
        model.eval()
        self.model = model.to(device)
        self.device = torch.device(device)
        self.tokenizer = _tokenizer(open_clip, name, weights)
        self.name = name
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.embed_dim = int(open_clip.get_model_config(name)["embed_dim"])
        cal = calibration or checkpoint.get("calibration") or CALIBRATION.get(name, FALLBACK_CALIBRATION)
        self.calibration = (float(cal[0]), float(cal[1]))
        self.weights = weights_file
        self.cache_key = cache_key or _cache_key(name, weights_file, seed)

    def _image_features(self, x):
        return self.model.encode_image(x)

    def _text_features(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def to(self, device):
        super().to(device)
        self.model.to(self.device)
        return self


def _published_preprocess(open_clip, name: str) -> dict:
    """mean/std/interpolation/resize mode of the architecture's published weights (metadata only)."""
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        if "mean" in cfg:
            return {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return {}


def _cache_key(name: str, weights_file: str | None, seed: int) -> str:
    if weights_file is None:
        return f"{name}-random-seed{seed}"
    st = os.stat(weights_file)
    ident = f"{os.path.abspath(weights_file)}|{st.st_size}|{st.st_mtime_ns}"
    return f"{name}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def _weights_file(weights: str) -> str:
    """The weights file named by ``weights`` (a file, or a directory holding one)."""
    if os.path.isfile(weights):
        return weights
    if not os.path.isdir(weights):
        raise InputError(f"{weights}: no such weights file or directory")
    files = sorted(f for f in os.listdir(weights) if f.endswith(WEIGHT_FILES) and
                   os.path.isfile(os.path.join(weights, f)))
    preferred = [f for f in _PREFERRED_WEIGHTS if f in files]
    if preferred:
        return os.path.join(weights, preferred[0])
    if len(files) == 1:
        return os.path.join(weights, files[0])
    if not files:
        raise InputError(f"{weights}: the directory holds no weights file ({', '.join(WEIGHT_FILES)})")
    raise InputError(f"{weights}: several weights files ({', '.join(files)}); name one, or call one "
                     f"{_PREFERRED_WEIGHTS[0]}")


def _read_state(path: str) -> tuple[dict, dict]:
    """(state dict, checkpoint extras) of a weights file."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for a bad file
        raise InputError(f"{path}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
    extras = {}
    if isinstance(state.get("state_dict"), dict):
        extras = {k: v for k, v in state.items() if k != "state_dict"}
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, extras


def _load_weights(model, path: str, name: str) -> dict:
    """Loads ``path`` into ``model`` strictly; a mismatch names the file and the first wrong key."""
    import torch

    state, extras = _read_state(path)
    expected = model.state_dict()
    if "logit_scale" in state and isinstance(state["logit_scale"], torch.Tensor):
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    problems = []
    for key, value in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r} (shape {tuple(value.shape)})")
        elif not isinstance(state[key], torch.Tensor):
            problems.append(f"key {key!r} is a {type(state[key]).__name__}, not a tensor")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(f"key {key!r} has shape {tuple(state[key].shape)}, the model expects "
                            f"{tuple(value.shape)}")
    problems += [f"unexpected key {k!r}" for k in state if k not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{path}: does not fit open_clip model {name}: {problems[0]}{more}")
    model.load_state_dict(state, strict=True)
    return extras


def _tokenizer(open_clip, name: str, weights: str | None):
    cfg = open_clip.get_model_config(name) or {}
    text_cfg = cfg.get("text_cfg", {})
    if weights and os.path.isdir(weights) and os.path.isfile(os.path.join(weights, "tokenizer.json")):
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(weights, context_length=text_cfg.get("context_length", 77),
                           **(text_cfg.get("tokenizer_kwargs") or {}))
    try:
        with _quiet():
            return open_clip.get_tokenizer(name)
    except Exception as exc:  # a Hugging Face tokenizer that is not on this machine
        hf = text_cfg.get("hf_tokenizer_name")
        where = f" (Hugging Face tokenizer {hf!r}: put its tokenizer.json in the weights directory)" if hf else ""
        raise InputError(f"vision-language model {name!r}: its tokenizer cannot be loaded{where}: {exc}") from None


# ------------------------------------------------------------ the tiny CLIPs
@dataclass(frozen=True)
class TinyClip:
    """An embedded tiny CLIP: its open_clip config, cache file and seeds."""

    config: str         # open_clip config name (neurcore/vlm_configs/<config>.json)
    file: str           # cache file under models.cache_dir()
    world_seed: int     # synthetic world of its training images
    seed: int           # weight initialisation, crops and caption draws
    steps: int          # optimizer steps (TRAIN_BATCH crops each): about 2.5 minutes on 2 CPU cores


TINY_CLIPS = {
    "resnet": TinyClip("neurcore-tiny-resnet", "tiny-clip-resnet-v1.pt", world_seed=5202, seed=22, steps=600),
    "vit": TinyClip("neurcore-tiny-vit", "tiny-clip-vit-v1.pt", world_seed=5101, seed=11, steps=1000),
}
#: ``default`` is the better of the two (ModifiedResNet: convolutions see the textures and shapes of
#: small objects that the 8-pixel patches of the tiny ViT mostly miss); ``default-2`` is LinEx's second VLM.
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


def load_vlm(name: str = "default", weights: str | None = None, *, progress: bool = True, device="cpu",
             calibration=None) -> VisionLanguageModel:
    """``default`` (tiny CLIP, ModifiedResNet), ``default-2`` (the independent tiny CLIP, ViT),
    both trained and cached on first use, or any open_clip architecture by name with ``weights``
    (a local file or directory; random seeded weights without)."""
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
    from .models import cache_dir

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

    from .probe.synthetic import SyntheticWorld

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
            crops, texts, positive, _, present = _training_batch(images, atoms, scenes, captioner, batch_size, rng)
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
        elif u < WHOLE_SHARE + OBJECT_CROP_SHARE and (atoms[i] >= captioner.n_stuff_atoms).any():  # around an object, as SIEVE crops
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


# ------------------------------------------------------- quality, calibration
def _held_out(world, n_images: int, seed: int, size: int, min_coverage: float):
    """(images uint8 [n, s, s, 3], present bool [n, n_concepts], names, categories)."""
    from .probe.synthetic import SyntheticWorld

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


def concept_auc(vlm: VisionLanguageModel, world=None, n_images: int = 500, seed: int = AUC_SEED, *,
                min_coverage: float = MIN_COVERAGE) -> dict[str, float]:
    """Zero-shot concept presence, ROC-AUC per concept: score = cos(image, text of
    :func:`concept_prompt`), truth = the concept covers >= ``min_coverage`` of the image
    (exact masks). Images: ``world``'s first ``n_images`` or a fresh ``SyntheticWorld`` (64 px,
    ``seed``, held out from every training and probe seed). NaN where a concept is never or
    always present."""
    from sklearn.metrics import roc_auc_score

    images, present, names, _ = _held_out(world, n_images, seed, 64, min_coverage)
    cos = _cosines(vlm, images, names)
    out = {}
    for c, name in enumerate(names):
        y = present[:, c]
        out[name] = float(roc_auc_score(y, cos[:, c])) if 0 < y.sum() < len(y) else float("nan")
    return out


def auc_by_category(auc: dict[str, float], world=None) -> dict[str, float]:
    """Mean AUC per concept category (and ``all``), NaNs left out."""
    from .probe.synthetic import SyntheticWorld

    world = world or SyntheticWorld(n_images=1)
    cats = dict(zip(world.concept_names, world.concept_categories))
    out: dict[str, list] = {}
    for name, v in auc.items():
        if not math.isnan(v):
            out.setdefault(cats.get(name, "other"), []).append(v)
            out.setdefault("all", []).append(v)
    return {k: float(np.mean(v)) for k, v in out.items()}


def fit_calibration(vlm: VisionLanguageModel, world=None, n_images: int = 500, seed: int = CALIBRATION_SEED, *,
                    min_coverage: float = MIN_COVERAGE) -> tuple[float, float]:
    """LinEx calibration (a, b) of P(c|x) = sigmoid(a * (cos + b)) for ``vlm``.

    Logistic regression (scikit-learn, practically unregularised) of exact
    concept presence (the concept covers >= ``min_coverage`` of the image) on
    the cosine between the image and the concept's prompt (:func:`concept_prompt`),
    pooled over all concepts and ``n_images`` held-out synthetic-world images
    (64 px, ``seed``, distinct from every training and probe seed): the fitted
    logit w * cos + c gives a = w, b = c / w. The tiny CLIPs store theirs with
    their weights (``calibration`` in the cached checkpoint).
    """
    from sklearn.linear_model import LogisticRegression

    images, present, names, _ = _held_out(world, n_images, seed, 64, min_coverage)
    cos = _cosines(vlm, images, names)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(cos.reshape(-1, 1), present.reshape(-1))
    w, c = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if abs(w) < 1e-9:
        raise InputError(f"{vlm.name}: cosines carry no presence signal, the calibration is undefined")
    return w, c / w


# ------------------------------------------------------------ embedding caches
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def embed_images(vlm: VisionLanguageModel, probe, cache_dir: str, *, batch_size: int = 64,
                 progress: bool = True) -> np.ndarray:
    """Image embeddings of the whole probe: read-only memmap float32 [n_images, D], L2-normalised.

    Computed once per model in batches (``probe.images``) and cached as
    ``cache_dir/<vlm.cache_key>/images.npy``; a progress file, replaced
    atomically after each batch, lets an interrupted run resume at the next one.
    """
    from tqdm import tqdm

    n = probe.n_images
    if n == 0:
        raise InputError(f"{probe.name}: the probe has no images")
    folder = os.path.join(cache_dir, _safe(vlm.cache_key))
    os.makedirs(folder, exist_ok=True)
    file, state_file = os.path.join(folder, "images.npy"), os.path.join(folder, "progress.json")
    shape = [n, vlm.embed_dim]
    state = _read_json(state_file) or {}
    start = state.get("done", 0) if state.get("shape") == shape and os.path.isfile(file) else 0
    if start >= n:
        return np.load(file, mmap_mode="r")
    if start == 0:
        cache = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(shape))
    else:
        cache = np.load(file, mmap_mode="r+")
    start -= start % batch_size
    bar = tqdm(total=n, initial=start, desc=f"image embeddings ({vlm.name})", unit="img", disable=not progress,
               leave=False)
    for s in range(start, n, batch_size):
        e = min(n, s + batch_size)
        cache[s:e] = vlm.encode_image(probe.images(s, e), batch_size=batch_size)
        cache.flush()
        write_json(state_file, {"done": e, "shape": shape, "model": vlm.cache_key})
        bar.update(e - bar.n)
    bar.close()
    del cache
    return np.load(file, mmap_mode="r")


def embed_texts(vlm: VisionLanguageModel, texts: list[str], cache_dir: str | None = None) -> np.ndarray:
    """Text embeddings float32 [T, D]; with ``cache_dir`` cached as
    ``cache_dir/<vlm.cache_key>/texts-<hash of the texts>.npy``."""
    if cache_dir is None:
        return vlm.encode_text(texts)
    if isinstance(texts, str):
        raise InputError("embed_texts: expected a list of strings, got str")
    digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, _safe(vlm.cache_key), f"texts-{digest}.npy")
    if os.path.isfile(path):
        cached = np.load(path)
        if cached.shape == (len(texts), vlm.embed_dim):
            return cached
    out = vlm.encode_text(texts)
    with atomic_path(path) as tmp:
        np.save(tmp, out)
    return out
