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

import sys
from collections.abc import Callable
from typing import Any, cast

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def _load_numba_without_cffi() -> None:
    """Load numba's cffi support with cffi hidden, so that it is off.

    When cffi is installed (cryptography depends on it), numba's typing context imports it
    on the first compile or cache load and builds a C declaration parser (``cffi.FFI()``:
    pycparser's lexer and parser tables), about 0.2 s of every agent start and 1.5 MB, for
    calling cffi functions from compiled code, which no kernel does. numba decides once, when
    ``numba.core.typing.cffi_utils`` is first imported; cffi itself stays importable for
    everything else in the process."""
    if "numba.core.typing.cffi_utils" in sys.modules:
        return
    had = "cffi" in sys.modules
    saved = sys.modules.get("cffi")
    sys.modules["cffi"] = None  # type: ignore[assignment]  # `import cffi` raises ImportError
    try:
        import numba.core.typing.cffi_utils  # noqa: F401
    finally:
        if had:
            sys.modules["cffi"] = saved  # type: ignore[assignment]
        else:
            del sys.modules["cffi"]


_load_numba_without_cffi()

JIT_OPTIONS: dict[str, Any] = {
    "cache": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
    "nogil": True,
}

jit = numba.njit(**JIT_OPTIONS)
"""Decorator for every compiled kernel: ``@jit`` on a function compiles it with JIT_OPTIONS."""


@intrinsic
def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """``prefetch(arr, i)``: ask the CPU to start loading the cache line of ``arr[i]`` (a
    1-d array) or of ``arr[i, 0]`` (the start of row ``i`` of a 2-d one), for writing, kept
    in every cache level; no effect on results, never faults.

    The per-read kernels walk a batch whose keys they already hold, so they prefetch the
    hash slot and the tag row of reads a few ahead: the loads of one read then overlap the
    work of the ones before it instead of stalling on memory one after another."""
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], idxty, types.intp)
        at = [i] + [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, at, wraparound=False)
        i32 = ir.IntType(32)
        byte_ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, 1 = for a write, 3 = keep in all cache levels, 1 = data cache)
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


prefetch = cast(Callable[[np.ndarray, Any], None], _prefetch)
"""``prefetch(arr, i)`` inside a kernel (see _prefetch)."""


class FixedCall:
    """Calls a compiled kernel whose argument types never change, without numba's per-call
    typing of the arguments.

    numba's dispatcher types every argument at every call to pick the compiled version; for a
    plain array that is a C fast path, but a namedtuple (the kernels' named state, state.py)
    is typed element by element in Python: ``ingest_reads`` with its seven tuples took
    ≈ 27 µs a call to dispatch against ≈ 9 µs with 57 plain arguments (≈ 7 % of a
    4,000-read batch), and ≈ 6 µs through the entry point. The first call goes through the
    dispatcher (compiling, or loading from the cache); it then keeps the compiled version for
    those argument types (its ``entry_point``, which only unboxes) and calls it directly.

    The caller guarantees the types: every later call passes arguments of exactly the first
    call's numba types (the same dtypes, dimensions, layout, and for arrays writeable and
    aligned: ``engine.as_read_columns`` copies read columns that are not), because the entry
    point does not check them. Without an ``overloads`` entry for the types (another numba)
    it keeps using the dispatcher. ``types`` keeps the first call's numba types
    (``aot_build`` compiles the ahead-of-time module for exactly these)."""

    __slots__ = ("call", "kernel", "types")

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.call: Callable[..., Any] = self._first
        self.types: tuple[Any, ...] | None = None  # the first call's numba argument types

    def _first(self, *args: Any) -> Any:
        out = self.kernel(*args)
        try:
            sig = tuple(self.kernel.typeof_pyval(a) for a in args)
            self.types = sig
            self.call = self.kernel.overloads[sig].entry_point
        except (AttributeError, KeyError):  # pragma: no cover - another numba's internals
            self.call = self.kernel
        return out
