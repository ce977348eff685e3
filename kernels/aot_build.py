"""Build the ahead-of-time kernels module (``venue-agent build-kernels``; see backends.py).

The four entry kernels are compiled with numba's pycc for exactly the argument types the
engine calls them with. Those types are not written out a second time here: a small engine
runs one batch and one tick on the jit backend, and each entry point's first call records its
numba types (``_jit.FixedCall.types``), which become the exported signatures and, as JSON,
the argument checks of backends.AotCall.

Needs numba, a C compiler and the Python headers (pycc compiles a small C wrapper and links
numba's runtime into the module, so that the module needs neither numba nor LLVM). The module
is compiled for this CPU (``target_cpu = "host"``, as numba's JIT does); its tag includes the
CPU, so a copied SD card on another model falls back to jit rather than faulting.

numba marks pycc "pending deprecation" (since 0.57) without a replacement yet; when a numba
without it is installed, the build fails with that message and the agent keeps using jit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import backends
from .engine import ZoneEngine
from .topology import KIND_AREA, KIND_QUEUE, ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE, Topology


class BuildError(RuntimeError):
    """The module could not be built; the message says what is missing."""


NEEDS = ("it needs a C compiler and the Python headers (Debian: build-essential python3-dev); "
         "until it is built the agent runs on numba's JIT")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def arg_spec(numba_type: Any) -> dict[str, Any]:
    """One argument's numba type as the JSON that backends.check_arg reads."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if isinstance(numba_type, types.Array):
        if numba_type.layout != "C" or not numba_type.aligned:
            raise BuildError(f"kernel argument {numba_type} is not a C-contiguous aligned array")
        return {"array": as_dtype(numba_type.dtype).str, "ndim": numba_type.ndim,
                "writes": bool(numba_type.mutable)}
    if isinstance(numba_type, (types.NamedTuple, types.NamedUniTuple)):
        return {"tuple": numba_type.instance_class.__name__,
                "fields": [arg_spec(t) for t in numba_type.types]}
    if isinstance(numba_type, (types.Integer, types.Float)):
        return {"scalar": as_dtype(numba_type).str}
    raise BuildError(f"kernel argument of type {numba_type} cannot be checked")


TARGET_CPU = "host"  # the CPU the module is built on, as numba's JIT compiles for


def entry_signatures() -> dict[str, tuple[Any, Any]]:
    """Each entry kernel's compiled signature and its jitted function (numba), from a small
    engine's first calls: every reader role and zone kind, RFID and BLE reads."""
    topo = Topology(
        reader_zone=np.array([0, 0, 1], np.int32),
        reader_role=np.array([ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE], np.int8),
        zone_kind=np.array([KIND_QUEUE, KIND_AREA], np.int8),
        zone_timeout_s=np.array([900.0, 30.0]),
    )
    engine = ZoneEngine(topo, kernels=backends.jit_kernels(), max_tags=64)
    engine.ingest(np.array([1.0, 2.0, 3.0]), np.array([7, 7, 9], np.uint64),
                  np.array([0, 1, 2], np.int32), np.array([np.nan, np.nan, -60.0], np.float32))
    engine.tick(4.0)
    sigs = {}
    for name in backends.ENTRY_POINTS:
        caller = getattr(engine, "_" + name)
        if caller.types is None:
            raise BuildError(f"{name}: numba's dispatcher keeps no overload for its first "
                             f"call's types (another numba version?)")
        sigs[name] = (caller.kernel.overloads[caller.types].signature, caller.kernel)
    return sigs


def build(folder: Path | None = None) -> tuple[Path, float]:
    """Compile the module for this code and machine into ``folder`` (default
    backends.aot_dir()); returns its path and the seconds it took. Older modules there are
    removed. The files appear whole or not at all (written aside, then renamed)."""
    t0 = time.perf_counter()
    folder = backends.aot_dir() if folder is None else folder
    tag = backends.source_tag()
    so, meta_path = backends.module_paths(tag, folder)
    try:
        from numba.core.errors import NumbaPendingDeprecationWarning

        with warnings.catch_warnings():
            # pycc's "pending deprecation" notice (module doc): said once, in the docs.
            warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
            from numba.pycc import CC
    except ImportError as e:
        raise BuildError(f"this numba has no ahead-of-time compiler (numba.pycc): {e}; "
                         f"the agent uses numba's JIT") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    except OSError as e:
        raise BuildError(f"cannot write to {folder}: {e.strerror or e} (run it as the agent's "
                         f"user, or point NUMBA_CACHE_DIR / --dir at a writable folder)"
                         ) from None
    try:
        sigs = entry_signatures()  # after the folder is known to be writable: fail fast
        try:
            cc = CC(so.name.split(".")[0])  # looks for the C compiler
        except Exception as e:  # noqa: BLE001 - pycc's toolchain check raises RuntimeError
            raise BuildError(f"no C toolchain for numba's pycc ({_first_line(e)}); "
                             f"{NEEDS}") from None
        cc.output_dir = str(work)
        cc.target_cpu = TARGET_CPU
        for name, (sig, kernel) in sigs.items():
            cc.export(name, sig)(kernel.py_func)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # setuptools/distutils chatter
                cc.compile()
        except Exception as e:  # noqa: BLE001 - compiler, linker, headers: name it
            raise BuildError(f"compiling the ahead-of-time module failed ({type(e).__name__}: "
                             f"{_first_line(e)}); {NEEDS}") from None
        built = [p for p in work.iterdir() if p.name.startswith(cc.name) and p.is_file()]
        if len(built) != 1:
            raise BuildError(f"the compiler left {len(built)} modules, not one, in {work}")
        meta = {
            "tag": tag,
            "module": so.name,
            "sha256": hashlib.sha256(built[0].read_bytes()).hexdigest(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "numba": backends.dist_version("numba"),
            "numpy": backends.dist_version("numpy"),
            "target_cpu": TARGET_CPU,
            "entry_points": {name: [arg_spec(t) for t in sig.args]
                             for name, (sig, _kernel) in sigs.items()},
        }
        os.replace(built[0], so)
        tmp_meta = work / meta_path.name
        tmp_meta.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp_meta, meta_path)  # last: a description means the module is whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in folder.glob(backends.MODULE_PREFIX + "*"):
        if old.is_file() and old not in (so, meta_path):
            old.unlink(missing_ok=True)
    return so, time.perf_counter() - t0


def ensure(folder: Path | None = None) -> tuple[backends.Kernels, float | None]:
    """The module for this code and machine in ``folder`` (default backends.aot_dir()),
    loaded, and built first when it is missing or does not load; with the seconds the build
    took (None: it was there). BuildError as :func:`build`; KernelsUnavailable if what was
    built does not load."""
    try:
        return backends.load_aot(folder), None
    except backends.KernelsUnavailable:
        _path, took = build(folder)
        return backends.load_aot(folder), took
