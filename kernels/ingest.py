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

How (ingest_reads): a batch not already in time order is first gathered into that order.
Then three passes: lookup_rows finds every read's tag row; common_reads applies the common
read (a tag read again in its own zone, no move, no BLE advert), which touches its own row
only, ahead of the others; the general path then applies the reads left, in order. A tag
with a read left to the general path has all its later reads there too, so every tag sees
its reads in order, and the result is the same as applying the batch read by read (the
Python twin, reference.py, does exactly that).
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
from .hashtable import home_slot, probe, table_find, table_row, table_set
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
    ROW_FIELDS,
    S_ROW,
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

# How many reads ingest_reads' second and third passes take at a time (see there).
CHUNK = 4096

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
def lookup_rows(tag: np.ndarray, slots: np.ndarray, shift: np.uint64, found: np.ndarray) -> int:
    """ingest_reads' first pass: each read's tag row into ``found``, before any is applied.

    tag: uint64[N], the batch's keys in the order they will be applied.
    slots: the hash table flattened, uint64[2 S] (slot i: key at 2 i + S_KEY, row at
        2 i + S_ROW; hashtable.py's probing, key 0 = empty).
    found: int32[N], written: the row of each read's tag, -1 for a tag not in the table
        and for key 0.
    Returns how many reads found no row.

    The lookups do not depend on each other, so the CPU overlaps their cache misses as it
    does in a bare hash loop, helped by a prefetch of the hash slot PF_SLOT reads ahead.
    Indices are unsigned (hashtable.probe): numba then emits no negative-index wraparound
    (a shift, an and and a load of the array's length on every access), a quarter of this
    loop when they were signed.
    """
    n = tag.size
    two = np.uint64(2)
    missing = np.int64(0)
    for jj in range(n):
        j = np.uint64(jj)
        if jj + PF_SLOT < n:
            prefetch(slots, np.uint64(home_slot(tag[j + np.uint64(PF_SLOT)], shift)) * two)
        key = tag[j]
        s, hit = probe(slots, key, shift)
        row = np.int64(slots[s * two + np.uint64(S_ROW)]) if hit else np.int64(-1)
        if key == 0:  # (matched an empty slot)
            row = np.int64(-1)
        found[j] = row
        missing += np.int64(row < 0)
    return int(missing)


@jit
def common_reads(
    ts: np.ndarray,
    tag: np.ndarray,
    reader: np.ndarray,
    rssi: np.ndarray | None,
    found: np.ndarray,
    lo: int,
    hi: int,
    topo: TopologyArrays,
    fast: np.ndarray,
    ivl0: np.ndarray,
    alpha: float,
    pend_on: bool,
    held_rows: np.ndarray,
    todo: np.ndarray,
    f64: np.ndarray,
    i32: np.ndarray,
) -> tuple[int, int, int, int]:
    """ingest_reads' second pass over reads ``lo`` to ``hi``: the common read on its own.

    A read of a tag already in its reader's zone, by a reader that does not move it
    (``fast`` nonzero: not a queue exit) and not a BLE advert, touches that tag's row and
    nothing else, so it is applied here, ahead of reads of other tags that need the general
    path, as long as no earlier read of the same tag was left to that path: ``held_rows``
    has a bit per row (uint64 words) for those. Every other read goes to ``todo`` (its index,
    in order) and its row's bit is set; bad reads and reads under their reader's RSSI floor
    are counted and dropped here.

    ts, tag, reader, rssi: the batch in application order (see ingest_reads); ``rssi`` None
        when no read has one (numba compiles that case apart, without the RSSI checks).
    found: int32[N], the first pass's rows.
    topo: the topology (reader_zone, reader_role and reader_rssi_floor read).
    fast: int8[R], what each reader's read does on this path (FAST_*; 0: never).
    ivl0: float64[Z] s, each zone's starting read interval (see interval).
    alpha: the read-interval EWMA weight. pend_on: some reader needs min_reads > 1.
    f64, i32: the tag rows flattened (row k's fields at ROW_FIELDS k + F_*, + I_*).
    Returns ``(reads left in todo, bad reads, filtered reads, reads applied)``.

    Kept apart from the general path and with unsigned indices (no wraparound code), this
    loop keeps its values in registers and many reads in flight: x1.3 over the same work
    inside the general loop.
    """
    reader_zone, reader_role = topo.reader_zone, topo.reader_role
    reader_rssi_floor = topo.reader_rssi_floor
    n_readers = np.uint64(reader_zone.size)
    width = np.uint64(ROW_FIELDS)
    n_todo = bad = filtered = applied = 0
    for jj in range(lo, hi):
        j = np.uint64(jj)
        if jj + PF_ROW < found.size:
            row_ahead = found[j + np.uint64(PF_ROW)]
            if row_ahead >= 0:
                prefetch(f64, np.uint64(row_ahead) * width)
                prefetch(i32, np.uint64(row_ahead) * width)
        key = tag[j]
        r = np.uint64(np.int64(reader[j]))  # a negative index becomes huge: out of range
        if key == 0 or r >= n_readers:
            bad += 1
            continue
        ble_read = False
        if rssi is not None:
            x = rssi[j]
            if x < reader_rssi_floor[r]:  # False for NaN: reads without RSSI count
                filtered += 1
                continue
            ble_read = not np.isnan(x) and reader_role[r] == ROLE_PRESENCE
        if found[j] >= 0:
            row = np.uint64(found[j])
            word = row >> np.uint64(6)
            bit = np.uint64(1) << (row & np.uint64(63))
            f = fast[r]
            z = np.uint64(reader_zone[r])
            at = row * width
            if (
                (held_rows[word] & bit) == 0
                and f != 0
                and not ble_read
                and i32[at + np.uint64(I_STATE)] == TAG_IN
                and np.uint64(i32[at + np.uint64(I_ZONE)]) == z
            ):
                # a late read counts as read at the tag's last read
                common_read(at, max(ts[j], f64[at + np.uint64(F_LAST)]), f, ivl0[z], alpha,
                            pend_on, f64, i32)
                applied += 1
                continue
            held_rows[word] |= bit
        todo[n_todo] = jj
        n_todo += 1
    return n_todo, bad, filtered, applied


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
    if not identity:  # the batch in the order to apply it, NaN timestamps left out
        ts, tag, reader = ts[order], tag[order], reader[order]
        if rssi_on:
            rssi = rssi[order]
    # First pass: every read's tag row, looked up before any read is applied (lookup_rows).
    f64_flat, i32_flat = row_f64.reshape(-1), row_i32.reshape(-1)
    width = np.uint64(ROW_FIELDS)
    found = np.empty(n_order, dtype=np.int32)
    n_missing = lookup_rows(tag, slots.reshape(-1), shift, found)
    # Second pass, the common read on its own, ahead of others (common_reads); the third
    # applies the rest in order with the general path below. Not when the batch may evict (fewer free rows than reads of tags not in the table):
    # an eviction picks the stalest tags, and reads applied ahead would change which. Every
    # read then takes the third pass, in order.
    ahead = counters[C_FREE_TOP] >= n_missing
    held_rows = np.zeros(((row_i32.shape[0] + 63) >> 6) if ahead else 0, dtype=np.uint64)
    todo = np.empty(min(n_order, CHUNK), dtype=np.int64)
    # An eviction releases rows the first pass may have found: after one, look up again.
    stale = False
    # In chunks of CHUNK reads, so that a tag held back stays held only to its chunk's end.
    for lo in range(0, n_order, CHUNK):
        hi = min(lo + CHUNK, n_order)
        n_todo = 0
        if ahead:
            # (None when no read has an RSSI: numba compiles that case without the checks)
            if rssi_on:
                counts = common_reads(ts, tag, reader, rssi, found, lo, hi, topo, fast, ivl0,
                                      interval_alpha, pend_on, held_rows, todo, f64_flat, i32_flat)
            else:
                counts = common_reads(ts, tag, reader, None, found, lo, hi, topo, fast, ivl0,
                                      interval_alpha, pend_on, held_rows, todo, f64_flat, i32_flat)
            n_todo, n_bad, n_filtered, n_reads = counts
            bad += n_bad
            filtered += n_filtered
            reads += n_reads
        else:
            for j in range(lo, hi):
                todo[n_todo] = j
                n_todo += 1
        # Third pass, in order: every read the second left (all of them when not ahead).
        for k in range(n_todo):
            if k + PF_ROW < n_todo:
                row_ahead = found[todo[k + PF_ROW]]
                if row_ahead >= 0:
                    prefetch(row_f64, row_ahead)
                    prefetch(row_i32, row_ahead)
            j = todo[k]
            i = j
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
                common_read(np.uint64(row) * width, t, f, ivl0[z], interval_alpha, pend_on,
                        f64_flat, i32_flat)
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
                interval(np.uint64(row) * width, t, row_f64[row, F_LAST],
                         in_zone & (area | presence), ivl0[z], interval_alpha, f64_flat)
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
        if ahead:  # clear the chunk's bits (only rows of reads in todo have one)
            for k in range(n_todo):
                row = np.int64(found[todo[k]])
                if row >= 0:
                    held_rows[row >> 6] = np.uint64(0)
    counters[C_READS] += reads
    counters[C_BAD_READS] += bad
    counters[C_FILTERED] += filtered
    if n_order == 0:
        return np.inf, -np.inf
    return ts[0], ts[n_order - 1]  # in time order


@jit
def common_read(
    at: np.uint64,
    t: float,
    f: int,
    base0: float,
    alpha: float,
    pend_on: bool,
    f64: np.ndarray,
    i32: np.ndarray,
) -> None:
    """The common read (see common_reads) at time ``t`` (s, not before the tag's last read)
    of the tag whose fields start at ``at`` = ROW_FIELDS * row in the flattened rows ``f64``
    and ``i32``: ``f`` (FAST_INTERVAL or FAST_COUNT) says what the reader's read does,
    ``base0`` is the zone's starting interval; with ``pend_on`` it ends a pending streak."""
    last = f64[at + np.uint64(F_LAST)]
    interval(at, t, last, f == FAST_INTERVAL, base0, alpha, f64)
    if f == FAST_COUNT:  # (a branch measured faster than an add of 0 or 1)
        i32[at + np.uint64(I_NREADS)] += 1
    f64[at + np.uint64(F_LAST)] = t
    if pend_on:
        i32[at + np.uint64(I_PEND_KEY)] = -1


@jit
def interval(
    at: np.uint64,
    t: float,
    last: float,
    use: bool,
    base0: float,
    alpha: float,
    f64: np.ndarray,
) -> None:
    """If ``use`` and time moved on since the tag's ``last`` read, fold the interval into
    the EWMAs of its read interval and of the interval's absolute deviation (sweep.py;
    fields F_IVL and F_IVL_DEV of the flattened float rows ``f64``, the tag's starting at
    ``at`` = ROW_FIELDS * row); they start from ``base0``, the interval of the zone's
    timeout (timeout / missed reads). Written with selects, not branches: ``use`` changes
    from read to read with the reader's role."""
    ivl = f64[at + np.uint64(F_IVL)]
    dev = f64[at + np.uint64(F_IVL_DEV)]
    fresh = np.isnan(ivl)
    base = base0 if fresh else ivl
    dev0 = 0.0 if fresh else dev
    err = t - last - base
    ewma = use & (t > last)
    f64[at + np.uint64(F_IVL)] = base + alpha * err if ewma else ivl
    f64[at + np.uint64(F_IVL_DEV)] = dev0 + alpha * (abs(err) - dev0) if ewma else dev


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
