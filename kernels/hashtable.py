"""Open-addressing hash table from uint64 tag keys to tag-row indices.

Layout: S = 2**bits slots in one uint64[S, 2] array, ``slots``: column S_KEY the key (0 =
empty), column S_ROW its row (0 when empty), side by side so a lookup touches
one cache line. Linear probing from a Fibonacci-hashed home slot; deletion by backward shift
(no tombstones), so probe sequences never degrade over a long run. The table is kept at most
half full by the engine (S >= 2 * rows), so probes stay short.

Key 0 is reserved as the empty marker; the agent never produces it.

Each kernel here has an obviously correct counterpart in a Python dict; the tests check the
table against one.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .state import S_KEY, S_ROW, table_bits

__all__ = [
    "home_slot",
    "probe",
    "table_bits",
    "table_find",
    "table_remove",
    "table_remove_at",
    "table_row",
    "table_set",
]

_FIB = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads sequential keys


@jit
def home_slot(key: np.uint64, shift: np.uint64) -> np.int64:
    """Home slot of ``key``: the top ``64 - shift`` bits of key * 2**64/phi."""
    return np.int64((key * _FIB) >> shift)


@jit
def probe(flat: np.ndarray, key: np.uint64, shift: np.uint64) -> tuple[np.uint64, bool]:
    """The probe for ``key``: ``(i, True)`` for the slot holding it, ``(i, False)`` for the
    empty slot that ends its probe. ``flat``: the slots flattened (``slots.reshape(-1)``:
    slot i's key at 2 i + S_KEY, its row at 2 i + S_ROW). Indices are unsigned, so numba
    emits no negative-index wraparound code: a lookup is a few instructions and a load."""
    two = np.uint64(2)
    mask = np.uint64(flat.size // 2 - 1)
    i = np.uint64(home_slot(key, shift))
    while True:
        k = flat[i * two + np.uint64(S_KEY)]
        if k == key:
            return i, True
        if k == 0:
            return i, False
        i = (i + np.uint64(1)) & mask


@jit
def table_find(slots: np.ndarray, key: np.uint64, shift: np.uint64) -> np.int64:
    """Slot index holding ``key``, or ``-1 - i`` where ``i`` is the empty slot that ends its probe.

    Callers insert at ``-1 - result`` when the result is negative (if there is room).
    """
    i, hit = probe(slots.reshape(-1), key, shift)
    return np.int64(i) if hit else -1 - np.int64(i)


@jit
def table_row(slots: np.ndarray, i: int) -> np.int64:
    """The row held in slot ``i`` (of a key found there: an empty slot holds 0)."""
    return np.int64(slots[i, S_ROW])


@jit
def table_set(slots: np.ndarray, i: int, key: np.uint64, row: int) -> None:
    """Store ``key`` and its ``row`` in slot ``i``."""
    slots[i, S_KEY] = key
    slots[i, S_ROW] = np.uint64(row)


@jit
def table_remove_at(slots: np.ndarray, i: int, shift: np.uint64) -> None:
    """Empty slot ``i`` and shift later members of its cluster back so no probe is broken."""
    mask = np.int64(slots.shape[0] - 1)
    hole = np.int64(i)
    j = hole
    while True:
        j = (j + 1) & mask
        k = slots[j, S_KEY]
        if k == 0:
            break
        h = home_slot(k, shift)
        # The entry at j may fill the hole at i only if i lies on its probe path h .. j,
        # i.e. the hole is at least as far from j as the entry's home is.
        if ((j - h) & mask) >= ((j - hole) & mask):
            slots[hole, S_KEY] = k
            slots[hole, S_ROW] = slots[j, S_ROW]
            hole = j
    slots[hole, S_KEY] = np.uint64(0)
    slots[hole, S_ROW] = np.uint64(0)


@jit
def table_remove(slots: np.ndarray, key: np.uint64, shift: np.uint64) -> int:
    """Remove ``key``; return the row it mapped to, or -1 if it was absent."""
    i = table_find(slots, key, shift)
    if i < 0:
        return -1
    row = table_row(slots, i)
    table_remove_at(slots, i, shift)
    return row
