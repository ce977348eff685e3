"""Per-tag state rows behind the hash table: allocation, release and eviction.

Rows are preallocated (M = max_tags; state.TagRows): the hot fields packed in ``row_i32``
(int32[M, 4], columns I_*: state, zone, ...) and ``row_f64`` (float64[M, 4], columns F_*:
last read, ...), the key in ``row_key`` (uint64[M]). Free rows sit on a stack
(``free_rows`` int32[M], height in ``counters[C_FREE_TOP]``).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import C_EVICTIONS, C_FREE_TOP, TAG_FREE, TAG_IN
from .hashtable import table_remove
from .state import F_LAST, I_STATE, I_ZONE


@jit
def release_row(
    row: int,
    slots: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_i32: np.ndarray,
    free_rows: np.ndarray,
    counters: np.ndarray,
) -> None:
    """Forget the tag in ``row``: drop its key from the table and push the row on the free stack."""
    table_remove(slots, row_key[row], shift)
    row_key[row] = np.uint64(0)
    row_i32[row, I_STATE] = TAG_FREE
    free_rows[counters[C_FREE_TOP]] = row
    counters[C_FREE_TOP] += 1


@jit
def evict_stalest(
    n_evict: int,
    slots: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_i32: np.ndarray,
    row_f64: np.ndarray,
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
    order = by_key[np.argsort(row_f64[by_key, F_LAST], kind="mergesort")]
    n = min(n_evict, order.size)
    for j in range(n):
        row = order[j]
        if row_i32[row, I_STATE] == TAG_IN:
            zone_count[row_i32[row, I_ZONE]] -= 1
        release_row(row, slots, shift, row_key, row_i32, free_rows, counters)
        counters[C_EVICTIONS] += 1
