"""neurcore's errors, one hierarchy.

- :class:`NeurcoreError`: every error neurcore raises on purpose. The command line reports it in
  one line and exits with code 2; anything else is a bug and keeps its traceback.
- :class:`InputError` (also a ``ValueError``): bad input of any kind (an array of the wrong shape,
  a probe file, an npz field, a formula string, a layer name); the message names the file, field
  or shape that is wrong.
- :class:`FormulaSyntaxError`: a formula string that does not parse.
- :class:`ProbeError`: a probe dataset that cannot be read (missing file, malformed row, ...).
- :class:`BackendUnavailable` (also a ``RuntimeError``): a native backend that was not built or
  cannot run here (the CUDA module, Triton, a CPU instruction-set level), or an optional package
  that is not installed.
"""

from __future__ import annotations

__all__ = ["NeurcoreError", "InputError", "FormulaSyntaxError", "ProbeError", "BackendUnavailable"]


class NeurcoreError(Exception):
    """Base of every error neurcore raises on purpose."""


class InputError(NeurcoreError, ValueError):
    """Bad input file, array or argument; the message names the file, the field and what is wrong."""


class FormulaSyntaxError(InputError):
    """A formula string that does not parse; the message gives the position."""


class ProbeError(InputError):
    """A probe dataset that cannot be read; the message names the file and row."""


class BackendUnavailable(NeurcoreError, RuntimeError):
    """A backend (CUDA module, Triton, CPU level) or optional package that is not built or not usable here."""
