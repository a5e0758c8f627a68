"""Vision-language models: one small interface over open_clip.

- :class:`VisionLanguageModel`: ``encode_image`` (uint8 images of any size -> L2-normalised float32
  [B, D]), ``encode_text`` (strings -> [T, D]), ``preprocess`` (resize + normalise with the model's
  mean/std) and the LinEx calibration ``(a, b)`` of P(c|x) = sigmoid(a * (cos(x, c) + b))
  (Oikarinen & Weng, "Linear Explanations for Individual Neurons", ICML 2024).
- :class:`OpenClipVLM`: any open_clip architecture by name (``open_clip.create_model``), weights
  from a local file or directory (nothing can be downloaded here; without weights they are random
  but seeded, so every run draws the same).

Zero-shot text for a concept: :func:`concept_prompt` (the bare concept word, which is what the tiny
CLIPs are trained on and what CLIP-Dissect encodes).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from ..errors import BackendUnavailable, InputError

if TYPE_CHECKING:
    import torch

#: Images for a VisionLanguageModel: uint8 [B, H, W, 3], or a list of uint8 [H, W, 3] of any sizes.
Images = Union[np.ndarray, Sequence[np.ndarray]]

__all__ = ["CALIBRATION", "FALLBACK_CALIBRATION", "CONFIG_DIR", "VisionLanguageModel", "OpenClipVLM",
           "concept_prompt", "silence_loggers"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vlm_configs")

#: LinEx calibration (a, b) of P(c|x) = sigmoid(a * (cos + b)) per open_clip architecture (LinEx's
#: published constants).
CALIBRATION = {
    "ViT-L-16-SigLIP-384": (60.0, -0.09),
    "ViT-SO400M-14-SigLIP-384": (58.0, -0.13),
    "ViT-L-14-336": (58.0, -0.25),
}
#: Other architectures, unless given ``calibration=``: CLIP ViT-L-14-336's constants. Fit your own
#: with :func:`fit_calibration` (on the synthetic world) or on labelled data of your domain.
FALLBACK_CALIBRATION = CALIBRATION["ViT-L-14-336"]

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


_REGISTERED = False


def _open_clip():
    """open_clip with neurcore's tiny configs registered (once)."""
    global _REGISTERED
    try:
        import open_clip
    except ImportError:
        raise BackendUnavailable("vision-language models need open_clip: "
                                 "pip install 'neurcore[vision]'") from None
    if not _REGISTERED:
        open_clip.add_model_config(CONFIG_DIR)
        _REGISTERED = True
    return open_clip


@contextlib.contextmanager
def silence_loggers() -> Iterator[None]:
    """Silence library loggers below ERROR while loading: open_clip logs a warning for every model built
    without pretrained weights (the rule here), diffusers and transformers log while loading."""
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
    def preprocess(self, images: Images) -> torch.Tensor:
        """uint8 images [B, H, W, 3], or a list of uint8 [H, W, 3] of different sizes ->
        float32 tensor [B, 3, S, S] on the CPU: resized (``resize_mode``, ``interpolation``) to
        S = ``image_size`` and normalised by ``mean``/``std``."""
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

    def encode_image(self, images: Images, *, batch_size: int = 64) -> np.ndarray:
        """uint8 [B, H, W, 3] (any H, W; or a list of [H, W, 3]) -> float32 [B, D], L2-normalised;
        ``batch_size`` images go through the model at a time."""
        import torch

        n = len(images)
        out = np.zeros((n, self.embed_dim), np.float32)
        with torch.no_grad():
            for s in range(0, n, batch_size):
                x = self.preprocess(images[s : s + batch_size]).to(self.device)
                out[s : s + len(x)] = _normalise(self._image_features(x)).float().cpu().numpy()
        return out

    def encode_text(self, texts: list[str], *, batch_size: int = 256) -> np.ndarray:
        """list of strings -> float32 [T, D], L2-normalised; ``batch_size`` texts at a time."""
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

    def to(self, device: str | torch.device) -> VisionLanguageModel:
        """Moves the model to ``device`` (e.g. ``"cuda"``); returns self."""
        import torch

        self.device = torch.device(device)
        return self

    def __repr__(self):
        return (f"{type(self).__name__}({self.name!r}, image_size={self.image_size}, "
                f"embed_dim={self.embed_dim})")


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

    name: the open_clip architecture; an unknown name is an InputError that lists close ones.
    weights: a state dict (``.safetensors``, ``.bin``, ``.pt``/``.pth``; a checkpoint dict holding
    ``state_dict`` works too, and its ``calibration`` [a, b] is used when present), or a directory
    holding one (open_clip's file names preferred; a ``tokenizer.json`` beside it serves models
    with a Hugging Face tokenizer). None: random weights drawn with ``seed``.
    calibration: (a, b); default: the file's, else :data:`CALIBRATION` by name, else
    :data:`FALLBACK_CALIBRATION`.
    device: where the model runs ("cpu", "cuda", or a torch.device).
    preprocess_cfg: overrides of the preprocessing (keys ``mean``, ``std``, ``interpolation``,
    ``resize_mode``); by default the mean/std/resize mode of the architecture's published weights
    (``open_clip.get_pretrained_cfg``), else open_clip's defaults.
    cache_key: the name of the on-disk embedding caches; default: the architecture, and the
    weights file's path, size and time (or ``seed`` without weights).
    The open_clip model itself is ``self.model``; ``self.weights`` is the weights file or None.
    """

    def __init__(self, name: str, weights: str | None = None, *,
                 calibration: tuple[float, float] | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, preprocess_cfg: dict | None = None, cache_key: str | None = None):
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
        with silence_loggers(), torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=pp)
            except Exception as exc:  # open_clip raises many kinds for a config it cannot build
                raise InputError(f"vision-language model {name!r}: open_clip cannot build it here: "
                                 f"{exc}") from None
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

    def to(self, device: str | torch.device) -> OpenClipVLM:
        """Moves the open_clip model to ``device`` (e.g. ``"cuda"``); returns self."""
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
        with silence_loggers():
            return open_clip.get_tokenizer(name)
    except Exception as exc:  # a Hugging Face tokenizer that is not on this machine
        hf = text_cfg.get("hf_tokenizer_name")
        where = (f" (Hugging Face tokenizer {hf!r}: put its tokenizer.json in the weights directory)"
                 if hf else "")
        raise InputError(f"vision-language model {name!r}: its tokenizer cannot be loaded{where}: "
                         f"{exc}") from None
