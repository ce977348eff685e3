"""Test-session settings shared by every test module.

The agent processes the end-to-end tests start would each compile the kernels into a fresh
numba cache beside their temporary database (15 s to over a minute each on a busy 2-core
machine). They share one cache for the session instead, as a gateway shares one across its
restarts. Benchmarks that measure a cold start set their own empty NUMBA_CACHE_DIR.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(
        Path(__file__).resolve().parents[1] / ".pytest_cache" / "numba-cache")



def pytest_configure(config: Any) -> None:
    """Build the ahead-of-time kernels (kernels/backends.py) into the session's cache once,
    before any test (under pytest-xdist: in the controller, before the workers start), so
    that every agent a test starts runs as an installed gateway does, without numba. The
    twin tests run both backends explicitly. A failed build stops the session, named."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import pytest

    from kernels.aot_build import BuildError, ensure
    from kernels.backends import KernelsUnavailable

    try:
        kernels, took = ensure()
    except (BuildError, KernelsUnavailable) as e:
        pytest.exit(f"cannot build the ahead-of-time kernels for the tests: {e}", returncode=3)
    if took is not None:
        print(f"built the ahead-of-time kernels in {took:.0f} s: {kernels.origin}",
              file=sys.stderr)


# Long runs that `make soak` / `make fuzz` select with `-m soak` / `-m fuzz`. A plain run
# deselects them (reported as deselected, never as skipped-and-passed); their bounded slices
# are ordinary tests.
LONG_MARKERS = ("soak", "fuzz")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    expr = config.getoption("markexpr") or ""
    wanted = {m for m in LONG_MARKERS if re.search(rf"(?<!not )\b{m}\b", expr)}
    keep, drop = [], []
    for item in items:
        long = {m for m in LONG_MARKERS if item.get_closest_marker(m)}
        (drop if long and not long & wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
