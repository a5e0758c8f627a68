"""Synthetic mask sets for the benchmarks (seeded; data sets are only ever appended to)."""

from __future__ import annotations

import numpy as np

from neurcore import BitMasks, BitMasksBuilder


def random_rows(rng, n, n_images, side, *, touch=(1.0, 1.0), fill=0.05, layout="auto") -> BitMasks:
    """n masks over n_images x side x side; each row touches a fraction of the images drawn from
    ``touch`` (uniform range) with ``fill`` of the pixels set inside them."""
    rows = []
    for _ in range(n):
        touched = rng.random(n_images) < rng.uniform(*touch)
        m = rng.random((1, n_images, side, side), dtype=np.float32) < fill
        m &= touched[None, :, None, None]
        rows.append(BitMasks.from_dense(m, layout))
    return BitMasks.concat(rows)


def intersect_case(name: str, n_a: int = 20, n_b: int = 600, n_images: int = 1000, side: int = 56):
    """The two row sets of the intersect benchmarks (seed 12345): "dense" rows (5% fill everywhere)
    or "image-sparse" rows (each touches 2-10% of the images, 30% fill inside)."""
    rng = np.random.default_rng(12345)
    kind = dict(fill=0.05) if name == "dense" else dict(touch=(0.02, 0.10), fill=0.3)
    return random_rows(rng, n_a, n_images, side, **kind), random_rows(rng, n_b, n_images, side, **kind)


def as_float32(masks: BitMasks, chunk: int = 16) -> np.ndarray:
    """The masks as a 0/1 float32 matrix [n, pixels] for the BLAS baseline."""
    out = np.empty((masks.n, int(np.prod(masks.sample_shape))), dtype=np.float32)
    for s in range(0, masks.n, chunk):
        part = masks[s : s + chunk].to_dense()
        out[s : s + len(part)] = part.reshape(len(part), -1)
    return out


def zipf_frequencies(n: int, top: float = 0.5, bottom: float = 0.0005) -> np.ndarray:
    """Image frequencies r^-s from ``top`` down to ``bottom`` (SPEC.md: ~0.05% to ~50% of images)."""
    s = np.log(top / bottom) / np.log(n)
    return top * (np.arange(1, n + 1, dtype=np.float64) ** -s)


def broden_like_concepts(rng, n_images=22210, side=112, n_pixel=1000, n_scene=100, batch=512,
                         path=None) -> BitMasks:
    """A compexp-scale concept set, built by streaming: ``n_pixel`` pixel-level concepts with Zipf
    image frequencies and 5-60% fill inside their images, plus ``n_scene`` image-level scene
    concepts (each image has one scene, filling it), as image-sparse BitMasks."""
    freq = zipf_frequencies(n_pixel)
    fill = rng.uniform(0.05, 0.6, n_pixel).astype(np.float32)
    scene_p = zipf_frequencies(n_scene, top=1.0, bottom=0.01)
    scene_p /= scene_p.sum()
    builder = BitMasksBuilder(n_pixel + n_scene, (side, side), layout="sparse", path=path)
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        rows, images = np.nonzero(rng.random((n_pixel, b)) < freq[:, None])
        masks = rng.random((len(rows), side, side), dtype=np.float32) < fill[rows, None, None]
        scene = n_pixel + rng.choice(n_scene, size=b, p=scene_p)
        rows = np.concatenate([rows, scene])
        images = np.concatenate([images, np.arange(b)])
        masks = np.concatenate([masks, np.ones((b, side, side), bool)])
        builder.append_sparse(b, rows, images, masks)
    return builder.finish()


def planted_layer(directory, n_units: int = 400, first: tuple = ()):
    """The planted layer of the search benchmarks (seed 0): 48 blob concepts over 1,500 images x
    16 x 16 and ``n_units`` units planted with formulas of length 1-3, 3% of their pixels flipped,
    written as ``neurcore search`` reads them: ``directory/C.npz`` and ``directory/U.npz``, plus
    ``U-first{k}.npz`` holding the first k units for each k in ``first``.
    Returns (concepts, units, planted formulas)."""
    from neurcore.testing import blob_concepts, plant_units

    rng = np.random.default_rng(0)
    concepts = blob_concepts(rng, 48, 1500, (16, 16))
    units, formulas = plant_units(rng, concepts, n_units, lengths=(1, 2, 3), noise=0.03)
    np.savez(f"{directory}/C.npz", masks=concepts.masks.to_dense(), names=np.array(concepts.names),
             categories=np.array(concepts.categories))
    dense = units.to_dense()
    np.savez(f"{directory}/U.npz", masks=dense)
    for k in first:
        np.savez(f"{directory}/U-first{k}.npz", masks=dense[:k])
    return concepts, units, formulas
