"""Captions of synthetic-world images and crops, computed from their exact concept masks.

A caption names what the masks hold and nothing else, e.g. ``"a field with
blue sky, green grass, a red dotted circle and a blue plain square"``: the
scene, each background stuff with its colour, and each object as
colour + texture + shape. Objects are read per pixel from the masks (the
shape, colour and texture masks that cover a pixel), so colours and textures
are bound to the right shape even when an image has several objects.

A concept counts as present in an image or crop when it covers at least
``min_coverage`` of it (1% by default, the coverage the world's renderer
asks of a formula); the scene covers every pixel, so every crop keeps it.
The same rule decides which stuff (stuff, colour) and which objects
(shape, colour, texture) a caption mentions, and a present concept that no
mentioned phrase implies (a colour spread over objects that are each too
small) is appended as a bare word: the full caption mentions exactly the
present concepts.

Pixels are first reduced to *atoms* (one id per stuff+colour pair or
shape+colour+texture triple, :meth:`Captioner.atom_map`); a crop's content
is then a histogram of its atoms (:meth:`Captioner.atom_counts`), which is
how the tiny CLIP's trainer captions thousands of random crops per second.

Augmented captions (``rng`` given) keep a random subset of the phrases in a
random order, drop some adjectives, or reduce to one bare concept word
(``"sky"``; 40% of them, the category drawn uniformly), which is the text zero-shot callers encode for
a concept (:func:`neurcore.labels.concept_prompt`). Every caption comes with the ids of
its phrases, and :meth:`Captioner.truth` gives the phrases true of an image,
so a trainer can tell whether a caption is true of another image of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

MIN_COVERAGE = 0.01
#: Share of augmented captions that are one bare concept word (of a category drawn uniformly among
#: the present ones, so textures and shapes are as frequent as scenes).
WORD_CAPTIONS = 0.4
CATEGORIES = ("scene", "stuff", "object", "color", "texture")


@dataclass(frozen=True)
class Description:
    """What a caption may say of an image or crop (indices into the captioner's category lists).

    scene: scene index; stuff: (stuff, colour) pairs; objects: (shape, colour, texture)
    triples, largest first; present: concept rows (into ``concept_names``) with
    coverage >= min_coverage; loose: present concepts no stuff/object phrase implies.
    """

    scene: int
    stuff: tuple[tuple[int, int], ...]
    objects: tuple[tuple[int, int, int], ...]
    present: tuple[int, ...]
    loose: tuple[int, ...]


class Captioner:
    """Captions from the masks of a world whose concepts fall in the categories
    scene, stuff, object (shape), color and texture (``SyntheticWorld``).

    concept_names, concept_categories: the world's lists (same length).
    """

    def __init__(self, concept_names, concept_categories, *, min_coverage: float = MIN_COVERAGE):
        names, cats = list(concept_names), list(concept_categories)
        if len(names) != len(cats):
            raise InputError(f"captions: {len(names)} concept names but {len(cats)} categories")
        missing = [c for c in CATEGORIES if c not in cats]
        if missing:
            raise InputError(f"captions: the concepts have no category {', '.join(missing)} "
                             f"(need {', '.join(CATEGORIES)})")
        if not 0 <= min_coverage < 1:
            raise InputError(f"captions: min_coverage must lie in [0, 1), got {min_coverage}")
        self.concept_names, self.min_coverage = names, float(min_coverage)
        self.category_of = cats
        rows = {c: np.array([i for i, k in enumerate(cats) if k == c]) for c in CATEGORIES}
        self.scene_rows, self.stuff_rows, self.shape_rows = rows["scene"], rows["stuff"], rows["object"]
        self.color_rows, self.texture_rows = rows["color"], rows["texture"]
        n_c = len(names)
        self.n_stuff, self.n_shape = len(self.stuff_rows), len(self.shape_rows)
        self.n_color, self.n_texture = len(self.color_rows), len(self.texture_rows)
        self.n_stuff_atoms = self.n_stuff * self.n_color
        self.n_atoms = self.n_stuff_atoms + self.n_shape * self.n_color * self.n_texture
        # Concepts each atom's pixels belong to: bool [n_atoms, n_concepts].
        members = np.zeros((self.n_atoms, n_c), bool)
        for st in range(self.n_stuff):
            for co in range(self.n_color):
                members[self._stuff_atom(st, co), [self.stuff_rows[st], self.color_rows[co]]] = True
        for sh in range(self.n_shape):
            for co in range(self.n_color):
                for tx in range(self.n_texture):
                    a = self._object_atom(sh, co, tx)
                    members[a, [self.shape_rows[sh], self.color_rows[co], self.texture_rows[tx]]] = True
        self.atom_members = members
        # Phrase ids: concept words, then object phrases (shape, colour or none, texture or none),
        # then stuff phrases (stuff, colour).
        self._n_obj_phrases = self.n_shape * (self.n_color + 1) * (self.n_texture + 1)
        self.n_phrases = n_c + self._n_obj_phrases + self.n_stuff_atoms

    # ---------------------------------------------------------------- atoms
    def _stuff_atom(self, st: int, co: int) -> int:
        return st * self.n_color + co

    def _object_atom(self, sh: int, co: int, tx: int) -> int:
        return self.n_stuff_atoms + (sh * self.n_color + co) * self.n_texture + tx

    def atom_map(self, masks: np.ndarray) -> tuple[int, np.ndarray]:
        """(scene index, atoms int16 [H, W]) of one image from its masks bool [n_concepts, H, W]."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[0] != len(self.concept_names):
            raise InputError(f"captions: masks must be [n_concepts={len(self.concept_names)}, H, W], "
                             f"got shape {masks.shape}")
        scene_any = masks[self.scene_rows].any(axis=(1, 2))
        if scene_any.sum() != 1:
            raise InputError(f"captions: expected exactly one scene in the masks, got {int(scene_any.sum())}")
        obj = masks[self.shape_rows].any(axis=0)
        color = masks[self.color_rows].argmax(axis=0)
        atoms = np.where(
            obj,
            self.n_stuff_atoms
            + (masks[self.shape_rows].argmax(axis=0) * self.n_color + color) * self.n_texture
            + masks[self.texture_rows].argmax(axis=0),
            masks[self.stuff_rows].argmax(axis=0) * self.n_color + color,
        )
        return int(np.argmax(scene_any)), atoms.astype(np.int16)

    def atom_counts(self, atoms: np.ndarray) -> np.ndarray:
        """Pixels per atom in a region: int64 [n_atoms] (``atoms`` may be a crop of an atom map)."""
        return np.bincount(np.asarray(atoms, np.int64).ravel(), minlength=self.n_atoms)

    def coverage(self, scene: int, counts: np.ndarray) -> np.ndarray:
        """Fraction of the region each concept covers: float [n_concepts] (the scene covers it all)."""
        area = max(int(counts.sum()), 1)
        cov = (counts @ self.atom_members) / area
        cov[self.scene_rows[scene]] = 1.0
        return cov

    def describe(self, scene: int, counts: np.ndarray) -> Description:
        """The description of a region from its scene and atom counts (:meth:`atom_counts`)."""
        area = max(int(counts.sum()), 1)
        keep = counts / area >= self.min_coverage if self.min_coverage > 0 else counts > 0
        present = np.flatnonzero(self.coverage(scene, counts) >= max(self.min_coverage, 1e-12))
        stuff = tuple(divmod(int(a), self.n_color) for a in np.flatnonzero(keep[: self.n_stuff_atoms]))
        obj_atoms = np.flatnonzero(keep[self.n_stuff_atoms:])
        obj_atoms = obj_atoms[np.argsort(-counts[self.n_stuff_atoms + obj_atoms], kind="stable")]
        objects = tuple((int(a) // (self.n_color * self.n_texture), int(a) // self.n_texture % self.n_color,
                         int(a) % self.n_texture) for a in obj_atoms)
        implied = {int(self.scene_rows[scene])}
        for st, co in stuff:
            implied |= {int(self.stuff_rows[st]), int(self.color_rows[co])}
        for sh, co, tx in objects:
            implied |= {int(self.shape_rows[sh]), int(self.color_rows[co]), int(self.texture_rows[tx])}
        loose = tuple(int(c) for c in present if int(c) not in implied)
        return Description(scene, stuff, objects, tuple(int(c) for c in present), loose)

    def describe_masks(self, masks: np.ndarray) -> Description:
        """The description of an image or crop from its masks bool [n_concepts, H, W]."""
        scene, atoms = self.atom_map(masks)
        return self.describe(scene, self.atom_counts(atoms))

    # -------------------------------------------------------------- phrases
    def _object_phrase(self, sh: int, co: int, tx: int) -> int:
        """Phrase id of an object phrase; co / tx = -1 when the phrase leaves them out."""
        return len(self.concept_names) + (sh * (self.n_color + 1) + co + 1) * (self.n_texture + 1) + tx + 1

    def _stuff_phrase(self, st: int, co: int) -> int:
        return len(self.concept_names) + self._n_obj_phrases + self._stuff_atom(st, co)

    def truth(self, d: Description) -> np.ndarray:
        """Phrases true of the described region: bool [n_phrases]."""
        out = np.zeros(self.n_phrases, bool)
        out[list(d.present)] = True
        for st, co in d.stuff:
            out[self._stuff_phrase(st, co)] = True
        for sh, co, tx in d.objects:
            out[[self._object_phrase(sh, c, t) for c in (co, -1) for t in (tx, -1)]] = True
        return out

    def caption(self, d: Description, rng: np.random.Generator | None = None) -> tuple[str, list[int]]:
        """(caption, phrase ids). Without ``rng`` the full caption, mentioning exactly the present
        concepts; with it an augmented one (subset, order, dropped adjectives, or one bare word)."""
        return self._render(*self._plan(d, rng), form=0 if rng is None else int(rng.integers(3)))

    def caption_and_foil(self, d: Description, rng: np.random.Generator):
        """An augmented caption and its foil: the same caption with one concept swapped for one
        that makes it false of the region (an object's texture, shape or colour; the word of a
        one-word caption; else the scene), as hard negatives for contrastive training.
        Returns ((caption, ids), (foil, ids) or None when no swap makes it false)."""
        scene, phrases = self._plan(d, rng)
        form = int(rng.integers(3))
        truth = self.truth(d)
        objects = [k for k, p in enumerate(phrases) if p[0] == "object"]
        options = []
        for k in rng.permutation(objects):
            _, sh, co, tx = phrases[k]
            attrs = ["texture"] * (tx >= 0) * 2 + ["shape"] * 2 + ["color"] * (co >= 0)
            attr = attrs[rng.integers(len(attrs))]
            n = {"texture": self.n_texture, "shape": self.n_shape, "color": self.n_color}[attr]
            for v in rng.permutation(n):
                if attr == "texture":
                    new = (sh, co, int(v))
                elif attr == "shape":
                    new = (int(v), co, tx)
                else:
                    new = (sh, int(v), tx)
                if not truth[self._object_phrase(*new)]:
                    options.append((k, ("object", *new)))
                    break
            if options:
                break
        if not options:
            words = [k for k, p in enumerate(phrases) if p[0] == "word"]
            for k in words:
                c = phrases[k][1]
                same = [int(x) for x in rng.permutation(len(self.concept_names))
                        if self.category_of[x] == self.category_of[c] and not truth[x]]
                if same:
                    options.append((k, ("word", same[0])))
                    break
        if not options and scene is not None:
            others = [x for x in range(len(self.scene_rows)) if x != scene]
            foil = self._render(int(rng.choice(others)), phrases, form)
            return self._render(scene, phrases, form), foil
        if not options:
            return self._render(scene, phrases, form), None
        k, swapped = options[0]
        foil_phrases = phrases[:k] + [swapped] + phrases[k + 1:]
        return self._render(scene, phrases, form), self._render(scene, foil_phrases, form)

    def _plan(self, d: Description, rng):
        """(scene index or None, phrases): ("word", c), ("stuff", st, co or -1), ("object", sh, co, tx)."""
        if rng is not None and rng.random() < WORD_CAPTIONS:  # one bare concept word
            cats = sorted({self.category_of[c] for c in d.present})
            cat = cats[rng.integers(len(cats))]
            words = [c for c in d.present if self.category_of[c] == cat]
            return None, [("word", int(words[rng.integers(len(words))]))]
        phrases = []
        for st, co in d.stuff:
            phrases.append(("stuff", st, -1 if rng is not None and rng.random() < 0.3 else co))
        for sh, co, tx in d.objects:
            if rng is not None:
                co = co if rng.random() >= 0.15 else -1
                tx = tx if rng.random() >= 0.3 else -1
            phrases.append(("object", sh, co, tx))
        phrases += [("word", c) for c in d.loose]
        scene = d.scene
        if rng is not None:
            keep = rng.uniform(0.4, 1.0)
            with_scene = rng.random() < keep
            phrases = [phrases[k] for k in rng.permutation(len(phrases)) if rng.random() < keep]
            if phrases and not with_scene:
                scene = None
        return scene, phrases

    def _render(self, scene, phrases, form: int = 0) -> tuple[str, list[int]]:
        name = self.concept_names
        texts, ids = [], []
        for p in phrases:
            if p[0] == "word":
                texts.append(name[p[1]])
                ids.append(p[1])
            elif p[0] == "stuff":
                _, st, co = p
                word = name[self.stuff_rows[st]]
                texts.append(f"{name[self.color_rows[co]]} {word}" if co >= 0 else word)
                ids.append(self._stuff_phrase(st, co) if co >= 0 else int(self.stuff_rows[st]))
            else:
                _, sh, co, tx = p
                words = ([name[self.color_rows[co]]] if co >= 0 else []) + \
                        ([name[self.texture_rows[tx]]] if tx >= 0 else []) + [name[self.shape_rows[sh]]]
                texts.append("a " + " ".join(words))
                ids.append(self._object_phrase(sh, co, tx))
        listed = _join(texts)
        if scene is None:
            if len(phrases) == 1 and phrases[0][0] == "word":
                return listed, ids  # a bare concept word
            return (listed if form != 2 else f"a photo of {listed}"), ids
        scene_word = name[self.scene_rows[scene]]
        ids = [int(self.scene_rows[scene])] + ids
        if not listed:
            return (f"a {scene_word}" if form != 2 else f"a photo of a {scene_word}"), ids
        return (f"a {scene_word} with {listed}", f"{listed} in a {scene_word}",
                f"a photo of a {scene_word}: {listed}")[form], ids


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(masks: np.ndarray, concept_names, concept_categories, *, min_coverage: float = MIN_COVERAGE,
            rng: np.random.Generator | None = None) -> str:
    """The caption of an image or crop from its exact masks bool [n_concepts, H, W] (a crop: the
    masks sliced to it); ``rng`` for an augmented caption (see :class:`Captioner`)."""
    cap = Captioner(concept_names, concept_categories, min_coverage=min_coverage)
    return cap.caption(cap.describe_masks(masks), rng)[0]
