"""The one place where numba settings for every kernel are chosen.

Every kernel in this package is compiled with :data:`jit`, so the settings below apply to all
of them:

- ``cache=True``: compiled machine code is written next to the sources (``__pycache__``) or to
  the directory named by the ``NUMBA_CACHE_DIR`` environment variable. numba reads that
  variable once, when numba itself is imported, so a process that wants the cache elsewhere
  (a read-only install, a service user without a writable home) must set it *before* it
  imports :mod:`kernels` (or anything else that imports numba).
- ``fastmath=False``: results must match the plain-Python reference twins; reassociation and
  "no NaN" assumptions would break NaN-as-missing semantics.
- ``error_model="numpy"``: division by zero yields inf/NaN instead of raising, and removes the
  per-division check from the hot loops. Kernels never rely on a division raising.
- ``boundscheck=False``, ``nogil=True``: the hot loops index preallocated arrays whose sizes
  the Python wrappers validate; releasing the GIL lets the agent's event loop thread keep
  running while a kernel works in an executor.
"""

from __future__ import annotations

from typing import Any

import numba

JIT_OPTIONS: dict[str, Any] = {
    "cache": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
    "nogil": True,
}

jit = numba.njit(**JIT_OPTIONS)
"""Decorator for every compiled kernel: ``@jit`` on a function compiles it with JIT_OPTIONS."""
