"""Test-session settings shared by every test module.

The agent processes the end-to-end tests start would each compile the kernels into a fresh
numba cache beside their temporary database (15 s to over a minute each on a busy 2-core
machine). They share one cache for the session instead, as a gateway shares one across its
restarts. Benchmarks that measure a cold start set their own empty NUMBA_CACHE_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(
        Path(__file__).resolve().parents[1] / ".pytest_cache" / "numba-cache")
