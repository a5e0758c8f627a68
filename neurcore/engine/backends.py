"""Which native backends were built and which are usable here.

The CPU module ``neurcore.engine._C`` is always built and must import. The CUDA
module ``neurcore.engine._cuda`` is built only where CMake found a CUDA toolkit and
is loaded inside a try/except; every load attempt is logged, and an operation
that needs a missing backend raises :class:`~neurcore.errors.BackendUnavailable`
instead of falling back silently. The native modules hold the kernels of every
family (masks, and the fused integrated-gradients accumulation of
:mod:`neurcore.attribution`); :func:`cpu_module` and :func:`cuda_module` hand them out.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

from ..errors import BackendUnavailable

__all__ = ["backends", "cpu_level", "set_cpu_level", "usable_cpu_levels", "cpu_module", "cuda_module",
           "cuda_devices", "triton_status"]

logger = logging.getLogger("neurcore")

from . import _C  # noqa: E402  (the CPU module is not optional)

_cuda = None
_cuda_error: str | None = None
try:
    _cuda = importlib.import_module("neurcore.engine._cuda")
    logger.debug("neurcore: loaded the CUDA module (runtime %s)", _cuda.runtime_version())
except ImportError as exc:  # not built here, or built for another platform
    _cuda_error = str(exc)
    logger.debug("neurcore: CUDA module not available: %s", exc)


def _init_cpu_level() -> None:
    wanted = os.environ.get("NEURCORE_CPU_LEVEL", "").strip()
    if wanted:
        levels = {lv["name"]: lv for lv in _C.cpu_levels()}
        lv = levels.get(wanted)
        if lv is None or not (lv["compiled"] and lv["cpu_supports"]):
            usable = [n for n, v in levels.items() if v["compiled"] and v["cpu_supports"]]
            raise BackendUnavailable(
                f"NEURCORE_CPU_LEVEL={wanted!r} is not usable on this machine; choose one of {usable}"
            )
        _C.set_cpu_level(wanted)
    logger.info("neurcore: CPU popcount level %s", _C.cpu_level())


_init_cpu_level()


def cpu_level() -> str:
    """The instruction-set level of the CPU popcount kernels: generic, popcnt, avx2 or avx512."""
    return _C.cpu_level()


def set_cpu_level(name: str) -> None:
    """Use another instruction-set level (for tests and benchmarks); see ``backends()``."""
    _C.set_cpu_level(name)
    logger.info("neurcore: CPU popcount level set to %s", name)


def usable_cpu_levels() -> list[str]:
    """The instruction-set levels that were compiled and that this CPU supports, lowest first."""
    return [lv["name"] for lv in _C.cpu_levels() if lv["compiled"] and lv["cpu_supports"]]


def cpu_module() -> ModuleType:
    """The CPU module ``neurcore.engine._C`` (always built)."""
    return _C


def cuda_module() -> ModuleType:
    """The CUDA module, or :class:`~neurcore.errors.BackendUnavailable` saying why it cannot be used."""
    if _cuda is None:
        raise BackendUnavailable(
            "neurcore was not compiled with CUDA support (the CUDA module did not load: "
            f"{_cuda_error}); rebuild where CMake finds nvcc, or move the masks to the CPU"
        )
    return _cuda


def cuda_devices() -> tuple[int, str]:
    """(number of usable CUDA devices, reason when 0) as the CUDA module sees them."""
    if _cuda is None:
        return 0, f"CUDA module not built: {_cuda_error}"
    return _cuda.device_count()


def triton_status() -> tuple[bool, str]:
    """(whether Triton kernels can run here, why not)."""
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"torch/triton not installed: {exc}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "interpreter (TRITON_INTERPRET=1, CPU tensors)"
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name()}"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU)"


def backends() -> dict:
    """What was built and what is usable: CPU levels, CUDA module and devices, Triton."""
    n_dev, why = cuda_devices()
    triton_ok, triton_why = triton_status()
    return {
        "cpu": {"level": _C.cpu_level(), "levels": _C.cpu_levels()},
        "cuda": {"built": _cuda is not None, "devices": n_dev, "detail": why or "ok"},
        "triton": {"usable": triton_ok, "detail": triton_why},
    }
