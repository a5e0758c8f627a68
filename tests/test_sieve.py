"""SIEVE's stages on small data: selection ratio, top samples, crops around the peak, hypotheses from
clustered crop embeddings, and verification through a verifier whose answers are known."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurcore.errors import InputError
from neurcore.labels import Sieve, peak_crop_boxes, selection_ratio, top_samples


def test_selection_ratio_matches_percentiles_and_edge_cases():
    rng = np.random.default_rng(0)
    s = rng.gamma(2.0, 1.0, (500, 4))
    s[:, 1] = 0.0                                   # never fires
    s[:, 2] = np.where(np.arange(500) < 10, 5.0, 0.0)  # fires on 2% of images: median 0
    r = selection_ratio(s)
    assert r[0] == pytest.approx(np.percentile(s[:, 0], 99) / np.median(s[:, 0]))
    assert r[1] == 0.0 and np.isinf(r[2])
    assert r[3] == pytest.approx(np.percentile(s[:, 3], 99) / np.median(s[:, 3]))


def test_top_samples_best_first_ties_by_index():
    s = np.array([[1.0, 0.0], [3.0, 0.0], [3.0, 1.0], [2.0, 0.0]])
    assert top_samples(s, 3).tolist() == [[1, 2, 3], [2, 0, 1]]
    assert top_samples(s, 10).shape == (2, 4)  # never more than the images


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), size=st.integers(8, 80), frac=st.floats(0.05, 1.0),
       seed=st.integers(0, 10**6))
def test_crop_boxes_inside_image_and_cover_the_peak(h, w, size, frac, seed):
    rng = np.random.default_rng(seed)
    maps = rng.random((3, h, w))
    boxes = peak_crop_boxes(maps, (size, size), frac)
    side = max(1, int(round(frac * size)))
    for m, (y0, x0, y1, x1) in zip(maps, boxes):
        assert 0 <= y0 and y1 <= size and 0 <= x0 and x1 <= size
        assert y1 - y0 == side and x1 - x0 == side
        i, j = np.unravel_index(m.argmax(), m.shape)
        cy, cx = (i + 0.5) * size / h, (j + 0.5) * size / w
        # the peak lies in the crop unless the crop is smaller than one map cell
        if side >= size / min(h, w):
            assert y0 - 1 <= cy <= y1 + 1 and x0 - 1 <= cx <= x1 + 1


def test_crop_fraction_checked():
    with pytest.raises(InputError, match="crop fraction"):
        peak_crop_boxes(np.zeros((1, 2, 2)), (8, 8), 0.0)


class ColourVLM:
    """Embeds an image by its mean colour; texts 'red', 'green', 'blue' are the colour axes."""

    name = "colour"
    axes = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1], "gray": [1, 1, 1]}

    def encode_image(self, images):
        v = np.asarray(images, np.float32).mean(axis=(1, 2)) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_text(self, texts):
        v = np.array([self.axes[t] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class Images:
    """A probe of solid images whose colour cycles red, green, blue."""

    def __init__(self, n):
        self.n_images = n
        colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
        self._images = np.broadcast_to(colours[np.arange(n) % 3][:, None, None, :], (n, 16, 16, 3)).copy()

    def images(self, start, stop):
        return self._images[start:stop]


class KnownVerifier:
    """Activation Rate 0.9 for the true concept of each unit, 0.2 for anything else; counts calls."""

    def __init__(self, truth):
        self.truth, self.calls = truth, []

    def score(self, prompt, units):
        self.calls.append(prompt)
        return [{"activation_rate": 0.9 if self.truth[u] == prompt else 0.2, "cosy_auc": 0.5, "cosy_mad": 0.0}
                for u in units]


def test_sieve_labels_colour_units_and_resumes(tmp_path):
    n = 90
    probe = Images(n)
    acts = np.zeros((n, 3, 4, 4), np.float32)
    for u in range(2):  # unit 0 fires on red images, unit 1 on blue; peak in one corner
        fires = np.arange(n) % 3 == (0, 2)[u]
        acts[fires, u, 0, 0] = np.linspace(5, 40, fires.sum())
    acts[:, 2] = 1.0  # unit 2 is flat: ratio 1, not selected
    verifier = KnownVerifier({0: "red", 1: "blue", 2: None})
    sieve = Sieve(ColourVLM(), ["red", "green", "blue", "gray"], verifier)
    out = sieve.explain(acts, probe, tau=10.0, top_n=20, top_k=2, parts_dir=str(tmp_path), layer="L")
    assert [r.formula for r in out] == ["red", "blue", None]
    assert out[0].metrics["activation_rate"] == 0.9 and out[0].extra["selected"]
    assert not out[2].extra["selected"] and out[2].extra["ratio"] == pytest.approx(1.0)
    assert out[0].extra["retained"] and all(h.get("retained") is not None for h in out[0].extra["hypotheses"])
    # a rerun reads the finished units instead of verifying them again
    calls = len(verifier.calls)
    again = sieve.explain(acts, probe, tau=10.0, top_n=20, top_k=2, parts_dir=str(tmp_path), layer="L")
    assert len(verifier.calls) == calls and [r.formula for r in again] == ["red", "blue", None]


def test_sieve_filter_discards_hypotheses_below_the_mean():
    n = 60
    acts = np.zeros((n, 1, 2, 2), np.float32)
    acts[::3, 0, 1, 1] = np.linspace(1, 9, 20)
    out = Sieve(ColourVLM(), ["red", "green", "blue"], KnownVerifier({0: "red"})).explain(
        acts, Images(n), tau=2.0, top_k=3)
    hyps = out[0].extra["hypotheses"]
    assert hyps[0]["concept"] == "red" and hyps[0]["retained"]
    assert all(not h["retained"] for h in hyps[1:])  # 0.2 < mean (0.9 + 0.2 + 0.2) / 3
    mean = out[0].extra["mean_activation_rate"]
    assert mean["initial"] == pytest.approx((0.9 + 0.2 + 0.2) / 3) and mean["retained"] == pytest.approx(0.9)


def test_sieve_bad_input():
    with pytest.raises(InputError, match="vocabulary is empty"):
        Sieve(ColourVLM(), [])
    with pytest.raises(InputError, match="maps"):
        Sieve(ColourVLM(), ["red"]).explain(np.zeros((4, 2)), Images(4))
    with pytest.raises(InputError, match="probe has 5 images"):
        Sieve(ColourVLM(), ["red"]).explain(np.zeros((4, 1, 2, 2)), Images(5))
