"""Zone kernels: per-tag presence state and per-zone queue/area metrics, compiled with numba.

Public API (see README.md in this package for semantics):

- codes: ROLE_*, KIND_*, METHOD_*, QL_*
- Topology: readers and zones as arrays
- ZoneEngine: the compiled engine; ZoneMetrics: what ``tick`` returns; SnapshotMismatch:
  what ``ZoneEngine.restore`` raises for a snapshot it cannot take
- ReferenceEngine: the plain-Python twin used as the test oracle

numba reads ``NUMBA_CACHE_DIR`` when it is first imported: set it before importing this
package if compiled kernels should be cached somewhere other than next to the sources. The
engine calls the kernels compiled ahead of time when ``venue-agent build-kernels`` built them
(in that directory's ``aot`` folder), else numba's JIT: backends.py.
"""

from .engine import SNAPSHOT_FORMAT, EngineParams, SnapshotMismatch, ZoneEngine, ZoneMetrics
from .reference import ReferenceEngine
from .topology import (
    KIND_AREA,
    KIND_QUEUE,
    METHOD_AT_LEAST,
    METHOD_LITTLE,
    METHOD_MEASURED,
    METHOD_NONE,
    QL_CORRECTED,
    QL_NONE,
    QL_UNCORRECTED,
    QL_WARMING,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    Topology,
)

__all__ = [
    "KIND_AREA",
    "KIND_QUEUE",
    "METHOD_AT_LEAST",
    "METHOD_LITTLE",
    "METHOD_MEASURED",
    "METHOD_NONE",
    "QL_CORRECTED",
    "QL_NONE",
    "QL_UNCORRECTED",
    "QL_WARMING",
    "ROLE_ENTRY",
    "ROLE_EXIT",
    "ROLE_PRESENCE",
    "SNAPSHOT_FORMAT",
    "EngineParams",
    "ReferenceEngine",
    "SnapshotMismatch",
    "Topology",
    "ZoneEngine",
    "ZoneMetrics",
]
