"""Image generators for verification: a text prompt in, images that should show it out.

SIEVE (select, hypothesize, verify) checks a unit's hypothesised concept by
generating images of it and measuring how often the unit fires on them (the
Activation Rate); CoSy (Kopf et al., "CoSy: Evaluating Textual Explanations
of Neurons", NeurIPS 2024) scores an explanation by
how well the unit's activation separates such generated images from probe
images. Both need a text-to-image model; the backends here are

* :class:`SyntheticGenerator` (the default): the synthetic world's renderer,
  which turns a concept name or a formula (``(red AND circle)``) into images
  in which it covers at least 1% of the pixels, with their exact concept maps;
* :class:`DiffusersGenerator`: any diffusers text-to-image pipeline saved in a
  local directory (Stable Diffusion in the papers), prompted through CoSy's
  template ``"realistic photo of a close up of {}"``.

:func:`build_tiny_pipeline` saves a tiny randomly initialised
Stable-Diffusion-style pipeline offline, so that the real diffusers loading
and sampling code runs in tests. :func:`load_generator` picks a backend from a
spec string (``synthetic`` or ``diffusers:DIR``).

Every backend is deterministic for a given ``(prompt, n, seed)``, and image
``i`` does not depend on ``n``: ``generate(p, 5, s)[:3]`` equals
``generate(p, 3, s)``.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, FormulaSyntaxError, InputError
from ..probe import SyntheticWorld
from ..rules.formula import parse
from ._vlm import silence_loggers  # diffusers and transformers log while loading, as open_clip does

__all__ = ["COSY_TEMPLATE", "GENERATOR_CHOICES", "DiffusersGenerator", "Generator", "SyntheticGenerator",
           "build_tiny_pipeline", "load_generator"]

#: The generator specs :func:`load_generator` accepts.
GENERATOR_CHOICES = ("synthetic", "diffusers:DIR")
#: CoSy's prompt template for text-to-image models (Kopf et al., "CoSy: Evaluating Textual
#: Explanations of Neurons", NeurIPS 2024).
COSY_TEMPLATE = "realistic photo of a close up of {}"


class Generator:
    """A text-to-image backend.

    ``generate(prompt, n, seed)`` returns uint8 [n, H, W, 3]. ``prompt`` is
    the explanation itself (a concept, a phrase or a formula); the backend
    puts it into ``prompt_template`` (one ``{}``) before drawing, see
    :meth:`full_prompt`. Subclasses implement ``_generate`` and may return
    anything array-like; :meth:`generate` checks it, so a backend that returns
    no images, the wrong number, the wrong shape or dtype, or NaN fails with
    one :class:`~neurcore.errors.InputError` naming the generator and prompt.
    """

    name: str = "generator"
    prompt_template: str = "{}"

    def full_prompt(self, prompt: str) -> str:
        """The text the backend draws: ``prompt_template`` with ``prompt`` in its ``{}``."""
        return self.prompt_template.format(prompt)

    def describe(self) -> dict:
        """Everything that determines the images besides (prompt, n, seed): a JSON-able dict, for cache
        keys."""
        return {"name": self.name, "prompt_template": self.prompt_template}

    def generate(self, prompt: str, n: int, seed: int = 0) -> np.ndarray:
        """uint8 [n, H, W, 3]: ``n`` images of ``prompt``, deterministic for (prompt, n, seed)."""
        n = self._check_request(prompt, n, seed)
        return self._check_images(self._generate(prompt, n, int(seed)), prompt, n)

    def _generate(self, prompt: str, n: int, seed: int):
        raise NotImplementedError(f"{type(self).__name__} must implement _generate")

    # ------------------------------------------------------------ checks
    def _check_request(self, prompt, n, seed) -> int:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"generator {self.name}: prompt must be a non-empty string, got {prompt!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"generator {self.name}: n (number of images) must be an integer >= 1, "
                             f"got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"generator {self.name}: seed must be an integer >= 0, got {seed!r}")
        return int(n)

    def _check_images(self, images, prompt: str, n: int) -> np.ndarray:
        where = f"generator {self.name} for prompt {prompt!r}"
        if images is None:
            raise InputError(f"generator {self.name} returned no images for prompt {prompt!r}")
        try:
            images = np.asarray(images)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: output is not an image array ({e})") from None
        if images.size == 0 or images.ndim == 0 or images.shape[0] == 0:
            raise InputError(f"generator {self.name} returned no images for prompt {prompt!r}")
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 1:
            raise InputError(f"{where}: expected images [n, H, W, 3], got shape {images.shape}")
        if images.shape[0] != n:
            raise InputError(f"{where}: asked for {n} images, got {images.shape[0]}")
        if np.issubdtype(images.dtype, np.floating) and np.isnan(images).any():
            raise InputError(f"{where}: images contain NaN")
        if images.dtype != np.uint8:
            raise InputError(f"{where}: expected uint8 images, got dtype {images.dtype}")
        return np.ascontiguousarray(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ------------------------------------------------------------------ synthetic
class SyntheticGenerator(Generator):
    """The synthetic world's renderer as a text-to-image model (the default backend).

    A prompt is a concept name of the world (``red``, ``circle``, ``beach``) or
    a formula over them in :mod:`neurcore.rules.formula` syntax (``(red AND circle)``,
    ``(water AND NOT blue)``); every image contains it on at least 1% of its
    pixels (:meth:`SyntheticWorld.render`). ``world`` defaults to a
    ``SyntheticWorld(size=size, seed=seed)`` (size in pixels); a given world keeps its own size
    and seed. Under 1 ms per image at 64 px (50 images in about 0.03 s).

    close_up: like CoSy's "a close up of {}" prompt, zoom each image onto the prompt's region: the
    square around the bounding box of the formula's mask, at least ``close_up`` (a fraction in
    (0, 1]) of the side, or, for a formula without shapes whose mask is larger, the square of that
    side holding most of it; resized back (nearest neighbour). None draws whole scenes.
    """

    prompt_template = "{}"

    def __init__(self, world: SyntheticWorld | None = None, size: int = 64, seed: int = 0,
                 close_up: float | None = 0.5):
        if close_up is not None and not 0 < close_up <= 1:
            raise InputError(f"SyntheticGenerator: close_up must lie in (0, 1] or be None, "
                             f"got {close_up}")
        self.close_up = close_up

        if world is None:
            world = SyntheticWorld(n_images=1, size=size, seed=seed)
        elif not isinstance(world, SyntheticWorld):
            raise InputError(f"SyntheticGenerator: world must be a SyntheticWorld, "
                             f"got {type(world).__name__}")
        self.world = world
        self.name = "synthetic"

    @property
    def concept_names(self) -> list[str]:
        """The concepts this generator can draw (and combine in formulas): the world's concept names."""
        return list(self.world.concept_names)

    def describe(self) -> dict:
        """:meth:`Generator.describe` plus the world's image size and seed and the close-up framing."""
        return {**super().describe(), "size": self.world.size, "world_seed": self.world.seed,
                "close_up": self.close_up,
                "close_up_frame": "shapes whole, other regions filling the frame"}

    def generate_with_maps(self, prompt: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, s, s, 3], concept_maps bool [n, n_concepts, s, s]): the images and the
        exact per-pixel concepts of each (rows ordered as ``world.concept_names``)."""
        n = self._check_request(prompt, n, seed)
        images, maps = self._render(prompt, n, int(seed))
        return self._check_images(images, prompt, n), maps

    def _generate(self, prompt: str, n: int, seed: int):
        return self._render(prompt, n, seed)[0]

    def _render(self, prompt: str, n: int, seed: int):
        text = self.full_prompt(prompt)
        try:
            formula = parse(text)
        except FormulaSyntaxError as e:
            raise InputError(f"generator synthetic cannot draw prompt {prompt!r}: it is neither a concept "
                             f"name nor a formula ({e})") from None
        known = set(self.world.concept_names)
        for name in formula.leaves():
            if name not in known:
                close = difflib.get_close_matches(name, self.world.concept_names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else \
                    f"; known concepts: {', '.join(self.world.concept_names)}"
                raise InputError(f"generator synthetic cannot draw prompt {prompt!r}: unknown concept "
                                 f"{name!r}{hint}")
        try:
            images, masks, maps = self.world.render(formula, n, seed=seed, return_maps=True)
        except ValueError as e:
            raise InputError(f"generator synthetic cannot draw prompt {prompt!r}: no image of this world "
                             f"shows it on >= 1% of its pixels ({e})") from None
        if self.close_up is not None:
            cats = dict(zip(self.world.concept_names, self.world.concept_categories))
            fill = not any(cats[name] == "object" for name in formula.leaves())
            images, maps = _close_up(images, masks, maps, self.close_up, fill=fill)
        return images, maps


#: A region that is not a shape is framed by a square it fills to this share, if one of at least
#: this fraction of the image's side exists (else the square of that side it fills most).
FILL_SHARE = 0.95
MIN_FILL_SIDE = 0.2


def _close_up(images, masks, maps, min_side: float, fill: bool = False):
    """Each image and its concept maps cropped to a square and resized back to the full size by nearest
    neighbour, so that the maps stay the images' exact concepts.

    The square is the one around the mask's bounding box, at least ``min_side`` of the side and kept
    inside the image: a shape is seen whole. With ``fill`` (stuff, colours, textures, scenes: a close
    up of grass is grass from edge to edge), a mask larger than ``min_side`` of the side is framed
    instead by the largest square, at most that side, that it fills (see ``FILL_SHARE``).
    """
    n, s = images.shape[:2]
    w = int(min(s, max(1, round(min_side * s))))
    out_img, out_maps = np.empty_like(images), np.empty_like(maps)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        box = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        if fill and box > w:
            # The largest square of at most w pixels that the mask fills to FILL_SHARE (the smallest
            # tried, MIN_FILL_SIDE of the image, when none does), nearest the box's centre among equals.
            for side in range(w, max(1, min(w, round(MIN_FILL_SIDE * s))) - 1, -1):
                cover = _window_sums(masks[i], side)  # [s - side + 1, s - side + 1]
                if cover.max() >= FILL_SHARE * side * side:
                    break
            cand = np.argwhere(cover == cover.max())
            far = (cand[:, 0] + side / 2 - cy) ** 2 + (cand[:, 1] + side / 2 - cx) ** 2
            y0, x0 = (int(v) for v in cand[np.argmin(far)])
        else:
            side = int(min(s, max(w, box)))
            y0 = int(np.clip(round(cy - side / 2), 0, s - side))
            x0 = int(np.clip(round(cx - side / 2), 0, s - side))
        idx = (np.arange(s) * side // s).clip(0, side - 1)
        rows, cols = y0 + idx[:, None], x0 + idx[None, :]
        out_img[i] = images[i][rows, cols]
        out_maps[i] = maps[i][:, rows, cols]
    return out_img, out_maps


def _window_sums(mask: np.ndarray, w: int) -> np.ndarray:
    """Pixels of ``mask`` [s, s] inside every w x w window, by top-left corner: [s - w + 1, s - w + 1]."""
    ii = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return ii[w:, w:] - ii[:-w, w:] - ii[w:, :-w] + ii[:-w, :-w]


# ------------------------------------------------------------------ diffusers
class DiffusersGenerator(Generator):
    """A diffusers text-to-image pipeline saved in a local directory (nothing is downloaded).

    path: the pipeline's directory (``DiffusionPipeline.save_pretrained``, with ``model_index.json``).
    prompt_template: CoSy's "realistic photo of a close up of {}" by default. num_inference_steps,
    guidance_scale, image_size (pixels, square): None keeps the pipeline's own defaults. device:
    where the pipeline runs; batch_size: images per pipeline call. Image ``i`` of a call is drawn
    from its own ``torch.Generator`` seeded by (seed, i), so it does not depend on ``n`` or
    ``batch_size``. A safety checker, if the pipeline has one, is switched off unless
    ``safety_checker=True`` (it blacks out images, which would skew every score). progress: the
    pipeline's progress bars. Needs the optional package diffusers (BackendUnavailable without it).
    """

    def __init__(self, path: str, prompt_template: str = COSY_TEMPLATE,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 image_size: int | None = None, device: str = "cpu", batch_size: int = 8,
                 safety_checker: bool = False, progress: bool = False):
        if prompt_template.count("{}") != 1:
            raise InputError(f"prompt_template must contain exactly one {{}}, got {prompt_template!r}")
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise InputError(f"generator diffusers:{path}: no such directory")
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise InputError(f"generator diffusers:{path}: not a diffusers pipeline directory "
                             f"(no model_index.json)")
        try:
            with open(index) as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or "_class_name" not in meta:
                raise ValueError("no _class_name")
        except (OSError, ValueError) as e:
            raise InputError(f"generator diffusers:{path}: model_index.json is not a diffusers pipeline "
                             f"index ({e})") from None
        try:
            import diffusers
        except ImportError:
            raise BackendUnavailable("the diffusers generator needs diffusers: "
                                     "pip install 'neurcore[vision]'") from None
        kwargs = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        if "safety_checker" not in meta:
            kwargs = {}
        try:
            with silence_loggers():
                pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True, **kwargs)
        except Exception as e:  # diffusers raises many kinds for a broken directory
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"generator diffusers:{path}: could not load the pipeline: {first}") from None
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=not progress)
        self.pipeline = pipe
        self.path, self.device = path, device
        self.name = f"diffusers:{path}"
        self.prompt_template = prompt_template
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.image_size = image_size
        self.batch_size = max(1, int(batch_size))

    def describe(self) -> dict:
        """:meth:`Generator.describe` plus the pipeline's directory and its sampling settings."""
        return {**super().describe(), "path": self.path, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "image_size": self.image_size}

    def _generate(self, prompt: str, n: int, seed: int):
        import torch

        kwargs = {"output_type": "np"}
        if self.num_inference_steps is not None:
            kwargs["num_inference_steps"] = self.num_inference_steps
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        if self.image_size is not None:
            kwargs["height"] = kwargs["width"] = self.image_size
        text = self.full_prompt(prompt)
        out = []
        for s in range(0, n, self.batch_size):
            k = min(self.batch_size, n - s)
            gens = [torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + s + i)
                    for i in range(k)]
            with torch.no_grad():
                images = self.pipeline(prompt=text, num_images_per_prompt=k, generator=gens, **kwargs).images
            images = np.asarray(images)
            if images.size == 0:
                return None
            if np.issubdtype(images.dtype, np.floating):
                if np.isnan(images).any():
                    return images
                images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
            out.append(images)
        return np.concatenate(out)


def build_tiny_pipeline(path: str, seed: int = 0, image_size: int = 32) -> str:
    """A tiny randomly initialised Stable Diffusion pipeline saved to ``path`` (offline: a UNet with
    cross-attention, a VAE, a 2-layer CLIP text encoder and a CLIP tokenizer over a small vocabulary
    written here, a DDIM scheduler), so that the real diffusers code runs in tests. Weights drawn
    with ``seed``; images of ``image_size`` pixels (square). Needs diffusers and transformers.
    Returns ``path``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    os.makedirs(path, exist_ok=True)
    tok_dir = os.path.join(path, "_tokenizer_src")
    os.makedirs(tok_dir, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    with open(os.path.join(tok_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(tok_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                                  model_max_length=32, pad_token="!")
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2,
                                            max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                                            pad_token_id=2))
        latent = image_size // 2
        unet = UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                    attention_head_dim=4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                            layers_per_block=1, norm_num_groups=8, sample_size=image_size,
                            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    with silence_loggers():
        pipe.save_pretrained(path)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return path


def load_generator(spec: str = "synthetic", world: SyntheticWorld | None = None, **options: Any) -> Generator:
    """The generator of a spec string: ``synthetic`` (the world's renderer, :class:`SyntheticGenerator`;
    ``world`` is the probe's) or ``diffusers:DIR`` (:class:`DiffusersGenerator`); ``options`` go to
    the backend's constructor. Another spec is an InputError naming :data:`GENERATOR_CHOICES`."""
    if spec == "synthetic":
        return SyntheticGenerator(world=world, **options)
    if isinstance(spec, str) and spec.startswith("diffusers:") and spec[len("diffusers:"):]:
        return DiffusersGenerator(spec[len("diffusers:"):], **options)
    raise InputError(f"generator {spec!r}: expected one of {', '.join(GENERATOR_CHOICES)}")
