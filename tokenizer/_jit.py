"""numba's ``njit`` where numba is installed, else the plain Python function.

The tokenizer compiles its hot loops with numba. A machine without numba (a bare GPU box that
only has numpy and JAX) can still import the package and train: token arrays need no encoder and
augmentation has a vectorised numpy path (``tokenizer.augment``); encoding MIDI there runs the
same loops as plain Python, which is correct but slow.
"""

from __future__ import annotations

try:
    import numba
except ImportError:  # missing, or built for another numpy
    numba = None

HAVE_NUMBA = numba is not None


def njit(fn):
    """``numba.njit(cache=True, nogil=True)(fn)``, or ``fn`` itself without numba."""
    return numba.njit(cache=True, nogil=True)(fn) if HAVE_NUMBA else fn
