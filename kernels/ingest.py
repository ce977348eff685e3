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

from ._jit import jit, prefetch
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
from .hashtable import home_slot, table_find, table_row, table_set
from .history import push_arrival, push_departure, push_fifo_witness
from .state import (
    F_FIRST,
    F_IVL,
    F_IVL_DEV,
    F_LAST,
    I_NREADS,
    I_PEND_KEY,
    I_STATE,
    I_ZONE,
    BleCandidates,
    History,
    TagParams,
    TagRows,
    TagTable,
    TopologyArrays,
    ZoneState,
)
from .tag_rows import evict_stalest
from .topology import KIND_AREA, ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE

# How many reads ahead ingest_reads prefetches a hash slot, and a tag row.
PF_SLOT = 48
PF_ROW = 24

# What a read does to a tag already in its reader's zone (ingest_reads' fast path).
FAST_INTERVAL = 1
FAST_COUNT = 2


@jit
def read_order(ts: np.ndarray) -> tuple[np.ndarray, bool]:
    """The order to apply a batch in: ``(idx, identity)``.

    ``identity`` True: every timestamp is finite and they ascend (the common case), apply
    ``ts`` in its own order (``idx`` is then empty, not built: walking the batch through an
    index array costs the kernel a dependent load per read). Otherwise ``idx`` holds the
    indices of the finite entries of ``ts`` in stable ascending order (int64).
    """
    n = ts.size
    prev = -np.inf
    identity = True
    for i in range(n):
        t = ts[i]
        if not t >= prev:  # NaN, or out of order
            identity = False
            break
        prev = t
    if identity:
        return np.empty(0, dtype=np.int64), True
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
        return idx, False
    return idx[np.argsort(ts[idx], kind="mergesort")], False


@jit
def nth(order: np.ndarray, identity: bool, j: int) -> int:
    """Index of the ``j``-th read to apply (see read_order)."""
    return j if identity else order[j]


@jit
def ingest_reads(
    ts: np.ndarray,
    tag: np.ndarray,
    reader: np.ndarray,
    rssi: np.ndarray,
    obs_start: float,
    shift: np.uint64,
    topo: TopologyArrays,
    params: TagParams,
    table: TagTable,
    rows: TagRows,
    cand: BleCandidates,
    zones: ZoneState,
    hist: History,
) -> tuple[float, float]:
    """Apply one batch of reads to the state; return the earliest and latest finite timestamp
    in it ((inf, -inf) if none).

    ts: float64[N] s, the reads' timestamps (NaN: a bad read).
    tag: uint64[N], the tags' keys (0: a bad read).
    reader: int32[N], reader index into the topology (out of range: a bad read).
    rssi: float32[N] dBm (NaN = none), or float32[0]: no read of the batch has an RSSI.
    obs_start: s, when the engine last began observing (-inf, or the time it was restored):
        a departure counts as read at the entry for the read-rate estimates only if its
        visit began at or after it.
    shift: uint64, the hash table's shift (64 - log2 of its slots).
    topo: the topology's arrays (read).
    params: fifo_slack_s, evict_batch, interval_alpha, walk_ahead and the BLE settings.
    table: hash slots, free-row stack and counters (written: reads, bad and filtered reads,
        evictions, departures).
    rows: per-tag state (written).
    cand: per-tag BLE candidates (written by BLE adverts).
    zones: per-zone counts, exits, FIFO witnesses and cutoffs, read-rate start, walk
        (written; ``capacity`` unused).
    hist: departure and arrival rings (written).
    See state.py for every field.
    """
    reader_zone, reader_role = topo.reader_zone, topo.reader_role
    reader_rssi_floor, reader_min_reads = topo.reader_rssi_floor, topo.reader_min_reads
    zone_kind, zone_timeout_s = topo.zone_kind, topo.zone_timeout_s
    zone_missed_reads = topo.zone_missed_reads
    fifo_slack_s, evict_batch = params.fifo_slack_s, params.evict_batch
    interval_alpha, walk_ahead = params.interval_alpha, params.walk_ahead
    tau_s, alpha_min, stale_s = params.ble_tau_s, params.ble_alpha_min, params.ble_stale_s
    decay, holdoff = params.ble_decay_db_per_s, params.ble_holdoff_s
    margin, ble_min_reads = params.ble_margin_db, params.ble_min_reads
    slots, free_rows, counters = table.slots, table.free_rows, table.counters
    row_f64, row_i32, row_key, row_entry = rows.f64, rows.i32, rows.key, rows.entry
    row_pend_n, row_pend_t = rows.pend_n, rows.pend_t
    row_dep, row_exits0 = rows.dep, rows.exits0
    cand_reader, cand_s, cand_t, cand_n = cand.reader, cand.s, cand.t, cand.n
    zone_count, zone_exits = zones.tags, zones.exits
    fifo_entry, fifo_n, fifo_cutoff = zones.fifo_entry, zones.fifo_n, zones.fifo_cutoff
    rr_from, rr_seen, min_wait = zones.rr_from, zones.rr_seen, zones.min_wait
    dep_t, dep_dur, dep_kind = hist.dep_t, hist.dep_dur, hist.dep_kind
    dep_entry, dep_n, arr_t, arr_n = hist.dep_entry, hist.dep_n, hist.arr_t, hist.arr_n
    n_readers = reader_zone.size
    witnesses = fifo_entry.shape[1]
    # Settings constant over the batch, decided once rather than per read: reads without
    # RSSI (an empty ``rssi``) need no floor and are never BLE adverts; with no reader asking
    # for min_reads > 1 no streak is ever pending, so a refresh has none to end.
    rssi_on = rssi.size > 0
    pend_on = False
    for r in range(n_readers):
        if reader_min_reads[r] > 1:
            pend_on = True
    # What a reader's read does to a tag already in the reader's zone (not a BLE advert):
    # FAST_INTERVAL refreshes it and updates its read interval (areas, queue presence
    # readers), FAST_COUNT refreshes it and counts the read (queue entry readers), 0 is
    # a queue exit: the general path.
    fast = np.empty(n_readers, dtype=np.int8)
    for r in range(n_readers):
        if zone_kind[reader_zone[r]] == KIND_AREA or reader_role[r] == ROLE_PRESENCE:
            fast[r] = FAST_INTERVAL
        elif reader_role[r] == ROLE_ENTRY:
            fast[r] = FAST_COUNT
        else:
            fast[r] = 0
    # A tag's read interval starts from its zone's timeout / missed reads (interval()).
    ivl0 = zone_timeout_s / zone_missed_reads
    order, identity = read_order(ts)
    n_order = ts.size if identity else order.size
    bad = ts.size - n_order
    filtered = 0
    reads = 0
    # First pass: every read's tag row, looked up before any read is applied (-1: not in
    # the table, or a bad key). The lookups are independent of each other, so the CPU
    # overlaps their cache misses as it does in a bare hash loop; the second pass then
    # finds each row waiting and prefetches the rows of the reads ahead from this list.
    found = np.empty(n_order, dtype=np.int32)
    for j in range(n_order):
        if j + PF_SLOT < n_order:
            h = home_slot(tag[nth(order, identity, j + PF_SLOT)], shift)
            prefetch(slots, h)
        key = tag[nth(order, identity, j)]
        s = table_find(slots, key, shift)
        found[j] = table_row(slots, s) if (s >= 0 and key != 0) else -1
    # An eviction releases rows the first pass may have found: after one, look up again.
    stale = False
    for j in range(n_order):
        if j + PF_ROW < n_order:
            row_ahead = found[j + PF_ROW]
            if row_ahead >= 0:
                prefetch(row_f64, row_ahead)
                prefetch(row_i32, row_ahead)
        i = nth(order, identity, j)
        key = tag[i]
        r = reader[i]
        if key == 0 or r < 0 or r >= n_readers:
            bad += 1
            continue
        x = np.nan
        if rssi_on:
            x = rssi[i]
            if x < reader_rssi_floor[r]:  # False for NaN: reads without RSSI always count
                filtered += 1
                continue
        t = ts[i]
        z = np.int64(reader_zone[r])
        role = reader_role[r]

        row = np.int64(-1) if stale else np.int64(found[j])
        slot = np.int64(0)
        if row < 0:  # not in the table at the first pass: maybe inserted since
            slot = table_find(slots, key, shift)
            if slot >= 0:
                row = table_row(slots, slot)
        if row >= 0:
            last = row_f64[row, F_LAST]
            if t < last:
                t = last
            state = row_i32[row, I_STATE]
        else:
            if counters[C_FREE_TOP] == 0:
                evict_stalest(
                    evict_batch,
                    slots,
                    shift,
                    row_key,
                    row_i32,
                    row_f64,
                    free_rows,
                    counters,
                    zone_count,
                )
                slot = table_find(slots, key, shift)  # eviction may have shifted slots
                stale = True
            counters[C_FREE_TOP] -= 1
            row = np.int64(free_rows[counters[C_FREE_TOP]])
            table_set(slots, -1 - slot, key, row)
            row_key[row] = key
            row_i32[row, I_STATE] = TAG_FREE
            row_i32[row, I_PEND_KEY] = -1
            cand_reader[row, :] = -1
            state = TAG_FREE
        reads += 1
        ble_read = rssi_on and not np.isnan(x) and role == ROLE_PRESENCE  # (NaN first: RFID)

        # The common case first: a tag read again in its own zone, by a reader that does not
        # move it (not a BLE advert, not a queue exit). One predictable branch; the interval
        # update, which differs by the reader's kind, is done by selects.
        f = fast[r]
        if state == TAG_IN and f != 0 and not ble_read and row_i32[row, I_ZONE] == z:
            last = row_f64[row, F_LAST]
            interval(row, t, last, f == FAST_INTERVAL, ivl0[z], interval_alpha, row_f64)
            if f == FAST_COUNT:  # (a branch measured faster than an add of 0 or 1)
                row_i32[row, I_NREADS] += 1
            row_f64[row, F_LAST] = t
            if pend_on:
                row_i32[row, I_PEND_KEY] = -1
            continue

        pending_row = state == TAG_PENDING
        if pending_row:
            state = TAG_FREE  # in no zone yet

        if ble_read:
            here = np.int64(row_i32[row, I_ZONE]) if state == TAG_IN else np.int64(-1)
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

        # The common case, a tag read again in its own zone, decided with bitwise ``&`` / ``|``
        # and selects rather than branches on the reader's role and the zone's kind (which
        # change from read to read and would be mispredicted).
        area = zone_kind[z] == KIND_AREA
        presence = role == ROLE_PRESENCE
        queue_exit = (not area) & (role == ROLE_EXIT)
        in_zone = state == TAG_IN
        held = state == TAG_EXITED
        same = (state != TAG_FREE) & (row_i32[row, I_ZONE] == z)
        refresh = same & ((in_zone & (not queue_exit)) | (held & (queue_exit | presence)))
        if refresh:
            # the tag's own read interval (see sweep.py): EWMAs of the interval and its
            # absolute deviation, starting from the interval of the zone's timeout; from
            # presence reads (and any read in an area) of a tag in the zone, time moving on
            interval(row, t, row_f64[row, F_LAST], in_zone & (area | presence), ivl0[z],
                     interval_alpha, row_f64)
            # reads of the band at the reader that made the state (strays are read once)
            row_i32[row, I_NREADS] += np.int32((not area) & ((in_zone & (role == ROLE_ENTRY)) | queue_exit))
            if queue_exit:
                seq = row_dep[row]
                if row_i32[row, I_NREADS] == 2 and dep_n[z] - seq <= dep_t.shape[1] and seq >= 0:
                    dep_entry[z, seq % dep_t.shape[1]] &= ~DEP_ONE_OUT
            row_f64[row, F_LAST] = t
            if pend_on:
                row_i32[row, I_PEND_KEY] = -1
            continue

        # A transition (join, move, exit): with min_reads > 1 it waits for that many reads in
        # a row at this reader (for a BLE advert: in the zone it chose), dated at the first.
        need = reader_min_reads[r]
        t0 = t
        if need > 1:
            pk = np.int64(n_readers + z) if ble_read else np.int64(r)
            if row_i32[row, I_PEND_KEY] == pk and t - row_pend_t[row] <= zone_timeout_s[z]:
                row_pend_n[row] += 1
            else:
                row_i32[row, I_PEND_KEY] = pk
                row_pend_n[row] = 1
                row_pend_t[row] = t
            if row_pend_n[row] < need:
                if state == TAG_FREE:
                    row_i32[row, I_STATE] = TAG_PENDING
                    row_i32[row, I_ZONE] = z
                    row_f64[row, F_LAST] = t
                continue
            t0 = row_pend_t[row]
        row_i32[row, I_PEND_KEY] = -1
        if pending_row:
            row_i32[row, I_STATE] = TAG_FREE

        if state != TAG_FREE and row_i32[row, I_ZONE] != z:
            if state == TAG_IN:
                zp = np.int64(row_i32[row, I_ZONE])
                if zone_kind[zp] == KIND_AREA:
                    push_departure(
                        dep_t,
                        dep_dur,
                        dep_kind,
                        dep_entry,
                        dep_n,
                        zp,
                        row_f64[row, F_LAST],
                        row_f64[row, F_LAST] - row_f64[row, F_FIRST],
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
                        entry_flags(row_entry[row], row_f64[row, F_FIRST], obs_start, row_i32[row, I_NREADS]),
                    )
                zone_count[zp] -= 1
            state = TAG_FREE

        if not queue_exit:  # a new visit
            row_i32[row, I_ZONE] = z
            row_i32[row, I_STATE] = TAG_IN
            row_f64[row, F_FIRST] = t0
            row_f64[row, F_LAST] = t
            row_f64[row, F_IVL] = np.nan
            row_entry[row] = 1 if (role == ROLE_ENTRY and zone_kind[z] != KIND_AREA) else 0
            row_i32[row, I_NREADS] = max(need, 1)
            row_exits0[row] = zone_exits[z]
            zone_count[z] += 1
            push_arrival(arr_t, arr_n, z, t0)
        elif state == TAG_IN:  # queue exit of a tag in the queue: a completed visit
            dur = np.nan
            entry = observed_entry(row_entry[row], row_f64[row, F_FIRST], obs_start)
            flags = entry_flags(row_entry[row], row_f64[row, F_FIRST], obs_start, row_i32[row, I_NREADS])
            if row_entry[row] == 1:
                dur = t0 - row_f64[row, F_FIRST]
                if zone_exits[z] - row_exits0[row] <= walk_ahead:
                    # hardly anyone ahead: the wait of an empty line (the walk)
                    min_wait[z] = min(min_wait[z], dur)
                push_fifo_witness(fifo_entry, fifo_n, fifo_cutoff, z, row_f64[row, F_FIRST], fifo_slack_s)
                if entry == 1:
                    # exits count for the entry read rate once the guests leaving entered
                    # while the engine watched: from the K-th measured exit that did (FIFO)
                    rr_seen[z] += 1
                    if rr_seen[z] == witnesses:
                        rr_from[z] = t0
            one = DEP_ONE_OUT if need <= 1 else 0
            row_dep[row] = dep_n[z]
            row_i32[row, I_NREADS] = max(need, 1)
            push_departure(
                dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, t0, dur, DEP_EXIT, flags | one
            )
            zone_count[z] -= 1
            zone_exits[z] += 1
            row_i32[row, I_STATE] = TAG_EXITED
            row_f64[row, F_LAST] = t
        else:  # seen only at the exit: counts toward throughput, no wait
            one = DEP_ONE_OUT if need <= 1 else 0
            row_dep[row] = dep_n[z]
            row_i32[row, I_NREADS] = max(need, 1)
            push_departure(dep_t, dep_dur, dep_kind, dep_entry, dep_n, z, t0, np.nan, DEP_EXIT, one)
            zone_exits[z] += 1
            row_i32[row, I_ZONE] = z
            row_i32[row, I_STATE] = TAG_EXITED
            row_f64[row, F_FIRST] = t0
            row_f64[row, F_LAST] = t
            row_entry[row] = 0
    counters[C_READS] += reads
    counters[C_BAD_READS] += bad
    counters[C_FILTERED] += filtered
    if n_order == 0:
        return np.inf, -np.inf
    return ts[nth(order, identity, 0)], ts[nth(order, identity, n_order - 1)]  # time order


@jit
def interval(
    row: int,
    t: float,
    last: float,
    use: bool,
    base0: float,
    alpha: float,
    row_f64: np.ndarray,
) -> None:
    """If ``use`` and time moved on since the tag's ``last`` read, fold the interval into
    the EWMAs of its read interval and of the interval's absolute deviation (sweep.py;
    columns F_IVL and F_IVL_DEV of ``row_f64``); they start from ``base0``, the interval of
    the zone's timeout (timeout / missed reads). Written with selects, not branches: ``use``
    changes from read to read with the reader's role."""
    ivl = row_f64[row, F_IVL]
    dev = row_f64[row, F_IVL_DEV]
    fresh = np.isnan(ivl)
    base = base0 if fresh else ivl
    dev0 = 0.0 if fresh else dev
    err = t - last - base
    ewma = use & (t > last)
    row_f64[row, F_IVL] = base + alpha * err if ewma else ivl
    row_f64[row, F_IVL_DEV] = dev0 + alpha * (abs(err) - dev0) if ewma else dev


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
