"""Generator backends: the synthetic renderer, a real diffusers pipeline (tiny, built offline) and the checks."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from neurcore.errors import InputError
from neurcore.rules import parse
from neurcore.labels import (DiffusersGenerator, Generator, SyntheticGenerator, build_tiny_pipeline,
                               load_generator)
from neurcore.probe.synthetic import SyntheticWorld


# ----------------------------------------------------------------- synthetic
@pytest.fixture(scope="module")
def synthetic():
    return SyntheticGenerator(size=48)


@pytest.mark.parametrize("prompt", ["red", "circle", "beach", "cloud", "(red AND circle)",
                                    "((blue AND square) AND striped)", "(circle AND NOT red)", "(sky OR grass)",
                                    "yellow AND triangle"])
def test_synthetic_images_show_the_prompt(synthetic, prompt):
    images, maps = synthetic.generate_with_maps(prompt, 6, seed=3)
    world = synthetic.world
    assert images.shape == (6, 48, 48, 3) and images.dtype == np.uint8
    assert maps.shape == (6, len(world.concept_names), 48, 48) and maps.dtype == bool
    formula = parse(prompt)
    for i in range(6):
        covered = formula.evaluate(maps[i], world.concept_names).mean()
        assert covered >= 0.01, (prompt, i, covered)
    # the maps are the rendered images' own: generate() draws the same images
    np.testing.assert_array_equal(synthetic.generate(prompt, 6, seed=3), images)


def test_synthetic_maps_are_the_images_concepts(synthetic):
    """Every pixel has exactly one colour concept, and it is the colour painted there."""
    images, maps = synthetic.generate_with_maps("(purple AND plain)", 4)
    names = synthetic.world.concept_names
    colours = maps[:, [names.index(c) for c in ("red", "green", "blue", "yellow", "purple", "orange", "white",
                                                "black", "brown", "gray")]]
    assert (colours.sum(axis=1) == 1).all()
    purple_plain = maps[:, names.index("purple")] & maps[:, names.index("plain")]
    mean_rgb = images[purple_plain].mean(axis=0)
    np.testing.assert_allclose(mean_rgb, (140, 60, 170), atol=6)  # the world's purple, plus sensor noise


def test_synthetic_is_deterministic_by_seed(synthetic):
    a = synthetic.generate("(red AND circle)", 5, seed=7)
    np.testing.assert_array_equal(a, synthetic.generate("(red AND circle)", 5, seed=7))
    np.testing.assert_array_equal(a[:3], synthetic.generate("(red AND circle)", 3, seed=7))  # independent of n
    assert not np.array_equal(a, synthetic.generate("(red AND circle)", 5, seed=8))
    # another generator on an equal world draws the same
    np.testing.assert_array_equal(a, SyntheticGenerator(world=SyntheticWorld(size=48)).generate(
        "(red AND circle)", 5, seed=7))


def test_synthetic_uses_the_given_world():
    world = SyntheticWorld(n_images=10, size=32, seed=5)
    g = load_generator("synthetic", world=world)
    assert isinstance(g, SyntheticGenerator) and g.world is world and g.prompt_template == "{}"
    assert g.generate("ring", 2).shape == (2, 32, 32, 3)
    assert g.describe() == {"name": "synthetic", "prompt_template": "{}", "size": 32, "world_seed": 5, "close_up": 0.5,
                            "close_up_frame": "shapes whole, other regions filling the frame"}


@pytest.mark.parametrize("prompt, match", [
    ("zebra", r"prompt 'zebra': unknown concept 'zebra'"),
    ("circel", r"unknown concept 'circel'; did you mean circle"),
    ("(red AND NOT zebra)", "unknown concept 'zebra'"),
    ("red circle", r"prompt 'red circle': it is neither a concept name nor a formula"),
    ("(red AND", "neither a concept name nor a formula"),
    ("(red AND NOT red)", r"prompt '\(red AND NOT red\)': no image of this world shows it"),
    ("", "non-empty string"),
])
def test_synthetic_bad_prompts(synthetic, prompt, match):
    with pytest.raises(InputError, match=match):
        synthetic.generate(prompt, 2)


def test_bad_counts_and_seeds(synthetic):
    for n in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="n \\(number of images\\)"):
            synthetic.generate("red", n)
    with pytest.raises(InputError, match="seed"):
        synthetic.generate("red", 1, seed=-1)


# ----------------------------------------------------------------- output checks
class FakeGenerator(Generator):
    name = "fake"

    def __init__(self, output):
        self.output = output

    def _generate(self, prompt, n, seed):
        return self.output


@pytest.mark.parametrize("output, match", [
    (None, r"generator fake returned no images for prompt 'a cat'"),
    ([], r"generator fake returned no images for prompt 'a cat'"),
    (np.zeros((0, 8, 8, 3), np.uint8), r"generator fake returned no images for prompt 'a cat'"),
    (np.zeros((2, 8, 8), np.uint8), r"generator fake for prompt 'a cat': expected images \[n, H, W, 3\]"),
    (np.zeros((2, 8, 8, 4), np.uint8), r"expected images \[n, H, W, 3\], got shape \(2, 8, 8, 4\)"),
    (np.zeros((3, 8, 8, 3), np.uint8), "asked for 2 images, got 3"),
    (np.full((2, 8, 8, 3), np.nan, np.float32), "images contain NaN"),
    (np.zeros((2, 8, 8, 3), np.float32), "expected uint8 images, got dtype float32"),
])
def test_bad_backend_output_gives_one_clear_error(output, match):
    with pytest.raises(InputError, match=match):
        FakeGenerator(output).generate("a cat", 2)


def test_good_backend_output_passes():
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    np.testing.assert_array_equal(FakeGenerator(images).generate("a cat", 2), images)


def test_load_generator_choices(tmp_path):
    assert isinstance(load_generator("synthetic"), SyntheticGenerator)
    for spec in ("stable-diffusion", "diffusers:", "Synthetic", 3):
        with pytest.raises(InputError, match="synthetic.*diffusers:DIR"):
            load_generator(spec)
    with pytest.raises(InputError, match="no such directory"):
        load_generator(f"diffusers:{tmp_path / 'absent'}")


# ----------------------------------------------------------------- diffusers
@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    pytest.importorskip("diffusers")
    path = str(tmp_path_factory.mktemp("pipe") / "tiny-sd")
    assert build_tiny_pipeline(path) == path
    return path


@pytest.fixture(scope="module")
def diffusers_gen(tiny_pipeline):
    return DiffusersGenerator(tiny_pipeline, num_inference_steps=2, batch_size=2)


def test_tiny_pipeline_is_a_saved_stable_diffusion_pipeline(tiny_pipeline):
    with open(os.path.join(tiny_pipeline, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.isdir(os.path.join(tiny_pipeline, part))


def test_diffusers_generates_deterministic_uint8_images(diffusers_gen):
    g = diffusers_gen
    assert g.prompt_template == "realistic photo of a close up of {}"
    assert g.full_prompt("red circle") == "realistic photo of a close up of red circle"
    a = g.generate("red circle", 3, seed=0)  # two batches of <= 2
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert a.std() > 1  # not a blank image
    np.testing.assert_array_equal(a, g.generate("red circle", 3, seed=0))
    np.testing.assert_array_equal(a[:1], g.generate("red circle", 1, seed=0))  # image i independent of n
    assert not np.array_equal(a, g.generate("red circle", 3, seed=1))
    assert not np.array_equal(a[0], a[1])


def test_diffusers_options(tiny_pipeline):
    g = load_generator(f"diffusers:{tiny_pipeline}", num_inference_steps=1, image_size=16,
                       prompt_template="a {} on grass")
    assert isinstance(g, DiffusersGenerator)
    assert g.generate("blue square", 1).shape == (1, 16, 16, 3)
    assert g.describe()["num_inference_steps"] == 1 and g.name == f"diffusers:{os.path.abspath(tiny_pipeline)}"
    with pytest.raises(InputError, match="exactly one"):
        DiffusersGenerator(tiny_pipeline, prompt_template="a photo")


def test_diffusers_empty_or_nan_pipeline_output(diffusers_gen, monkeypatch):
    monkeypatch.setattr(diffusers_gen, "pipeline", lambda **kw: SimpleNamespace(images=np.zeros((0, 32, 32, 3))))
    with pytest.raises(InputError, match=r"generator diffusers:.* returned no images for prompt 'dog'"):
        diffusers_gen.generate("dog", 2)
    monkeypatch.setattr(diffusers_gen, "pipeline", lambda **kw: SimpleNamespace(
        images=np.full((kw["num_images_per_prompt"], 32, 32, 3), np.nan, np.float32)))
    with pytest.raises(InputError, match="prompt 'dog': images contain NaN"):
        diffusers_gen.generate("dog", 2)


def test_diffusers_bad_directories(tmp_path, tiny_pipeline):
    with pytest.raises(InputError, match="no such directory"):
        DiffusersGenerator(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a diffusers pipeline directory"):
        DiffusersGenerator(str(tmp_path / "empty"))
    bad = tmp_path / "bad-index"
    bad.mkdir()
    (bad / "model_index.json").write_text("[1, 2")
    with pytest.raises(InputError, match="model_index.json is not a diffusers pipeline index"):
        DiffusersGenerator(str(bad))
    partial = tmp_path / "partial"
    partial.mkdir()
    with open(os.path.join(tiny_pipeline, "model_index.json")) as f:
        (partial / "model_index.json").write_text(f.read())  # the index without its components
    with pytest.raises(InputError, match="could not load the pipeline"):
        DiffusersGenerator(str(partial))


def test_close_up_frames_shapes_whole_and_fills_the_frame_with_other_regions():
    from neurcore.labels._generate import _close_up, _window_sums

    rng = np.random.default_rng(0)
    m = rng.random((9, 9)) < 0.4
    brute = np.array([[m[y : y + 4, x : x + 4].sum() for x in range(6)] for y in range(6)])
    np.testing.assert_array_equal(_window_sums(m, 4), brute)

    s = 16
    images = np.arange(2 * s * s * 3, dtype=np.int64).reshape(2, s, s, 3).astype(np.uint8)
    masks = np.zeros((2, s, s), bool)
    masks[0, 6:, :] = True          # a stuff region: the bottom 10 rows
    masks[1, 2:6, 3:7] = True       # a shape smaller than half the side
    maps = masks[:, None]
    _, filled = _close_up(images, masks, maps, 0.5, fill=True)
    assert filled[0, 0].all()                       # grass from edge to edge
    masks[0, :6] = rng.random((6, s)) < 0.5         # ... also where it is patchy above
    assert _close_up(images, masks, masks[:, None], 0.5, fill=True)[1][0, 0].all()
    masks[0, :6] = False
    _, whole = _close_up(images, masks, maps, 0.5, fill=False)
    assert whole[0, 0].mean() == masks[0].mean()   # the box is the whole image: unchanged
    for out in (filled, whole):                     # a small region: the half-side square around it
        assert out[1, 0].mean() == 16 / 64
    g = SyntheticGenerator(world=SyntheticWorld(size=32, seed=3))
    grass = g.generate_with_maps("grass", 6, seed=1)[1][:, g.concept_names.index("grass")]
    circle = g.generate_with_maps("circle", 6, seed=1)[1][:, g.concept_names.index("circle")]
    assert grass.mean() > 0.9 and circle.mean() < 0.9
