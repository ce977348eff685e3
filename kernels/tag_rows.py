"""Per-tag state rows behind the hash table: allocation, release and eviction.

Rows are preallocated (M = max_tags): ``row_key`` uint64, ``row_zone`` int32, ``row_state``
int8 (codes.TAG_*), ``row_first`` / ``row_last`` float64 seconds (first and last read of the
current visit), ``row_entry`` int8 (1 if the visit began at a queue's entry reader). Free rows
sit on a stack (``free_rows`` int32[M], height in ``counters[C_FREE_TOP]``).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import C_EVICTIONS, C_FREE_TOP, TAG_FREE, TAG_IN
from .hashtable import table_remove


@jit
def release_row(
    row: int,
    slot_keys: np.ndarray,
    slot_rows: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_state: np.ndarray,
    free_rows: np.ndarray,
    counters: np.ndarray,
) -> None:
    """Forget the tag in ``row``: drop its key from the table and push the row on the free stack."""
    table_remove(slot_keys, slot_rows, row_key[row], shift)
    row_key[row] = np.uint64(0)
    row_state[row] = TAG_FREE
    free_rows[counters[C_FREE_TOP]] = row
    counters[C_FREE_TOP] += 1


@jit
def evict_stalest(
    n_evict: int,
    slot_keys: np.ndarray,
    slot_rows: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_zone: np.ndarray,
    row_state: np.ndarray,
    row_last: np.ndarray,
    free_rows: np.ndarray,
    counters: np.ndarray,
    zone_count: np.ndarray,
) -> None:
    """Drop the ``n_evict`` tags with the oldest last read (ties: smaller key first).

    Called only when every row is in use. An evicted tag leaves its zone without a departure
    record (nothing is known about when it left); ``counters[C_EVICTIONS]`` counts them.
    Evicting a batch rather than one tag keeps an overload (more live tags than rows) from
    costing a full sort per read.
    """
    by_key = np.argsort(row_key, kind="mergesort")
    order = by_key[np.argsort(row_last[by_key], kind="mergesort")]
    n = min(n_evict, order.size)
    for j in range(n):
        row = order[j]
        if row_state[row] == TAG_IN:
            zone_count[row_zone[row]] -= 1
        release_row(row, slot_keys, slot_rows, shift, row_key, row_state, free_rows, counters)
        counters[C_EVICTIONS] += 1
