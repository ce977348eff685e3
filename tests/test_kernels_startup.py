"""What loading the kernels costs an agent start: numba's cffi support stays off."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import kernels._jit
import numba

@numba.njit
def plus_one(x):
    return x + 1

assert plus_one(1) == 2  # the typing context is built: numba's registries are loaded
print("pycparser" in sys.modules, "cffi" in sys.modules)
import cffi  # still importable for the rest of the process
print(cffi.FFI is not None)
"""


def test_numba_does_not_build_a_cffi_parser_yet_cffi_stays_importable() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "False", "True"]
