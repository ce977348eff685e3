"""Named state of the compiled kernels: the engine's arrays grouped into a few namedtuples.

numba passes a namedtuple of arrays (or of scalars) to a compiled function as one value and
reads a field of it for free, so the top-level kernels (``ingest.ingest_reads``,
``sweep.sweep_departures``, ``queue_order.queue_entries``, ``window_stats.zone_metrics``) take
these instead of dozens of positional arrays, and unpack the fields they use at the top of
their body.

``ZoneEngine`` builds every tuple once, in its constructor, around the very arrays it keeps as
attributes (``_row_key`` is ``rows.key``, and so on): the kernels write the engine's state in
place, ``snapshot`` copies the attributes and ``restore`` writes into them in place
(``engine.assign_changed``), so the tuples stay valid for the engine's life. No array is ever
reassigned after the constructor, and the tuples add nothing to a snapshot.

Shapes: M = max_tags (tag rows), S = hash slots (a power of two >= 2 M), K = ble_candidates,
R = readers, Z = zones, W = fifo_witnesses, H = history (ring capacity per zone). Times are
float64 seconds on the caller's scale; durations are seconds.

Parameters that change from call to call (``now``, ``obs_start``, the gap bounds, ``t_start``,
the rate span) are not in any tuple: they stay plain arguments of the kernels.
"""

from __future__ import annotations

from typing import Any, NamedTuple, get_type_hints

import numpy as np


class TopologyArrays(NamedTuple):
    """The topology's arrays (``topology.Topology``; read-only)."""

    reader_zone: np.ndarray
    """int32[R]: zone index of each reader."""
    reader_role: np.ndarray
    """int8[R]: ROLE_PRESENCE | ROLE_ENTRY | ROLE_EXIT."""
    reader_rssi_floor: np.ndarray
    """float64[R] dBm: a read with a finite RSSI below it is dropped (-inf: no floor)."""
    reader_min_reads: np.ndarray
    """int32[R] >= 1: reads in a row at the reader before a read changes a tag's state."""
    zone_kind: np.ndarray
    """int8[Z]: KIND_QUEUE | KIND_AREA."""
    zone_timeout_s: np.ndarray
    """float64[Z] s > 0: a tag unseen this long leaves the zone."""
    zone_missed_reads: np.ndarray
    """float64[Z] > 0: a tag leaves once unseen for this many of its own read intervals."""


# Packed layouts. The per-read path touches a tag's hash slot and a few of its fields; held
# in parallel arrays (one per field) those are eight cache lines a read, each a miss on a
# table larger than the cache. Packed side by side they are three: the slot (key and row),
# the float fields and the int fields. Fields the per-read path seldom touches keep arrays
# of their own. A snapshot still names every field (engine.ROW_COLUMNS).

# TagTable.slots columns (uint64[S, 2]).
S_KEY = 0
"""the key held by the slot (0: empty)."""
S_ROW = 1
"""the key's tag row, as uint64 (0 in an empty slot: read only where the key matched)."""

ROW_FIELDS = 4
"""fields per tag in TagRows.f64 and TagRows.i32; flattened (``.reshape(-1)``, as the per-read
kernels index them: unsigned flat indices compile without wraparound code), tag row k's field
c is at ``ROW_FIELDS * k + c``."""

# TagRows.f64 columns (float64[M, 4]: 32 bytes, half a cache line, per tag).
F_LAST = 0
"""s: latest read of the tag (never runs backwards)."""
F_IVL = 1
"""s: EWMA of the intervals between the tag's presence reads; NaN: none yet."""
F_IVL_DEV = 2
"""s: EWMA of those intervals' absolute deviation from F_IVL."""
F_FIRST = 3
"""s: first read of the current visit (queues: the entry time)."""

# TagRows.i32 columns (int32[M, 4]: 16 bytes per tag).
I_STATE = 0
"""codes.TAG_FREE | TAG_IN | TAG_EXITED | TAG_PENDING."""
I_ZONE = 1
"""zone the tag is in (or was held / is pending in); -1 none."""
I_NREADS = 2
"""reads at the reader that made the state (entry reads of a queue visit, exit reads while
held): a single read marks a possible stray."""
I_PEND_KEY = 3
"""reader whose streak of reads is short of its min_reads (-1: none; BLE: readers + zone)."""


class TagTable(NamedTuple):
    """The hash table from tag key to row, and the row allocator (hashtable.py, tag_rows.py).

    The table's ``shift`` (64 - log2 S, a uint64 scalar) is a plain kernel argument."""

    slots: np.ndarray
    """uint64[S, 2]: each slot's key and row (columns S_KEY, S_ROW); linear probing, at most
    half full."""
    free_rows: np.ndarray
    """int32[M]: stack of free rows; ``counters[C_FREE_TOP]`` entries from index 0 are free,
    the top (next handed out) at ``counters[C_FREE_TOP] - 1``."""
    counters: np.ndarray
    """int64[N_COUNTERS]: the engine's counters, slots ``codes.C_*`` (free top, reads, bad
    reads, evictions, departures, filtered reads)."""


class TagRows(NamedTuple):
    """Per-tag state, one row per live tag (M rows; a free row has state TAG_FREE)."""

    f64: np.ndarray
    """float64[M, 4]: the float fields the per-read path touches (columns F_*)."""
    i32: np.ndarray
    """int32[M, 4]: the int fields the per-read path touches (columns I_*)."""
    key: np.ndarray
    """uint64[M]: the tag's key (pseudonym); 0 in a free row."""
    entry: np.ndarray
    """int8[M]: 1 if the current queue visit began with an entry-reader read, else 0."""
    pend_n: np.ndarray
    """int32[M]: reads in the pending streak (I_PEND_KEY) so far."""
    pend_t: np.ndarray
    """float64[M] s: time of the streak's first read (the state change is dated there)."""
    dep: np.ndarray
    """int64[M]: sequence number (``History.dep_n`` when pushed) of a held tag's exit record,
    to clear its single-read bit on a repeat exit read; -1 none."""
    exits0: np.ndarray
    """int64[M]: the zone's ``ZoneState.exits`` when the tag joined (exits read during its
    wait, for the walk)."""


class BleCandidates(NamedTuple):
    """The K readers each tag last heard as a BLE advert, with their smoothed RSSI
    (ble_presence.py)."""

    reader: np.ndarray
    """int32[M, K]: reader index of each candidate; -1 an empty slot."""
    s: np.ndarray
    """float64[M, K] dBm: EWMA of the RSSI the candidate heard."""
    t: np.ndarray
    """float64[M, K] s: when the candidate last heard the tag."""
    n: np.ndarray
    """int32[M, K]: adverts the candidate heard since its EWMA (re)started."""


class ZoneState(NamedTuple):
    """Per-zone state besides the history rings."""

    tags: np.ndarray
    """int64[Z]: tags in each zone now (state TAG_IN)."""
    exits: np.ndarray
    """int64[Z]: exits read at each queue's exit reader, ever."""
    fifo_entry: np.ndarray
    """float64[Z, W] s: entry times of the latest W measured exits (a ring, history.py)."""
    fifo_n: np.ndarray
    """int64[Z]: measured exits pushed into ``fifo_entry`` ever."""
    fifo_cutoff: np.ndarray
    """float64[Z] s: tags that entered before it are FIFO-cleared at the next sweep (-inf:
    none; reset by the sweep)."""
    rr_from: np.ndarray
    """float64[Z] s: read rates count departures from this time on (inf until
    ``fifo_witnesses`` guests who entered while the engine watched have exited)."""
    rr_seen: np.ndarray
    """int64[Z]: such exits seen so far (towards ``rr_from``)."""
    min_wait: np.ndarray
    """float64[Z] s: shortest measured wait with at most ``walk_ahead`` exits read during it
    (the walk of an empty line; inf: none yet)."""
    capacity: np.ndarray
    """float64[Z, 2]: the service rate (guests/s) last measured on a busy line, and when (s);
    NaN: none."""


class History(NamedTuple):
    """Per-zone rings of the latest H departures and arrivals (history.py): event i of zone z
    is at ``[z, i % H]``; ``dep_n`` / ``arr_n`` count every event ever pushed."""

    dep_t: np.ndarray
    """float64[Z, H] s: when each departure happened (or was decided)."""
    dep_dur: np.ndarray
    """float64[Z, H] s: its measured wait (queue exits read at the entry) or dwell (areas);
    NaN without one."""
    dep_kind: np.ndarray
    """int8[Z, H]: codes.DEP_EXIT | DEP_TIMEOUT | DEP_FIFO | DEP_MOVED."""
    dep_entry: np.ndarray
    """int8[Z, H]: bits codes.DEP_OBSERVED | DEP_ONE_IN | DEP_ONE_OUT (read-rate and stray
    evidence)."""
    dep_n: np.ndarray
    """int64[Z]: departures pushed ever."""
    arr_t: np.ndarray
    """float64[Z, H] s: when each visit began."""
    arr_n: np.ndarray
    """int64[Z]: arrivals pushed ever."""


class QueueLines(NamedTuple):
    """Scratch written by queue_order.queue_entries at each tick (sorted by
    engine.sort_lines) and read by window_stats.zone_metrics: each queue's line as sorted
    entry times."""

    first: np.ndarray
    """float64[M + 1] s: first-read times of the tags in each queue zone, zone z's ascending
    in ``first[off[z]:off[z + 1]]`` (the last entry is spare: queue_entries' scratch)."""
    off: np.ndarray
    """int64[Z + 1]: segment offsets into ``first`` (areas: empty segments)."""
    one: np.ndarray
    """float64[M + 1] s: entry times of the tags in line that joined by a single entry read,
    zone z's in ``one[off[z]:off[z] + one_n[z]]`` (the last entry is spare)."""
    one_n: np.ndarray
    """int64[Z]: how many of them per zone."""


class TagParams(NamedTuple):
    """Scalar settings of the per-tag kernels (ingest and sweep), from EngineParams; built
    with Python floats and ints (numba: float64, int64), so one compiled signature serves
    every engine."""

    fifo_slack_s: float
    """s: overtaking allowed before FIFO clearing."""
    exit_hold_s: float
    """s: how long a tag read at a queue exit is held (repeat exit reads absorbed)."""
    evict_batch: int
    """tags evicted at once when every row is in use (EngineParams.evict_batch)."""
    interval_alpha: float
    """weight of a new interval in a tag's read-interval EWMAs."""
    walk_ahead: int
    """a measured wait with at most this many exits read during it is a walk."""
    ble_tau_s: float
    """s: time constant of the RSSI EWMA's weight, 1 - exp(-dt / tau)."""
    ble_alpha_min: float
    """floor of that weight."""
    ble_stale_s: float
    """s: a candidate silent this long restarts its EWMA."""
    ble_decay_db_per_s: float
    """dB/s: a candidate's score fades at this rate once silent for the holdoff."""
    ble_holdoff_s: float
    """s: silence before the score starts to fade."""
    ble_margin_db: float
    """dB: another zone's best score must beat the current zone's by this to move the tag."""
    ble_min_reads: int
    """adverts the winning candidate needs before a tag moves."""


class MetricParams(NamedTuple):
    """Scalar settings of window_stats.zone_metrics, from EngineParams (see its doc)."""

    window_s: float
    """s: window of the wait median and the dwell percentiles."""
    rate_window_s: float
    """s: window of arrivals_per_min and throughput_per_min."""
    horizon_s: float
    """s: how far ahead wait_forecast_s looks."""
    min_measured_waits: int
    """measured waits needed for METHOD_MEASURED (EngineParams.min_measured_waits)."""
    wait_recent: int
    """wait_s is the median of the latest this-many measured waits."""
    min_recaptures: int
    """tags read at both ends before read rates are estimated."""
    min_read_rate: float
    """floor of a read rate in a correction."""
    read_rate_window_s: float
    """s: window of the capture-recapture read rates."""
    read_rate_prior: float
    """pseudo-recaptures at rate 1.0 the read-rate estimates start from."""
    read_rate_z: float
    """counts are divided by the read rate plus this many standard errors."""
    stray_z: float
    """strays are estimated less this many standard errors."""
    joining_window_s: float
    """s: window of the service rate behind wait_joining_s."""
    stall_s: float
    """s: exit silences longer than this count as this long (a stall, not service)."""
    capacity_s: float
    """s: how long the capacity measured on a busy line is remembered."""


def table_bits(n_rows: int) -> int:
    """log2 of the hash table's slot count (``TagTable.slots``) for ``n_rows`` tag rows:
    the smallest power of two >= 2 * n_rows, so the table is at most half full."""
    return max(4, int(2 * n_rows - 1).bit_length())


def named_from(cls: Any, source: Any) -> Any:
    """``cls`` (a NamedTuple above) with each field read by its name from ``source`` (the
    engine's parameters or topology), scalars cast to the field's type: the one place the
    engine's settings are mapped onto the kernels' tuples."""
    hints = get_type_hints(cls)
    values = {}
    for name in cls._fields:
        v = getattr(source, name)
        kind = hints[name]
        values[name] = kind(v) if kind in (int, float) else v
    return cls(**values)
