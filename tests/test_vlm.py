"""The vision-language backend: open_clip models by name, the tiny CLIPs' configs and training,
exact captions, embedding caches and the zero-shot quality measure."""

import math
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from neurcore import labels as V
from neurcore.labels import _tiny_clips, _vlm
from neurcore.errors import InputError
from neurcore.probe.captions import MIN_COVERAGE, Captioner, caption
from neurcore.probe.synthetic import SyntheticWorld

TINY = _tiny_clips._TINY_PREPROCESS


@pytest.fixture(scope="module")
def tiny():
    """The tiny ViT CLIP with random (seeded) weights."""
    return V.OpenClipVLM("neurcore-tiny-vit", preprocess_cfg=TINY)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(n_images=40, size=64, seed=3)


@pytest.fixture(scope="module")
def briefly_trained():
    vlm, info = V.train_tiny_clip("vit", steps=3, n_images=24, batch_size=12, calibration_images=40,
                                  progress=False)
    return vlm, info


# ------------------------------------------------------------------ configs
def test_tiny_configs_are_registered_open_clip_models():
    _vlm._open_clip()
    assert {"neurcore-tiny-vit", "neurcore-tiny-resnet"} <= set(open_clip.list_models())
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    vit = V.OpenClipVLM("neurcore-tiny-vit", preprocess_cfg=TINY)
    resnet = V.OpenClipVLM("neurcore-tiny-resnet", preprocess_cfg=TINY)
    assert type(vit.model) is open_clip.CLIP and type(resnet.model) is open_clip.CLIP
    assert isinstance(vit.model.visual, VisionTransformer)
    assert isinstance(resnet.model.visual, ModifiedResNet)
    assert (vit.image_size, resnet.image_size) == (64, 128) and vit.embed_dim == resnet.embed_dim == 128
    # The two defaults differ in architecture and seed.
    assert V.TINY_CLIPS["vit"].seed != V.TINY_CLIPS["resnet"].seed
    assert V.TINY_CLIPS["vit"].world_seed != V.TINY_CLIPS["resnet"].world_seed != 0


# ----------------------------------------------------------------- encoding
def test_encode_shapes_and_normalisation(tiny):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 50, 70, 3), dtype=np.uint8)
    emb = tiny.encode_image(images)
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(tiny.encode_image(images, batch_size=2), emb, atol=1e-5)
    # Crops of different sizes in one list; each is resized on its own.
    crops = [images[0, :20, :30], images[1], images[2, 5:45, 10:20]]
    per_crop = tiny.encode_image(crops)
    np.testing.assert_allclose(per_crop[1], emb[1], atol=1e-5)
    np.testing.assert_allclose(per_crop[0], tiny.encode_image(images[:1, :20, :30])[0], atol=1e-5)
    texts = tiny.encode_text(["sky", "a red dotted circle", "grass"])
    assert texts.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(tiny.encode_text(["sky", "a red dotted circle", "grass"], batch_size=2), texts,
                               atol=1e-5)
    assert tiny.encode_text([]).shape == (0, 128)
    assert V.concept_prompt("sky") == "sky"


def test_preprocess_resizes_and_normalises(tiny):
    gray = np.full((2, 30, 90, 3), 128, np.uint8)
    x = tiny.preprocess(gray)
    assert tuple(x.shape) == (2, 3, 64, 64)
    expected = (128 / 255 - np.array(TINY["mean"])) / np.array(TINY["std"])
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-5)
    # shortest-side resize + centre crop keeps the middle of a wide image
    wide = np.zeros((1, 32, 96, 3), np.uint8)
    wide[:, :, 24:72] = 255  # the centre third (columns 32-63) and a margin for interpolation
    tiny.resize_mode = "shortest"
    try:
        mid = tiny.preprocess(wide)
    finally:
        tiny.resize_mode = "squash"
    assert torch.allclose(mid, torch.full_like(mid, float(mid.max())))  # all white: only the centre survives
    assert float(tiny.preprocess(wide).min()) < float(mid.min())            # squashed, the black sides stay


def test_bad_images_and_texts(tiny):
    with pytest.raises(InputError, match="uint8"):
        tiny.encode_image(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
        tiny.encode_image(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="list of strings"):
        tiny.encode_text("sky")


def test_real_architecture_by_name_with_random_weights():
    vlm = V.OpenClipVLM("RN50")  # open_clip's ResNet-50 CLIP, random seeded weights
    assert vlm.image_size == 224 and vlm.embed_dim == 1024
    images = np.random.default_rng(1).integers(0, 256, (1, 100, 80, 3), dtype=np.uint8)
    emb = vlm.encode_image(images)
    text = vlm.encode_text(["sky", "a red circle"])
    assert emb.shape == (1, 1024) and text.shape == (2, 1024)
    assert np.isfinite(emb).all() and np.isfinite(text).all()
    assert vlm.calibration == V.FALLBACK_CALIBRATION


def test_calibration_table_by_name():
    assert V.CALIBRATION["ViT-L-16-SigLIP-384"] == (60.0, -0.09)
    assert V.CALIBRATION["ViT-SO400M-14-SigLIP-384"] == (58.0, -0.13)
    assert V.CALIBRATION["ViT-L-14-336"] == (58.0, -0.25)
    vlm = V.OpenClipVLM("neurcore-tiny-vit", calibration=(3.0, -0.5), preprocess_cfg=TINY)
    assert vlm.calibration == (3.0, -0.5)


# ------------------------------------------------------------------ weights
def _other_weights():
    return V.OpenClipVLM("neurcore-tiny-vit", seed=7, preprocess_cfg=TINY)


def test_weights_round_trip_file_and_directory(tmp_path, tiny):
    src = _other_weights()
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    want = src.encode_image(images)
    assert not np.allclose(want, tiny.encode_image(images), atol=1e-3)  # seeds really differ
    state = src.model.state_dict()

    pt = tmp_path / "w.pt"
    torch.save(state, pt)
    from safetensors.torch import save_file

    st_dir = tmp_path / "dir"
    st_dir.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, st_dir / "open_clip_model.safetensors")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "calibration": [9.0, -0.3]}, ckpt)
    for weights in (pt, st_dir, ckpt):
        vlm = V.OpenClipVLM("neurcore-tiny-vit", str(weights), preprocess_cfg=TINY)
        np.testing.assert_allclose(vlm.encode_image(images), want, atol=1e-5)
        np.testing.assert_allclose(vlm.encode_text(["sky"]), src.encode_text(["sky"]), atol=1e-5)
    assert V.OpenClipVLM("neurcore-tiny-vit", str(ckpt), preprocess_cfg=TINY).calibration == (9.0, -0.3)
    # The cache key follows the weights, so embedding caches of different weights never mix.
    assert V.OpenClipVLM("neurcore-tiny-vit", str(pt)).cache_key != tiny.cache_key


def test_unknown_name_lists_close_names():
    with pytest.raises(InputError, match="ViT-B-32") as err:
        V.OpenClipVLM("ViT-B-33")
    assert "ViT-B-33" in str(err.value)
    with pytest.raises(InputError, match="no-such-model"):
        V.load_vlm("no-such-model")


def test_missing_and_mismatched_weights_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(InputError, match=re.escape(str(missing))):
        V.OpenClipVLM("neurcore-tiny-vit", str(missing))
    resnet = V.OpenClipVLM("neurcore-tiny-resnet", preprocess_cfg=TINY)
    wrong = tmp_path / "resnet.pt"
    torch.save(resnet.model.state_dict(), wrong)
    with pytest.raises(InputError, match=re.escape(str(wrong)) + r".*neurcore-tiny-vit.*key"):
        V.OpenClipVLM("neurcore-tiny-vit", str(wrong))
    state = _other_weights().model.state_dict()
    state["text_projection"] = state["text_projection"][:, :64]
    shaped = tmp_path / "shape.pt"
    torch.save(state, shaped)
    with pytest.raises(InputError, match=r"shape.pt.*'text_projection' has shape \(64, 64\).*\(64, 128\)"):
        V.OpenClipVLM("neurcore-tiny-vit", str(shaped))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(InputError, match="garbage.bin"):
        V.OpenClipVLM("neurcore-tiny-vit", str(garbage))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no weights file"):
        V.OpenClipVLM("neurcore-tiny-vit", str(empty))


# ----------------------------------------------------------------- captions
def _words(text):
    return set(re.findall(r"[a-z]+", text))


def _present(masks, min_coverage=MIN_COVERAGE):
    return masks.mean(axis=(1, 2)) >= min_coverage


def test_captions_are_exact(world):
    cap = Captioner(world.concept_names, world.concept_categories)
    names = np.array(world.concept_names)
    rng = np.random.default_rng(0)
    for i in range(world.n_images):
        _, masks = world.sample(i)
        present = set(names[_present(masks)])
        full = caption(masks, world.concept_names, world.concept_categories)
        assert _words(full) & set(names) == present, full  # every present concept, nothing else
        # Each object phrase is bound: its colour, texture and shape share pixels.
        listed = full.split(" with ", 1)[1] if " with " in full else ""
        phrases = [p.split() for p in re.split(r", | and ", listed)]
        for _, col, tex, shape in [p for p in phrases if len(p) == 4 and p[0] == "a"]:
            m = [masks[world.concept_names.index(w)] for w in (col, tex, shape)]
            assert (m[0] & m[1] & m[2]).mean() >= MIN_COVERAGE, (full, col, tex, shape)
        # Random crops: a crop caption mentions only what covers >= 1% of the crop.
        for _ in range(5):
            h, w = rng.integers(12, 65, size=2)
            y0, x0 = rng.integers(0, 65 - h), rng.integers(0, 65 - w)
            crop = masks[:, y0 : y0 + h, x0 : x0 + w]
            in_crop = set(names[_present(crop)])
            d = cap.describe_masks(crop)
            assert _words(cap.caption(d)[0]) & set(names) == in_crop
            text, ids = cap.caption(d, rng)
            assert _words(text) & set(names) <= in_crop, text
            assert cap.truth(d)[ids].all()
            # Through atom counts (the trainer's path), the same description.
            scene, atoms = cap.atom_map(masks)
            assert cap.describe(scene, cap.atom_counts(atoms[y0 : y0 + h, x0 : x0 + w])) == d


def test_caption_can_fail_on_a_wrong_mask(world):
    """The exactness check above can fail: a caption of other masks mentions absent concepts."""
    _, a = world.sample(0)
    _, b = world.sample(1)
    names = np.array(world.concept_names)
    other = caption(b, world.concept_names, world.concept_categories)
    assert not (_words(other) & set(names) <= set(names[_present(a)])) or \
        set(names[_present(a)]) == set(names[_present(b)])
    with pytest.raises(InputError, match="n_concepts"):
        caption(a[:5], world.concept_names, world.concept_categories)


def test_training_positives_are_true_captions(world):
    cap = Captioner(world.concept_names, world.concept_categories)
    images, atoms, scenes = [], [], []
    for i in range(12):
        img, masks = world.sample(i)
        s, a = cap.atom_map(masks)
        images.append(img), atoms.append(a), scenes.append(s)
    crops, texts, positive, owner, present = _tiny_clips._training_batch(np.stack(images), np.stack(atoms), np.array(scenes), cap,
                                                      32, np.random.default_rng(1))
    assert len(crops) == 32 and len(texts) == len(owner) > 32 and positive.shape == (32, len(texts))
    assert (owner[:32] == np.arange(32)).all() and present.shape == (32, len(world.concept_names))
    words = [j for j, t in enumerate(texts[:32]) if t in world.concept_names]
    assert all(present[j, world.concept_names.index(texts[j])] for j in words)
    assert positive[np.arange(32), np.arange(32)].all()       # each caption is true of its own crop
    assert not positive[owner[32:], np.arange(32, len(texts))].any()  # each foil is false of it
    assert not positive.all()
    # One-word captions of concepts several crops show are positives of all of them.
    words = [j for j, t in enumerate(texts[:32]) if t in world.concept_names]
    assert words and any(positive[:, j].sum() > 1 for j in words)


# ---------------------------------------------------------------- training
def test_brief_training_runs_and_scores(briefly_trained, tmp_path):
    vlm, info = briefly_trained
    assert info["steps"] == 3 and math.isfinite(info["final_loss"])
    a, b = vlm.calibration
    assert math.isfinite(a) and math.isfinite(b)
    auc = V.concept_auc(vlm, n_images=60)
    world = SyntheticWorld(n_images=1)
    assert list(auc) == world.concept_names
    values = np.array(list(auc.values()))
    assert ((values[~np.isnan(values)] >= 0) & (values[~np.isnan(values)] <= 1)).all()
    assert (~np.isnan(values)).sum() >= 25
    means = V.auc_by_category(auc)
    assert set(means) == {"scene", "stuff", "object", "color", "texture", "all"}


def test_default_vlm_loads_from_the_cache(briefly_trained, tmp_path, monkeypatch):
    vlm, info = briefly_trained
    monkeypatch.setenv("NEURCORE_CACHE", str(tmp_path))
    monkeypatch.setitem(V.DEFAULT_VLMS, "default", "vit")  # the briefly trained one stands in
    _tiny_clips._save_tiny(vlm, info, str(tmp_path / V.TINY_CLIPS["vit"].file))
    loaded = V.load_vlm("default", progress=False)
    images = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.encode_image(images), vlm.encode_image(images), atol=1e-5)
    assert loaded.calibration == pytest.approx(vlm.calibration)
    assert loaded.cache_key == "tiny-clip-vit-v1"
    with pytest.raises(InputError, match="own weights"):
        V.load_vlm("default", weights="x.pt")


# ------------------------------------------------------------------ caches
class Counting:
    """A VLM wrapper that counts encode calls and can fail on a given call."""

    def __init__(self, vlm, fail_on=None):
        self.vlm, self.calls, self.text_calls, self.fail_on = vlm, 0, 0, fail_on
        self.name, self.cache_key, self.embed_dim = vlm.name, vlm.cache_key, vlm.embed_dim

    def encode_image(self, images, batch_size=64):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.vlm.encode_image(images, batch_size=batch_size)

    def encode_text(self, texts):
        self.text_calls += 1
        return self.vlm.encode_text(texts)


def test_embed_images_cached_and_resumed(tiny, tmp_path):
    probe = SyntheticWorld(n_images=10, size=32, seed=4)
    want = tiny.encode_image(probe.images(0, 10))
    first = Counting(tiny)
    out = V.embed_images(first, probe, str(tmp_path / "a"), batch_size=4, progress=False)
    assert first.calls == 3 and out.shape == (10, 128)
    np.testing.assert_allclose(out, want, atol=1e-5)
    again = Counting(tiny)
    np.testing.assert_allclose(V.embed_images(again, probe, str(tmp_path / "a"), batch_size=4, progress=False),
                               want, atol=1e-5)
    assert again.calls == 0
    assert os.path.isfile(tmp_path / "a" / os.path.basename(V.vlm_cache_dir("", tiny)) / "images.npy")
    # Interrupted during the second batch: the rerun encodes only the batches left.
    broken = Counting(tiny, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        V.embed_images(broken, probe, str(tmp_path / "b"), batch_size=4, progress=False)
    rest = Counting(tiny)
    out = V.embed_images(rest, probe, str(tmp_path / "b"), batch_size=4, progress=False)
    assert rest.calls == 2
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_embed_texts_cached_by_content(tiny, tmp_path):
    c = Counting(tiny)
    a = V.embed_texts(c, ["sky", "grass"], str(tmp_path))
    b = V.embed_texts(c, ["sky", "grass"], str(tmp_path))
    assert c.text_calls == 1
    np.testing.assert_array_equal(a, b)
    V.embed_texts(c, ["grass", "sky"], str(tmp_path))
    assert c.text_calls == 2
    np.testing.assert_allclose(V.embed_texts(tiny, ["sky", "grass"]), a, atol=1e-6)
