"""The per-read state machine: RFID reads -> zone membership, visits, arrivals, exits.

Order: the finite-timestamp reads of a batch are applied in timestamp order (a stable sort, so
reads with equal timestamps keep their batch order); reads with a NaN timestamp, tag 0 or a
reader index outside the topology are skipped and counted as bad. A read older than its tag's
last read (late delivery, or a clock stepped back) is applied as if it arrived at that last
read: a tag's time never runs backwards, so no duration is ever negative.

A read with a finite RSSI at a PRESENCE reader is a BLE advert: it updates the tag's smoothed
RSSI for that reader and then counts as a presence read in the zone ble_presence.ble_zone
picks (the tag's current zone unless another one wins by the hysteresis margin). Every other
read (RFID, or RSSI at an ENTRY/EXIT reader) counts in its reader's zone.

Per read of tag k at reader r (zone z, role):

- k is in another zone z' (state IN): it leaves z' (DEP_MOVED; an area visit is dated at its
  last read there, a queue visit at this read, when it was found to have gone).
- area zone: joins z at this read (arrival) or, if already in z, refreshes its last read.
- queue zone, ENTRY or PRESENCE reader: joins the queue (arrival; the visit has an entry time
  only for an ENTRY read) or refreshes its last read. After an exit, a PRESENCE read is
  absorbed while an ENTRY read starts a new visit (a second ride).
- queue zone, EXIT reader: a tag in the queue completes its visit (DEP_EXIT; measured wait =
  exit - entry if the visit began at the entry reader; its entry time becomes a FIFO witness);
  a tag not in the queue counts as an exit without a wait. The tag is then held as EXITED so
  repeated exit reads are absorbed (until ``exit_hold_s`` unseen, see sweep.py).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .ble_presence import ble_observe, ble_zone
from .codes import (
    C_BAD_READS,
    C_FILTERED,
    C_FREE_TOP,
    C_READS,
    DEP_EXIT,
    DEP_MOVED,
    DEP_ONE_IN,
    DEP_ONE_OUT,
    TAG_EXITED,
    TAG_FREE,
    TAG_IN,
    TAG_PENDING,
)
from .hashtable import table_find
from .history import push_arrival, push_departure, push_fifo_witness
from .tag_rows import evict_stalest
from .topology import KIND_AREA, ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE


@jit
def read_order(ts: np.ndarray) -> np.ndarray:
    """Indices of the finite entries of ``ts`` in stable ascending order (int64).

    Already-sorted batches (the common case) skip the sort.
    """
    n = ts.size
    idx = np.empty(n, dtype=np.int64)
    m = 0
    ordered = True
    prev = -np.inf
    for i in range(n):
        t = ts[i]
        if np.isnan(t):
            continue
        if t < prev:
            ordered = False
        prev = t
        idx[m] = i
        m += 1
    idx = idx[:m]
    if ordered:
        return idx
    return idx[np.argsort(ts[idx], kind="mergesort")]


@jit
def ingest_reads(
    ts: np.ndarray,
    tag: np.ndarray,
    reader: np.ndarray,
    rssi: np.ndarray,
    reader_zone: np.ndarray,
    reader_role: np.ndarray,
    reader_rssi_floor: np.ndarray,
    reader_min_reads: np.ndarray,
    zone_kind: np.ndarray,
    zone_timeout_s: np.ndarray,
    zone_missed_reads: np.ndarray,
    fifo_slack_s: float,
    evict_batch: int,
    interval_alpha: float,
    obs_start: float,
    slot_keys: np.ndarray,
    slot_rows: np.ndarray,
    shift: np.uint64,
    row_key: np.ndarray,
    row_zone: np.ndarray,
    row_state: np.ndarray,
    row_first: np.ndarray,
    row_last: np.ndarray,
    row_entry: np.ndarray,
    row_ivl: np.ndarray,
    row_ivl_dev: np.ndarray,
    row_pend_key: np.ndarray,
    row_pend_n: np.ndarray,
    row_pend_t: np.ndarray,
    row_nreads: np.ndarray,
    row_dep: np.ndarray,
    row_exits0: np.ndarray,
    zone_exits: np.ndarray,
    walk_ahead: int,
    cand_reader: np.ndarray,
    cand_s: np.ndarray,
    cand_t: np.ndarray,
    cand_n: np.ndarray,
    ble: np.ndarray,
    ble_min_reads: int,
    free_rows: np.ndarray,
    counters: np.ndarray,
    zone_count: np.ndarray,
    fifo_entry: np.ndarray,
    fifo_n: np.ndarray,
    fifo_cutoff: np.ndarray,
    rr_from: np.ndarray,
    rr_seen: np.ndarray,
    min_wait: np.ndarray,
    dep_t: np.ndarray,
    dep_dur: np.ndarray,
    dep_kind: np.ndarray,
    dep_entry: np.ndarray,
    dep_n: np.ndarray,
    arr_t: np.ndarray,
    arr_n: np.ndarray,
) -> None:
    """Apply one batch of reads to the state.

    ts float64[N] s, tag uint64[N], reader int32[N], rssi float64[N] dBm (NaN = none).
    ``ble`` float64[6] = (tau_s, alpha_min, stale_s, decay_db_per_s, holdoff_s, margin_db).
    ``obs_start``: when the engine last began observing (-inf, or the time it was restored):
    a departure counts as read at the entry for the read-rate estimates only if its visit
    began at or after it.
    """
    tau_s, alpha_min, stale_s = ble[0], ble[1], ble[2]
    decay, holdoff, margin = ble[3], ble[4], ble[5]
    n_readers = reader_zone.size
    witnesses = fifo_entry.shape[1]
    counters[C_BAD_READS] += ts.size
    order = read_order(ts)
    counters[C_BAD_READS] -= order.size
    for i in order:
        key = tag[i]
        r = reader[i]
        if key == 0 or r < 0 or r >= n_readers:
            counters[C_BAD_READS] += 1
            continue
        x = rssi[i]
        if x < reader_rssi_floor[r]:  # False for NaN: reads without RSSI always count
            counters[C_FILTERED] += 1
            continue
        t = ts[i]
        z = np.int64(reader_zone[r])
        role = reader_role[r]

        slot = table_find(slot_keys, key, shift)
        if slot >= 0:
            row = np.int64(slot_rows[slot])
            if t < row_last[row]:
                t = row_last[row]
            state = row_state[row]
        else:
            if counters[C_FREE_TOP] == 0:
                evict_stalest(
                    evict_batch,
                    slot_keys,
                    slot_rows,
                    shift,
                    row_key,
                    row_zone,
                    row_state,
                    row_last,
                    free_rows,
                    counters,
                    zone_count,
                )
                slot = table_find(slot_keys, key, shift)  # eviction may have shifted slots
            counters[C_FREE_TOP] -= 1
            row = np.int64(free_rows[counters[C_FREE_TOP]])
            slot_keys[-1 - slot] = key
            slot_rows[-1 - slot] = row
            row_key[row] = key
            row_state[row] = TAG_FREE
            row_pend_key[row] = -1
            cand_reader[row, :] = -1
            state = TAG_FREE
        counters[C_READS] += 1
        pending_row = state == TAG_PENDING
        if pending_row:
            state = TAG_FREE  # in no zone yet

        ble_read = role == ROLE_PRESENCE and not np.isnan(x)
        if ble_read:
            here = np.int64(row_zone[row]) if state == TAG_IN else np.int64(-1)
            ble_observe(
                row,
                r,
                t,
                x,
                here,
                reader_zone,
                cand_reader,
                cand_s,
                cand_t,
                cand_n,
                tau_s,
                alpha_min,
                stale_s,
                decay,
                holdoff,
            )
            z = np.int64(
                ble_zone(
                    row,
                    t,
                    here,
                    reader_zone,
                    cand_reader,
                    cand_s,
                    cand_t,
                    cand_n,
                    decay,
                    holdoff,
                    margin,
                    ble_min_reads,
                )
            )

        queue_exit = zone_kind[z] != KIND_AREA and role == ROLE_EXIT
        same = state != TAG_FREE and row_zone[row] == z
        if queue_exit:
            refresh = same and state == TAG_EXITED
        else:
            refresh = same and (
                state == TAG_IN or (state == TAG_EXITED and role == ROLE_PRESENCE)
            )
        if refresh:
            if (
                state == TAG_IN
                and (zone_kind[z] == KIND_AREA or role == ROLE_PRESENCE)
                and t > row_last[row]
            ):
                # the tag's own read interval (see sweep.py): EWMAs of the interval and its
                # absolute deviation, starting from the interval of the zone's timeout
                err = t - row_last[row] - row_ivl[row]
                if np.isnan(row_ivl[row]):
                    row_ivl[row] = zone_timeout_s[z] / zone_missed_reads[z]
                    row_ivl_dev[row] = 0.0
                    err = t - row_last[row] - row_ivl[row]
                row_ivl[row] += interval_alpha * err
                row_ivl_dev[row] += interval_alpha * (abs(err) - row_ivl_dev[row])
            if zone_kind[z] != KIND_AREA:
                # reads of the band at the reader that made the state (strays are read once)
                if state == TAG_IN and role == ROLE_ENTRY:
                    row_nreads[row] += 1
                elif queue_exit:
                    row_nreads[row] += 1
                    seq = row_dep[row]
                    if row_nreads[row] == 2 and dep_n[z] - seq <= dep_t.shape[1] and seq >= 0:
                        dep_entry[z, seq % dep_t.shape[1]] &= ~DEP_ONE_OUT
            row_last[row] = t
            row_pend_key[row] = -1
            continue

        # A transition (join, move, exit): with min_reads > 1 it waits for that many reads in
        # a row at this reader (for a BLE advert: in the zone it chose), dated at the first.
        need = reader_min_reads[r]
        t0 = t
        if need > 1:
            pk = np.int64(n_readers + z) if ble_read else np.int64(r)
            if row_pend_key[row] == pk and t - row_pend_t[row] <= zone_timeout_s[z]:
                row_pend_n[row] += 1
            else:
                row_pend_key[row] = pk
                row_pend_n[row] = 1
                row_pend_t[row] = t
            if row_pend_n[row] < need:
                if state == TAG_FREE:
                    row_state[row] = TAG_PENDING
                    row_zone[row] = z
                    row_last[row] = t
                continue
            t0 = row_pend_t[row]
        row_pend_key[row] = -1
        if pending_row:
            row_state[row] = TAG_FREE

        if state != TAG_FREE and row_zone[row] != z:
            if state == TAG_IN:
                zp = np.int64(row_zone[row])
                if zone_kind[zp] == KIND_AREA:
                    push_departure(
                        dep_t,
                        dep_dur,
                        dep_kind,
                        dep_entry,
                        dep_n,
                        zp,
                        row_last[row],
                        row_last[row] - row_first[row],
                        DEP_MOVED,
                        0,
                    )
                else:
                    push_departure(
                        dep_t,
                        dep_dur,
                        dep_kind,
                        dep_entry,
                        dep_n,
                        zp,
                        t0,
                        np.nan,
                        DEP_MOVED,
                        entry_flags(row_entry[row], row_first[row], obs_start, row_nreads[row]),
                    )
                zone_count[zp] -= 1
            state = TAG_FREE

        if not queue_exit:  # a new visit
            row_zone[row] = z
            row_state[row] = TAG_IN
            row_first[row] = t0
            row_last[row] = t
            row_ivl[row] = np.nan
            row_entry[row] = 1 if (role == ROLE_ENTRY and zone_kind[z] != KIND_AREA) else 0
            row_nreads[row] = max(need, 1)
            row_exits0[row] = zone_exits[z]
            zone_count[z] += 1
            push_arrival(arr_t, arr_n, z, t0)
        elif state == TAG_IN:  # queue exit of a tag in the queue: a completed visit
            dur = np.nan
            entry = observed_entry(row_entry[row], row_first[row], obs_start)
            flags = entry_flags(row_entry[row], row_first[row], obs_start, row_nreads[row])
            if row_entry[row] == 1:
                dur = t0 - row_first[row]
                if zone_exits[z] - row_exits0[row] <= walk_ahead:
                    # hardly anyone ahead: the wait of an empty line (the walk)
                    min_wait[z] = min(min_wait[z], dur)
                push_fifo_witness(fifo_entry, fifo_n, fifo_cutoff, z, row_first[row], fifo_slack_s)
                if entry == 1:
                    # exits count for the entry read rate once the guests leaving entered
                    # while the engine watched: from the K-th measured exit that did (FIFO)
                    rr_seen[z] += 1
                    if rr_seen[z] == witnesses:
                        rr_from[z] = t0
            one = DEP_ONE_OUT if need <= 1 else 0
            row_dep[row] = dep_n[z]
            row_nreads[row] = max(need, 1)
            push_departure(
                dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, t0, dur, DEP_EXIT, flags | one
            )
            zone_count[z] -= 1
            zone_exits[z] += 1
            row_state[row] = TAG_EXITED
            row_last[row] = t
        else:  # seen only at the exit: counts toward throughput, no wait
            one = DEP_ONE_OUT if need <= 1 else 0
            row_dep[row] = dep_n[z]
            row_nreads[row] = max(need, 1)
            push_departure(dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, t0, np.nan, DEP_EXIT, one)
            zone_exits[z] += 1
            row_zone[row] = z
            row_state[row] = TAG_EXITED
            row_first[row] = t0
            row_last[row] = t
            row_entry[row] = 0


@jit
def observed_entry(entry: int, first: float, obs_start: float) -> int:
    """1 if a visit was read at the entry while the engine watched (for the read rates)."""
    return 1 if entry == 1 and first >= obs_start else 0


@jit
def entry_flags(entry: int, first: float, obs_start: float, nreads: int) -> int:
    """A queue departure's ``dep_entry`` bits: DEP_OBSERVED (observed_entry), plus DEP_ONE_IN
    when that entry was a single read (a stray passer-by is read once; history.py)."""
    obs = observed_entry(entry, first, obs_start)
    return obs | (DEP_ONE_IN if obs == 1 and nreads == 1 else 0)
