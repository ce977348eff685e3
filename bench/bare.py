"""The bare loop: the least work any presence engine must do per read, as a yardstick.

Per read: hash the uint64 tag into a power-of-two open-addressing table with the very hashing
the kernels use (kernels/hashtable.py: Fibonacci hash, linear probing, key 0 = empty), insert
it if new, and store its last-seen time and zone. No validation, no ordering, no visits, no
history: ``kernel_vs_bare`` (bench/run.py) is ZoneEngine.ingest's rate over this loop's, on
the same reads in the same process, so it says how close the kernel runs to the memory
traffic a hash-table update costs on this machine, whatever the machine.

Layout: parallel arrays indexed by slot (``keys`` uint64, ``last`` float64, ``zone`` int32),
sized like ZoneEngine's table (2 slots per row of ``max_tags``), so the bare loop touches the
same amount of memory per read a lean engine would.
"""

from __future__ import annotations

import numpy as np

from kernels._jit import jit
from kernels.hashtable import home_slot, table_bits


@jit
def bare_update(
    ts: np.ndarray,
    tag: np.ndarray,
    reader: np.ndarray,
    reader_zone: np.ndarray,
    keys: np.ndarray,
    last: np.ndarray,
    zone: np.ndarray,
    shift: np.uint64,
) -> int:
    """Apply every read: find or insert its tag, set its last-seen time and zone.

    Returns the number of tags inserted (so the work cannot be optimised away)."""
    mask = np.int64(keys.size - 1)
    inserted = 0
    for i in range(ts.size):
        key = tag[i]
        s = home_slot(key, shift)
        while True:
            k = keys[s]
            if k == key:
                break
            if k == 0:
                keys[s] = key
                inserted += 1
                break
            s = (s + 1) & mask
        last[s] = ts[i]
        zone[s] = reader_zone[reader[i]]
    return inserted


class BareLoop:
    """The bare loop with its table, fed like ZoneEngine.ingest(ts, tag, reader)."""

    def __init__(self, reader_zone: np.ndarray, max_tags: int) -> None:
        bits = table_bits(max_tags)
        self._shift = np.uint64(64 - bits)
        self._keys = np.zeros(1 << bits, dtype=np.uint64)
        self._last = np.zeros(1 << bits, dtype=np.float64)
        self._zone = np.full(1 << bits, -1, dtype=np.int32)
        self._reader_zone = np.ascontiguousarray(reader_zone, dtype=np.int32)
        self.tags = 0

    def ingest(self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray) -> None:
        self.tags += bare_update(
            ts, tag, reader, self._reader_zone, self._keys, self._last, self._zone, self._shift
        )
