import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Triton kernels run on the CPU through the interpreter unless a GPU is here.
# It must be set before triton.jit decorates neurcore's kernels.
if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=600,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

import neurcore  # noqa: E402


@pytest.fixture(params=neurcore.usable_cpu_levels())
def cpu_level(request):
    """Run a test once per instruction-set level this CPU supports."""
    before = neurcore.cpu_level()
    neurcore.set_cpu_level(request.param)
    yield request.param
    neurcore.set_cpu_level(before)


# Image shapes that hit aligned and tail words: 1 pixel, < 64, = 64, 64 + 1, 2-d and 3-d.
IMAGE_SHAPES = [(), (1,), (7,), (64,), (65,), (8, 8), (5, 13), (3, 7, 11), (12, 12)]


def random_masks(rng: np.random.Generator, n: int, sample_shape: tuple, kind: str = "mixed") -> np.ndarray:
    """bool [n, *sample_shape] with rows of varied structure.

    kind: "mixed" draws each row from empty, all-ones, dense random fill, and
    image-sparse (a few images with random fill inside); other kinds force one.
    """
    n_images = sample_shape[0]
    out = np.zeros((n, *sample_shape), dtype=bool)
    kinds = ["empty", "full", "dense", "image-sparse"]
    for r in range(n):
        k = kinds[rng.integers(len(kinds))] if kind == "mixed" else kind
        if k == "full":
            out[r] = True
        elif k == "dense":
            out[r] = rng.random(sample_shape) < rng.uniform(0.01, 0.9)
        elif k == "image-sparse":
            touched = rng.random(n_images) < rng.uniform(0.05, 0.5)
            fill = rng.random(sample_shape) < rng.uniform(0.05, 0.6)
            out[r] = fill & touched.reshape((n_images,) + (1,) * (len(sample_shape) - 1))
    return out


def flat(masks: np.ndarray) -> np.ndarray:
    """[n, ...] -> int64 [n, prod(...)]."""
    return masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))).astype(np.int64)


def one_error_line(capsys, command: str) -> str:
    """The one line a failed ``neurcore <command>`` printed on stderr (nothing on stdout)."""
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"neurcore {command}: error: "), err
    return lines[0]
