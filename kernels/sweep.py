"""Departures decided at tick time: FIFO clearing, absence timeouts, end of exit holds.

One pass over all tag rows (M = max_tags; about 0.1 ms per 100 k rows), in row order:

- a tag in queue z whose first read is before z's FIFO cutoff (see history.push_fifo_witness)
  is cleared (DEP_FIFO, no wait);
- otherwise a tag in zone z unseen for more than ``zone_timeout_s[z]`` (``now - last > timeout``)
  departs (DEP_TIMEOUT);
- area departures are dated at the last read and record the dwell last - first; queue
  departures without an exit read are dated ``now``, when the missed exit was found (they feed
  only the exit read-rate estimate, which compares them with exits read in the same window);
- a tag held after a queue exit is forgotten once unseen for more than ``exit_hold_s``.

Cutoffs are consumed: they are reset to -inf after the pass, so a tag that joins later with an
older timestamp is cleared only by a new exit.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import DEP_FIFO, DEP_TIMEOUT, TAG_EXITED, TAG_IN
from .history import push_departure
from .tag_rows import release_row
from .topology import KIND_AREA


@jit
def sweep_departures(
    now: float,
    exit_hold_s: float,
    zone_kind: np.ndarray,
    zone_timeout_s: np.ndarray,
    fifo_cutoff: np.ndarray,
    slot_keys: np.ndarray,
    slot_rows: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_zone: np.ndarray,
    row_state: np.ndarray,
    row_first: np.ndarray,
    row_last: np.ndarray,
    free_rows: np.ndarray,
    counters: np.ndarray,
    zone_count: np.ndarray,
    dep_t: np.ndarray,
    dep_dur: np.ndarray,
    dep_kind: np.ndarray,
    dep_entry: np.ndarray,
    dep_n: np.ndarray,
    row_entry: np.ndarray,
) -> None:
    """Apply every departure due at ``now`` (float64 s)."""
    for row in range(row_state.size):
        state = row_state[row]
        if state == TAG_IN:
            z = np.int64(row_zone[row])
            area = zone_kind[z] == KIND_AREA
            if not area and row_first[row] < fifo_cutoff[z]:
                kind = DEP_FIFO
            elif now - row_last[row] > zone_timeout_s[z]:
                kind = DEP_TIMEOUT
            else:
                continue
            if area:
                dur = row_last[row] - row_first[row]
                push_departure(
                    dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, row_last[row], dur, kind, 0
                )
            else:
                push_departure(
                    dep_t,
                    dep_dur,
                    dep_kind,
                    dep_entry,
                    dep_n,
                    z,
                    now,
                    np.nan,
                    kind,
                    row_entry[row],
                )
            zone_count[z] -= 1
            release_row(row, slot_keys, slot_rows, shift, row_key, row_state, free_rows, counters)
        elif state == TAG_EXITED and now - row_last[row] > exit_hold_s:
            release_row(row, slot_keys, slot_rows, shift, row_key, row_state, free_rows, counters)
    fifo_cutoff[:] = -np.inf
