"""Open-addressing hash table from uint64 tag keys to int32 tag-row indices.

Layout: two parallel arrays of S = 2**bits slots, ``slot_keys`` (uint64, 0 = empty) and
``slot_rows`` (int32, -1 = empty). Linear probing from a Fibonacci-hashed home slot; deletion
by backward shift (no tombstones), so probe sequences never degrade over a long run. The table
is kept at most half full by the engine (S >= 2 * rows), so probes stay short.

Key 0 is reserved as the empty marker; the agent never produces it.

Each kernel here has an obviously correct counterpart in a Python dict; the tests check the
table against one.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .state import table_bits

__all__ = ["home_slot", "table_bits", "table_find", "table_remove", "table_remove_at"]

_FIB = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads sequential keys


@jit
def home_slot(key: np.uint64, shift: np.uint64) -> np.int64:
    """Home slot of ``key``: the top ``64 - shift`` bits of key * 2**64/phi."""
    return np.int64((key * _FIB) >> shift)


@jit
def table_find(slot_keys: np.ndarray, key: np.uint64, shift: np.uint64) -> int:
    """Slot index holding ``key``, or ``-1 - i`` where ``i`` is the empty slot that ends its probe.

    Callers insert at ``-1 - result`` when the result is negative (if there is room).
    """
    mask = np.int64(slot_keys.size - 1)
    i = home_slot(key, shift)
    while True:
        k = slot_keys[i]
        if k == key:
            return i
        if k == 0:
            return -1 - i
        i = (i + 1) & mask


@jit
def table_remove_at(slot_keys: np.ndarray, slot_rows: np.ndarray, i: int, shift: np.uint64) -> None:
    """Empty slot ``i`` and shift later members of its cluster back so no probe is broken."""
    mask = np.int64(slot_keys.size - 1)
    hole = np.int64(i)
    j = hole
    while True:
        j = (j + 1) & mask
        k = slot_keys[j]
        if k == 0:
            break
        h = home_slot(k, shift)
        # The entry at j may fill the hole at i only if i lies on its probe path h .. j,
        # i.e. the hole is at least as far from j as the entry's home is.
        if ((j - h) & mask) >= ((j - hole) & mask):
            slot_keys[hole] = k
            slot_rows[hole] = slot_rows[j]
            hole = j
    slot_keys[hole] = np.uint64(0)
    slot_rows[hole] = -1


@jit
def table_remove(
    slot_keys: np.ndarray, slot_rows: np.ndarray, key: np.uint64, shift: np.uint64
) -> int:
    """Remove ``key``; return the row it mapped to, or -1 if it was absent."""
    i = table_find(slot_keys, key, shift)
    if i < 0:
        return -1
    row = int(slot_rows[i])
    table_remove_at(slot_keys, slot_rows, i, shift)
    return row
