"""Departures decided at tick time: FIFO clearing, absence timeouts, end of exit holds.

One pass over all tag rows (M = max_tags; about 0.1 ms per 100 k rows), in row order:

- a tag in queue z whose first read is before z's FIFO cutoff (see history.push_fifo_witness)
  is cleared (DEP_FIFO, no wait);
- otherwise a tag in zone z unseen for longer than its own limit departs (DEP_TIMEOUT):
  ``now - last > min(zone_timeout_s[z], zone_missed_reads[z] * interval)``, where ``interval``
  is the tag's expected read interval: the EWMA of the intervals between its presence reads
  in this visit plus IVL_DEV_WEIGHT EWMAs of their absolute deviation (ingest.py; reads at a
  queue's entry or exit reader give none; the EWMAs start from ``timeout / missed_reads``). A tag with no interval yet keeps the
  zone timeout: a beacon heard every second leaves a few seconds after it falls silent, a
  queue tag read once at the entry waits out the long queue timeout;
- area departures are dated at the last read and record the dwell last - first; queue
  departures without an exit read are dated ``now``, when the missed exit was found (they feed
  only the exit read-rate estimate, which compares them with exits read in the same window);
- a tag held after a queue exit is forgotten once unseen for more than ``exit_hold_s``;
- a tag still short of its reader's ``min_reads`` (TAG_PENDING) is forgotten once unseen for
  more than the zone timeout.

A queue departure counts as read at the entry (``dep_entry``) only if the visit began at or
after ``obs_start`` (the engine was watching; see engine.ZoneEngine.restore).

Cutoffs are consumed: they are reset to -inf after the pass, so a tag that joins later with an
older timestamp is cleared only by a new exit.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import DEP_FIFO, DEP_TIMEOUT, IVL_DEV_WEIGHT, TAG_EXITED, TAG_IN, TAG_PENDING
from .history import push_departure
from .ingest import entry_flags
from .state import (
    F_FIRST,
    F_IVL,
    F_IVL_DEV,
    F_LAST,
    I_NREADS,
    I_STATE,
    I_ZONE,
    History,
    TagParams,
    TagRows,
    TagTable,
    TopologyArrays,
    ZoneState,
)
from .tag_rows import release_row
from .topology import KIND_AREA


@jit
def sweep_departures(
    now: float,
    obs_start: float,
    shift: np.uint64,
    topo: TopologyArrays,
    params: TagParams,
    table: TagTable,
    rows: TagRows,
    zones: ZoneState,
    hist: History,
) -> None:
    """Apply every departure due at ``now``.

    now: s, the tick's time (the engine's latest ``now``).
    obs_start: s, when the engine last began observing (see ingest.ingest_reads): a queue
        departure counts as read at the entry only if its visit began at or after it.
    shift: uint64, the hash table's shift.
    topo: the topology's arrays (zone_kind, zone_timeout_s, zone_missed_reads read).
    params: exit_hold_s read.
    table: hash slots, free-row stack and counters (released rows written).
    rows: per-tag state (read; released rows written).
    zones: ``count`` written, ``fifo_cutoff`` read and reset to -inf.
    hist: departure ring (written).
    See state.py for every field.
    """
    zone_kind, zone_timeout_s = topo.zone_kind, topo.zone_timeout_s
    zone_missed_reads = topo.zone_missed_reads
    exit_hold_s = params.exit_hold_s
    slots, free_rows, counters = table.slots, table.free_rows, table.counters
    row_f64, row_i32, row_key, row_entry = rows.f64, rows.i32, rows.key, rows.entry
    zone_count, fifo_cutoff = zones.tags, zones.fifo_cutoff
    dep_t, dep_dur, dep_kind = hist.dep_t, hist.dep_dur, hist.dep_kind
    dep_entry, dep_n = hist.dep_entry, hist.dep_n
    for row in range(row_i32.shape[0]):
        state = row_i32[row, I_STATE]
        if state == TAG_IN:
            # Decided with selects, not branches: the zone's kind and whether the tag has an
            # interval yet change from row to row, and a mispredicted branch per row cost
            # more than the whole scan (~1 ms a tick at 50,000 tags).
            z = np.int64(row_i32[row, I_ZONE])
            area = zone_kind[z] == KIND_AREA
            own = zone_missed_reads[z] * (
                row_f64[row, F_IVL] + IVL_DEV_WEIGHT * row_f64[row, F_IVL_DEV]
            )  # NaN without an interval: then the zone's timeout
            limit = own if own < zone_timeout_s[z] else zone_timeout_s[z]
            first, last = row_f64[row, F_FIRST], row_f64[row, F_LAST]
            fifo = (not area) & (first < fifo_cutoff[z])
            if not (fifo | (now - last > limit)):
                continue
            kind = DEP_FIFO if fifo else DEP_TIMEOUT
            if area:
                push_departure(
                    dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, last, last - first, kind, 0
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
                    entry_flags(row_entry[row], first, obs_start, row_i32[row, I_NREADS]),
                )
            zone_count[z] -= 1
            release_row(row, slots, shift, row_key, row_i32, free_rows, counters)
        else:
            if state == TAG_EXITED:
                hold = exit_hold_s
            elif state == TAG_PENDING:
                hold = zone_timeout_s[row_i32[row, I_ZONE]]
            else:
                continue
            if now - row_f64[row, F_LAST] > hold:
                release_row(row, slots, shift, row_key, row_i32, free_rows, counters)
    fifo_cutoff[:] = -np.inf
