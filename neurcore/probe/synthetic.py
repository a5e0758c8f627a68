"""The synthetic concept world: procedural images with exact pixel masks for every concept.

Each image has a scene (image-level concept) that lays out its background
stuff (sky, grass, water, ...), then 1-4 objects: a shape (circle, square,
triangle, bar, ring) with a colour and a texture, at a random position and
size, painted in turn so later objects occlude earlier ones. Every pixel also
carries a colour concept, the colour of the object or stuff it shows, so
colours overlap stuff and objects (``blue`` is sky, water and blue objects),
objects exclude each other pixel-wise, and scene-dependent probabilities make
concepts co-occur or exclude each other across images. Image ``i`` is a pure
function of ``(seed, i)``: the world is reproducible, streamable and
randomly accessible, and thousands of images take seconds.

``render(formula, n, seed)`` draws images that contain a concept or a
formula, the stand-in for a text-to-image model in SIEVE's verification.
"""

from __future__ import annotations

import numpy as np

from ..engine import BitMasks, BitMasksBuilder
from ..errors import InputError
from ..rules.formula import AndNot, Formula, Leaf, Not, Or, parse
from .base import Probe

SCENES = ("beach", "field", "lake", "mountain", "room", "street")
STUFF = ("sky", "cloud", "sand", "grass", "water", "rock", "wall", "floor", "road")
SHAPES = ("circle", "square", "triangle", "bar", "ring")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "brown", "gray")
TEXTURES = ("plain", "dotted", "striped", "checkered", "noisy")

_RGB = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 220), "yellow": (235, 215, 50),
        "purple": (140, 60, 170), "orange": (240, 140, 30), "white": (235, 235, 235), "black": (25, 25, 25),
        "brown": (130, 85, 45), "gray": (128, 128, 128)}
# Stuff colour (a colour concept) and the scenes' layouts: (stuff, top fraction) bands, top to bottom.
_STUFF_COLOR = {"sky": "blue", "cloud": "white", "sand": "yellow", "grass": "green", "water": "blue",
                "rock": "gray", "wall": "white", "floor": "brown", "road": "black"}
_LAYOUT = {
    "beach": (("sky", 0.0), ("sand", 0.45)),
    "field": (("sky", 0.0), ("grass", 0.40)),
    "lake": (("sky", 0.0), ("grass", 0.35), ("water", 0.50)),
    "mountain": (("sky", 0.0), ("rock", 0.35), ("grass", 0.70)),
    "room": (("wall", 0.0), ("floor", 0.60)),
    "street": (("sky", 0.0), ("wall", 0.30), ("road", 0.65)),
}
_OUTDOOR = {"beach", "field", "lake", "mountain", "street"}
# Scene-dependent object statistics, so that concepts co-occur and exclude each other.
_SHAPE_P = {
    "beach": (0.35, 0.05, 0.30, 0.15, 0.15), "field": (0.20, 0.10, 0.40, 0.10, 0.20),
    "lake": (0.40, 0.10, 0.10, 0.20, 0.20), "mountain": (0.10, 0.15, 0.55, 0.10, 0.10),
    "room": (0.10, 0.45, 0.05, 0.25, 0.15), "street": (0.10, 0.35, 0.10, 0.35, 0.10),
}
_COLOR_P = {
    "beach": (0.25, 0.02, 0.05, 0.18, 0.05, 0.25, 0.10, 0.02, 0.05, 0.03),
    "field": (0.20, 0.05, 0.10, 0.20, 0.15, 0.10, 0.05, 0.05, 0.05, 0.05),
    "lake": (0.10, 0.10, 0.02, 0.10, 0.20, 0.10, 0.20, 0.08, 0.05, 0.05),
    "mountain": (0.10, 0.05, 0.20, 0.05, 0.10, 0.10, 0.15, 0.10, 0.10, 0.05),
    "room": (0.15, 0.15, 0.15, 0.05, 0.10, 0.05, 0.02, 0.13, 0.10, 0.10),
    "street": (0.25, 0.10, 0.15, 0.15, 0.02, 0.05, 0.05, 0.10, 0.03, 0.10),
}
_TEXTURE_P = (0.40, 0.15, 0.15, 0.15, 0.15)


class SyntheticWorld(Probe):
    """A procedural probe: ``n_images`` images of ``size`` x ``size`` pixels with exact concept masks.

    Concepts (names, categories): scenes (scene, image-level), background stuff
    (stuff), shapes (object), colours (color), textures (texture). Masks are at
    the image resolution.
    """

    name = "synthetic"

    def __init__(self, n_images: int = 3000, size: int = 64, seed: int = 0):
        if n_images < 1 or size < 16:
            raise InputError(f"SyntheticWorld: need n_images >= 1 and size >= 16, got {n_images}, {size}")
        self.n_images, self.size, self.seed = int(n_images), int(size), int(seed)
        groups = (("scene", SCENES), ("stuff", STUFF), ("object", SHAPES), ("color", COLORS),
                  ("texture", TEXTURES))
        self.concept_names = [n for _, names in groups for n in names]
        self.concept_categories = [c for c, names in groups for _ in names]
        self._index = {n: i for i, n in enumerate(self.concept_names)}
        self.image_size = (self.size, self.size)
        self.mask_shape = (self.size, self.size)

    # ----------------------------------------------------------- generation
    def _scene_of(self, rng, forced: dict) -> str:
        if "scene" in forced:
            return forced["scene"]
        stuff = forced.get("stuff")
        options = [sc for sc in SCENES if stuff is None or stuff in dict(_LAYOUT[sc]) or
                   (stuff == "cloud" and sc in _OUTDOOR)]
        return options[rng.integers(len(options))]

    def _draw(self, rng: np.random.Generator, forced: dict | None = None):
        """One image and its per-pixel labels; ``forced`` pins the scene or the first object's
        shape/colour/texture/stuff (used by render)."""
        forced = forced or {}
        s = self.size
        scene = self._scene_of(rng, forced)
        yy, xx = np.mgrid[0:s, 0:s]
        stuff = np.zeros((s, s), np.int8)
        for name, top in _LAYOUT[scene]:
            jitter = 0 if top == 0 else int(rng.integers(-s // 16, s // 16 + 1))
            stuff[max(0, int(top * s) + jitter):] = STUFF.index(name)
        if scene in _OUTDOOR and (forced.get("stuff") == "cloud" or rng.random() < 0.5):
            sky_rows = int(np.argmax(stuff[:, 0] != STUFF.index("sky"))) or s
            cy, cx = rng.uniform(2, max(3, sky_rows - 3)), rng.uniform(0, s)
            ry, rx = rng.uniform(2, 5) * s / 64, rng.uniform(5, 12) * s / 64
            cloud = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & (stuff == STUFF.index("sky"))
            stuff[cloud] = STUFF.index("cloud")
        shape = np.full((s, s), -1, np.int8)
        color = np.array([COLORS.index(_STUFF_COLOR[n]) for n in STUFF], np.int8)[stuff]
        texture = np.full((s, s), -1, np.int8)
        n_obj = int(rng.integers(1, 5))
        objs = []
        for k in range(n_obj):
            sh = SHAPES.index(forced["object"]) if k == 0 and "object" in forced else \
                int(rng.choice(len(SHAPES), p=_SHAPE_P[scene]))
            co = COLORS.index(forced["color"]) if k == 0 and "color" in forced else \
                int(rng.choice(len(COLORS), p=_COLOR_P[scene]))
            tx = TEXTURES.index(forced["texture"]) if k == 0 and "texture" in forced else \
                int(rng.choice(len(TEXTURES), p=_TEXTURE_P))
            r = rng.uniform(0.08, 0.22) * s
            cy, cx = rng.uniform(r, s - r), rng.uniform(r, s - r)
            m = _shape_mask(SHAPES[sh], yy, xx, cy, cx, r, rng)
            objs.append((m, sh, co, tx))
        pinned = any(k in forced for k in ("object", "color", "texture"))
        for m, sh, co, tx in objs[::-1] if pinned else objs:  # a pinned first object is painted on top
            shape[m], color[m], texture[m] = sh, co, tx
        image = _paint(rng, stuff, shape, color, texture, yy, xx)
        return image, scene, stuff, shape, color, texture

    def _labels_to_masks(self, scene, stuff, shape, color, texture) -> np.ndarray:
        """bool [n_concepts, s, s] for one image."""
        idx = self._index
        out = np.zeros((len(self.concept_names), self.size, self.size), bool)
        out[idx[scene]] = True
        free = shape < 0
        for k, n in enumerate(STUFF):
            out[idx[n]] = (stuff == k) & free
        for k, n in enumerate(SHAPES):
            out[idx[n]] = shape == k
        for k, n in enumerate(COLORS):
            out[idx[n]] = color == k
        for k, n in enumerate(TEXTURES):
            out[idx[n]] = texture == k
        return out

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [s, s, 3], concept masks bool [n_concepts, s, s]) of image i."""
        if not 0 <= i < self.n_images:
            raise IndexError(f"SyntheticWorld: image {i} out of range for {self.n_images} images")
        image, *labels = self._draw(np.random.default_rng([self.seed, i]))
        return image, self._labels_to_masks(*labels)

    # ------------------------------------------------------------ the probe
    def images(self, start: int, stop: int) -> np.ndarray:
        """uint8 [stop - start, s, s, 3]."""
        return np.stack([self.sample(i)[0] for i in range(start, stop)])

    def concept_maps(self, start: int, stop: int) -> np.ndarray:
        """bool [stop - start, n_concepts, s, s]: exact per-pixel concepts of those images."""
        return np.stack([self.sample(i)[1] for i in range(start, stop)])

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, s, s])."""
        masks = self.sample(i)[1]
        rows = np.flatnonzero(masks.any(axis=(1, 2)))
        return rows, masks[rows]

    def concept_masks(self, progress: bool = False) -> BitMasks:
        """All concept masks [n_concepts, n_images, s, s], 256 images at a time."""
        builder = BitMasksBuilder(len(self.concept_names), self.mask_shape, layout="auto")
        for start in range(0, self.n_images, 256):
            maps = self.concept_maps(start, min(self.n_images, start + 256))
            builder.append(np.ascontiguousarray(maps.transpose(1, 0, 2, 3)))
        return builder.finish()

    # -------------------------------------------------------------- render
    def render(self, formula: Formula | str, n: int, seed: int = 0, max_tries: int = 200,
               return_maps: bool = False) -> tuple[np.ndarray, ...]:
        """n images in which ``formula`` (a concept name or formula) covers at least 1% of the pixels.

        The leaves of the formula that are not negated pin the scene or the first
        object's shape, colour or texture; images are then drawn until the
        formula's mask is large enough. Returns (images uint8 [n, s, s, 3],
        masks bool [n, s, s]), plus the images' full concept maps bool
        [n, n_concepts, s, s] as a third item when ``return_maps``, or raises
        ValueError when the formula is unsatisfiable in this world within
        ``max_tries`` draws per image.
        """
        f = parse(formula) if isinstance(formula, str) else formula
        forced = {}
        for name in _positive_leaves(f):
            if name not in self._index:
                raise InputError(f"render: unknown concept {name!r}")
            cat = self.concept_categories[self._index[name]]
            if cat not in forced:
                forced[cat] = name
        rng = np.random.default_rng([self.seed, 1_000_003, seed])
        images, masks, maps = [], [], []
        for _ in range(n):
            for _ in range(max_tries):
                image, *labels = self._draw(rng, forced)
                concept = self._labels_to_masks(*labels)
                m = f.evaluate(concept, self._index)
                if m.mean() >= 0.01:
                    images.append(image)
                    masks.append(m)
                    maps.append(concept)
                    break
            else:
                raise InputError(f"render: could not draw {f} in {max_tries} tries")
        if return_maps:
            return np.stack(images), np.stack(masks), np.stack(maps)
        return np.stack(images), np.stack(masks)


def _positive_leaves(f: Formula):
    if isinstance(f, Leaf):
        yield f.name
    elif isinstance(f, Not):
        return
    elif isinstance(f, AndNot):
        yield from _positive_leaves(f.left)
    elif isinstance(f, Or):
        yield from _positive_leaves(f.left)  # one side suffices
    else:
        yield from _positive_leaves(f.left)
        yield from _positive_leaves(f.right)


def _shape_mask(shape: str, yy, xx, cy, cx, r, rng) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "bar":
        if rng.random() < 0.5:
            return (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r * 1.3)
        return (np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r * 1.3)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(shape)


def _paint(rng, stuff, shape, color, texture, yy, xx) -> np.ndarray:
    palette = np.array([_RGB[c] for c in COLORS], np.float32)
    img = palette[color].copy()
    obj = shape >= 0
    tex = np.where(obj, texture, -1)
    shade = np.ones(stuff.shape, np.float32)
    shade[(tex == TEXTURES.index("dotted")) & ((yy % 4 < 2) & (xx % 4 < 2))] = 0.55
    shade[(tex == TEXTURES.index("striped")) & ((yy + xx) % 6 < 3)] = 0.6
    shade[(tex == TEXTURES.index("checkered")) & (((yy // 3) + (xx // 3)) % 2 == 0)] = 0.6
    noisy = tex == TEXTURES.index("noisy")
    shade[noisy] = rng.uniform(0.5, 1.1, int(noisy.sum())).astype(np.float32)
    img *= shade[..., None]
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise everywhere
    return np.clip(img, 0, 255).astype(np.uint8)
