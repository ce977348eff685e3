"""Which compiled code the engine calls: an ahead-of-time module, or numba's JIT.

Both run the very same kernels (``ingest.ingest_reads``, ``sweep.sweep_departures``,
``queue_order.queue_entries``, ``window_stats.zone_metrics`` and everything they call),
compiled by numba; they differ in *when* and in what the process must carry:

- **aot**: ``venue-agent build-kernels`` (``aot_build.py``) compiled the four entry kernels
  once, with numba's pycc, into one Python extension module in the ``aot`` folder of the
  numba cache directory. Loading it is loading a 1 MB shared library: neither numba nor LLVM
  is imported into the agent (they cost about 100 MB and 1 s of every start, even with
  numba's on-disk cache warm).
- **jit**: numba compiles the kernels on their first call, or loads them from its on-disk
  cache (``NUMBA_CACHE_DIR``). Always available; the fallback.

``VENUE_AGENT_KERNELS`` chooses: ``auto`` (default: aot when a module for this code and this
machine is built, else jit), ``jit``, or ``aot`` (fail, naming why, when no module loads).

A module's tag (:func:`source_tag`) hashes every kernel source file, the versions of numba,
llvmlite and numpy, the Python ABI and this CPU (the module is compiled for the CPU it is
built on): a module built from other code or for another machine is never loaded; the engine
then uses jit, and :attr:`Kernels.reason` says why.

An ahead-of-time entry point does not type its arguments as numba's dispatcher does: the
first call of each one checks every argument against the types recorded when it was built
(``<module>.json``) and raises TypeError naming the argument that differs. Later calls pass
the same types, as with :class:`~kernels._jit.FixedCall`.

This module imports neither numba nor any jitted module until the jit backend is chosen.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENTRY_POINTS: dict[str, str] = {
    "ingest_reads": "ingest",
    "sweep_departures": "sweep",
    "queue_entries": "queue_order",
    "zone_metrics": "window_stats",
}
"""The kernels the engine calls, each with the module (in this package) that defines it."""

BACKENDS = ("aot", "jit")
"""What a process runs (``Kernels.backend``; the ``kernels`` field of the health message)."""
BACKEND_ENV = "VENUE_AGENT_KERNELS"
BACKEND_CHOICES = ("auto", *BACKENDS)
MODULE_PREFIX = "venue_agent_kernels_"
# Sources that are not compiled into the kernels: their edits do not make a module stale.
_NOT_COMPILED = frozenset({"reference.py", "numpy_ingest.py", "backends.py", "aot_build.py"})


class KernelsUnavailable(RuntimeError):
    """``VENUE_AGENT_KERNELS=aot`` and no ahead-of-time module loads; the message says why."""


class BadBackendChoice(KernelsUnavailable, ValueError):
    """``VENUE_AGENT_KERNELS`` holds none of BACKEND_CHOICES."""


AOT_DESCRIPTION = "ahead-of-time module"
"""How :meth:`Kernels.describe` (the agent's log) starts for the aot backend."""


def numba_cache_dir() -> Path:
    """numba's cache directory: NUMBA_CACHE_DIR (the agent sets it from
    ``storage.numba_cache_dir`` before the kernels are loaded), else numba's default for
    this package, its ``__pycache__``."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    return Path(base) if base else Path(__file__).resolve().parent / "__pycache__"


def aot_dir(cache: Path | None = None) -> Path:
    """Where ahead-of-time modules live: ``aot`` in numba's cache directory (``cache``, by
    default :func:`numba_cache_dir`)."""
    return (numba_cache_dir() if cache is None else cache) / "aot"


def dist_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "-"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cpu_identity() -> str:
    """This CPU's model and feature flags (from /proc/cpuinfo; the machine name elsewhere):
    code compiled for one CPU may use instructions another lacks."""
    keep = ("model name", "flags", "features", "cpu implementer", "cpu part", "isa")
    lines: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if lines:
                        break  # the first processor block describes them all
                    continue
                if line.split(":", 1)[0].strip().lower() in keep:
                    lines.append(" ".join(line.split()))
    except OSError:
        pass
    return "\n".join([platform.machine(), *lines])


def source_tag() -> str:
    """What a module must have been built from to be loaded: 16 hex digits (see module doc)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("*.py")):
        if path.name not in _NOT_COMPILED:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (dist_version("numba"), dist_version("llvmlite"), dist_version("numpy"),
                 sys.implementation.cache_tag, str(sysconfig.get_config_var("EXT_SUFFIX")),
                 cpu_identity()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def module_paths(tag: str, folder: Path | None = None) -> tuple[Path, Path]:
    """The extension module and its description (JSON) for ``tag`` in ``folder``."""
    folder = aot_dir() if folder is None else folder
    name = MODULE_PREFIX + tag
    return (folder / (name + str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")),
            folder / (name + ".json"))


# ---------------------------------------------------------------------------- argument types
# One argument's type as recorded at build time (aot_build.arg_spec), JSON:
#   {"array": "<f8", "ndim": 1, "writes": true}   a C-contiguous, aligned numpy array
#   {"scalar": "<f8"}                             a number of that kind
#   {"tuple": "ZoneState", "fields": [...]}       a state.py namedtuple, field by field
def check_arg(spec: dict[str, Any], value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` when ``value`` is not of the recorded type."""
    if "array" in spec:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where}: an array expected, not {type(value).__name__}")
        want = np.dtype(spec["array"])
        if value.dtype != want or value.ndim != spec["ndim"]:
            raise TypeError(f"{where}: {want}[{spec['ndim']}-d] expected, not "
                            f"{value.dtype}[{value.ndim}-d]")
        if not (value.flags.c_contiguous and value.flags.aligned):
            raise TypeError(f"{where}: a C-contiguous, aligned array expected")
        if spec.get("writes") and not value.flags.writeable:
            raise TypeError(f"{where}: the kernel writes it, but it is read-only")
    elif "tuple" in spec:
        fields = spec["fields"]
        if type(value).__name__ != spec["tuple"] or len(value) != len(fields):
            raise TypeError(f"{where}: a {spec['tuple']} of {len(fields)} fields expected, "
                            f"not {type(value).__name__}")
        names: Sequence[str] = getattr(value, "_fields", [str(i) for i in range(len(fields))])
        for name, field_spec, item in zip(names, fields, value, strict=True):
            check_arg(field_spec, item, f"{where}.{name}")
    else:
        kind = np.dtype(spec["scalar"]).kind
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_))
        if not ok or (kind in "iu" and not isinstance(value, (int, np.integer))):
            raise TypeError(f"{where}: a number of dtype {spec['scalar']} expected, not "
                            f"{type(value).__name__}")


class AotCall:
    """One entry point of an ahead-of-time module: the first call checks the arguments'
    types against the recorded ones, later calls go straight to the compiled code.

    ``call`` is the callable to use (as :class:`~kernels._jit.FixedCall`'s)."""

    __slots__ = ("call", "function", "name", "spec")

    def __init__(self, name: str, function: Callable[..., Any],
                 spec: list[dict[str, Any]]) -> None:
        self.name, self.function, self.spec = name, function, spec
        self.call: Callable[..., Any] = self._first

    def _first(self, *args: Any) -> Any:
        if len(args) != len(self.spec):
            raise TypeError(f"{self.name}: {len(self.spec)} arguments expected, not {len(args)}")
        for i, (spec, value) in enumerate(zip(self.spec, args, strict=True)):
            check_arg(spec, value, f"{self.name} argument {i}")
        self.call = self.function
        return self.function(*args)


# ------------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class Kernels:
    """The compiled kernels one process uses (see module doc).

    ``backend`` is "aot" or "jit"; ``origin`` the module file (aot) or numba's cache
    directory (jit); ``reason`` why jit was chosen (None for aot, or when asked for jit)."""

    backend: str
    origin: str
    reason: str | None
    module: Any = None
    specs: Any = None

    def call(self, name: str) -> Any:
        """A fresh caller of entry point ``name``: its ``call`` attribute is the function
        to call (one per engine: it remembers the engine's argument types)."""
        if self.backend == "aot":
            return AotCall(name, getattr(self.module, name), self.specs[name])
        from ._jit import FixedCall  # imports numba: only the jit backend gets here

        module = importlib.import_module(f"{__package__}.{ENTRY_POINTS[name]}")
        return FixedCall(getattr(module, name))

    def describe(self) -> str:
        """One line for the agent's log and for ``doctor``."""
        if self.backend == "aot":
            return f"{AOT_DESCRIPTION} {self.origin}"
        why = f" ({self.reason})" if self.reason else ""
        return f"numba JIT, cached in {self.origin}{why}"


def jit_kernels(reason: str | None = None) -> Kernels:
    """numba's JIT; ``reason``: why it was chosen, when not by request."""
    return Kernels("jit", str(numba_cache_dir()), reason)


def load_aot(folder: Path | None = None) -> Kernels:
    """The ahead-of-time module for this code and machine in ``folder`` (default
    :func:`aot_dir`); KernelsUnavailable saying why when there is none or it does not load."""
    so, meta_path = module_paths(source_tag(), folder)
    if not meta_path.exists() or not so.exists():
        raise KernelsUnavailable(f"no ahead-of-time module for this code in {so.parent} "
                                 f"(build it: venue-agent build-kernels)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        specs = meta["entry_points"]
        missing = sorted(set(ENTRY_POINTS) - set(specs))
        if missing:
            raise KeyError(", ".join(missing))
        # A damaged file (an SD card's bit rot, a copy cut short) must not reach dlopen: a
        # truncated library faults the process (SIGBUS) instead of raising.
        if hashlib.sha256(so.read_bytes()).hexdigest() != meta["sha256"]:
            raise ValueError("its contents differ from what was built (damaged?)")
        spec = importlib.util.spec_from_file_location(so.name.split(".")[0], so)
        if spec is None or spec.loader is None:
            raise ImportError(f"not an extension module: {so}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in ENTRY_POINTS:
            getattr(module, name)
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError) as e:
        raise KernelsUnavailable(f"the ahead-of-time module {so} does not load: "
                                 f"{type(e).__name__}: {e}") from None
    return Kernels("aot", str(so), None, module, specs)


_chosen: dict[tuple[str, str], Kernels] = {}


def choose(mode: str | None = None) -> Kernels:
    """The kernels this process uses, chosen once per mode and folder (see module doc);
    ``mode`` defaults to ``$VENUE_AGENT_KERNELS`` or "auto"."""
    mode = (mode or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if mode not in BACKEND_CHOICES:
        raise BadBackendChoice(f"{BACKEND_ENV} must be one of {', '.join(BACKEND_CHOICES)}, "
                         f"not {mode!r}")
    key = (mode, str(aot_dir()))
    if key not in _chosen:
        if mode == "jit":
            _chosen[key] = jit_kernels()
        elif mode == "aot":
            _chosen[key] = load_aot()
        else:
            try:
                _chosen[key] = load_aot()
            except KernelsUnavailable as e:
                _chosen[key] = jit_kernels(str(e))
    return _chosen[key]
