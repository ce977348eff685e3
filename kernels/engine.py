"""ZoneEngine: the numba-backed zone state machine and its per-tick metrics.

The engine owns every array it works on, allocated once in the constructor; ingest() and
tick() only run compiled kernels over them (no per-read Python objects). See ingest.py,
sweep.py and window_stats.py for the exact semantics, and reference.py for the plain-Python
twin the tests hold it to.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import numpy as np

from .backends import Kernels, choose
from .codes import (
    C_BAD_READS,
    C_EVICTIONS,
    C_FILTERED,
    C_FREE_TOP,
    C_READS,
    FLOAT_METRICS,
    N_COUNTERS,
    N_FLOAT_METRICS,
)
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
    S_KEY,
    S_ROW,
    BleCandidates,
    History,
    MetricParams,
    QueueLines,
    TagParams,
    TagRows,
    TagTable,
    TopologyArrays,
    ZoneState,
    named_from,
    table_bits,
)
from .topology import KIND_AREA, Topology

__all__ = [
    "FLOAT_METRICS",
    "SNAPSHOT_FORMAT",
    "EngineParams",
    "SnapshotMismatch",
    "ZoneEngine",
    "ZoneMetrics",
    "as_read_columns",
    "fingerprint",
    "rate_span_s",
]

# Version of the layout ZoneEngine.snapshot writes; restore refuses newer ones.
SNAPSHOT_FORMAT = 3


class SnapshotMismatch(ValueError):
    """A snapshot that cannot be restored into this engine; the message says why."""


@dataclass
class ZoneMetrics:
    """Metrics of every zone at one tick; arrays indexed by zone, NaN where undefined.

    queue_length: float64[Z], tags queueing (at or after the FIFO frontier) times
        ``queue_length_factor`` (queue zones; NaN for areas).
    queue_length_method: int8[Z], QL_CORRECTED | QL_UNCORRECTED | QL_NONE (areas).
    queue_length_factor: float64[Z] >= 1, the read-rate correction queue_length used (1.0
        while uncorrected; NaN for areas): 1 / (entry read rate + read_rate_z standard errors).
    occupancy: float64[Z], tags in the zone as read (queue zones: not corrected).
    wait_s: float64[Z], seconds (queue zones): the wait of the guests boarding now, produced
        as wait_method says.
    wait_method: int8[Z], METHOD_MEASURED | METHOD_LITTLE | METHOD_NONE.
    wait_joining_s: float64[Z], seconds (queue zones): the wait of a guest joining the line
        now, queue_length / service rate (exits over ``joining_window_s``, corrected for the
        exit read rate), at least the shortest measured wait (the walk); NaN without evidence
        of service (fewer than ``min_measured_waits`` exits in the window) unless the line is
        empty.
    dwell_p50_s, dwell_p90_s: float64[Z], seconds; queue zones: percentiles of measured waits,
        area zones: of dwells of visits that ended in the window.
    arrivals_per_min, throughput_per_min: float64[Z], visits begun / ended per minute (queue
        zones: corrected for the entry / exit read rate).
    wait_forecast_s: float64[Z], seconds, the wait of the guest boarding ``horizon_s`` from
        now (NaN during the first ``rate_window_s`` of a run).
    entry_read_rate, exit_read_rate: float64[Z] in [0, 1], capture-recapture estimates of the
        fraction of tags a queue's entry / exit reader reads; NaN for areas and until enough
        tags were read at both ends. Shrunk toward 1.0 by ``read_rate_prior`` pseudo-recaptures
        (Chapman's correction for 1).
    entry_read_rate_sd: float64[Z], standard error of entry_read_rate (NaN when it is).
    live_tags: int64[Z], tags currently in each zone.
    wait_samples: int64[Z], measured waits in the window behind the dwell percentiles (and,
        the latest ``wait_recent`` of them, wait_s) of queue zones, or dwells behind the
        percentiles of area zones.
    now: float64 s, the time the metrics are for (max of every ``now`` given to tick so far).
    """

    queue_length: np.ndarray
    occupancy: np.ndarray
    wait_s: np.ndarray
    wait_method: np.ndarray
    dwell_p50_s: np.ndarray
    dwell_p90_s: np.ndarray
    arrivals_per_min: np.ndarray
    throughput_per_min: np.ndarray
    wait_forecast_s: np.ndarray
    entry_read_rate: np.ndarray
    exit_read_rate: np.ndarray
    live_tags: np.ndarray
    wait_samples: np.ndarray
    now: float
    wait_joining_s: np.ndarray
    entry_read_rate_sd: np.ndarray
    queue_length_factor: np.ndarray
    queue_length_method: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-zone array by field name (for comparisons and serialisation)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "now"}


@dataclass(frozen=True)
class EngineParams:
    """Tuning shared by ZoneEngine and ReferenceEngine (all times in seconds).

    window_s: window of the wait median and the dwell percentiles.
    horizon_s: how far ahead wait_forecast_s looks.
    rate_window_s: window of arrivals_per_min and throughput_per_min.
    fifo_slack_s: overtaking allowed in a queue before FIFO clearing.
    fifo_witnesses: consecutive measured exits that must all have entered more than
        fifo_slack_s after a tag before that tag is cleared.
    min_measured_waits: measured waits needed in window_s for METHOD_MEASURED.
    wait_recent: a measured wait_s is the median of the latest this-many measured waits in
        window_s (the guests boarding now; the dwell percentiles use the whole window).
    exit_hold_s: how long a tag read at a queue exit is remembered, so repeated exit reads
        are not counted again.
    history: capacity of each zone's departure and arrival rings (events, per zone).
    read_rate_window_s: window of the capture-recapture read-rate estimates.
    min_recaptures: tags read at both ends of a queue (in read_rate_window_s) before read
        rates are estimated and counts corrected.
    min_read_rate: floor of the read rate used in a correction (caps it at 1 / floor).
    read_rate_prior: pseudo-recaptures at rate 1.0 the read-rate estimates start from (1 is
        Chapman's bias correction; more shrinks a correction harder while recaptures are few).
    read_rate_z: counts are divided by the read rate plus this many standard errors (the
        smallest correction the recaptures support; 0: the point estimate).
    stray_z: strays (tags read once at one end, see window_stats.stray_count) are estimated
        less this many standard errors (0: the point estimate, floored at 0).
    walk_ahead: a measured wait is the walk of an empty line (the floor of wait_joining_s)
        only if at most this many exits were read while the guest waited.
    capacity_s: the service rate measured while the line was busy (the ride's capacity) is
        remembered this long for wait_joining_s when the line is short.
    joining_window_s: window of the service rate behind wait_joining_s.
    stall_s: the service rate is exits over the time the queue was serving: a silence of
        the exit reader longer than this (a stopped ride) counts as this long; silent for
        over twice the longest gap between the exits of joining_window_s (two missed
        dispatches), but at least this and at most twice this, with guests in line, the
        ride is stalled and wait_joining_s NaN.
    interval_alpha: weight of a new interval in the EWMA of a tag's read interval (the
        per-tag departure limit, Topology.zone_missed_reads).
    ble_tau_s, ble_alpha_min, ble_stale_s: RSSI smoothing (see ble_presence.py).
    ble_decay_db_per_s, ble_holdoff_s: a reader's score fades at this rate once it has not
        heard a tag for the holdoff.
    ble_margin_db, ble_min_reads: hysteresis for moving a tag to another zone.
    ble_candidates: readers remembered per tag.
    """

    max_tags: int = 1 << 17
    window_s: float = 900.0
    horizon_s: float = 900.0
    rate_window_s: float = 300.0
    fifo_slack_s: float = 120.0
    fifo_witnesses: int = 3
    min_measured_waits: int = 5
    wait_recent: int = 20
    exit_hold_s: float = 60.0
    history: int = 4096
    read_rate_window_s: float = 3600.0
    min_recaptures: int = 10
    min_read_rate: float = 0.1
    read_rate_prior: float = 10.0
    read_rate_z: float = 1.0
    stray_z: float = 0.5
    walk_ahead: int = 3
    capacity_s: float = 3600.0
    joining_window_s: float = 600.0
    stall_s: float = 60.0
    interval_alpha: float = 0.25
    ble_tau_s: float = 8.0
    ble_alpha_min: float = 0.1
    ble_stale_s: float = 30.0
    ble_decay_db_per_s: float = 1.0
    ble_holdoff_s: float = 10.0
    ble_margin_db: float = 5.0
    ble_min_reads: int = 3
    ble_candidates: int = 4

    def __post_init__(self) -> None:
        if self.max_tags < 1:
            raise ValueError("max_tags must be >= 1")
        positive = ("window_s", "horizon_s", "rate_window_s", "exit_hold_s", "ble_tau_s")
        more = ("joining_window_s", "read_rate_prior", "interval_alpha", "stall_s", "capacity_s")
        for name in (*positive, *more, "ble_stale_s", "min_read_rate", "read_rate_window_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not (np.isfinite(self.fifo_slack_s) and self.fifo_slack_s >= 0):
            raise ValueError(f"fifo_slack_s must be finite and >= 0, got {self.fifo_slack_s!r}")
        for name in ("ble_decay_db_per_s", "ble_margin_db", "ble_holdoff_s", "read_rate_z",
                     "stray_z"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        if not 0 <= self.ble_alpha_min <= 1 or self.min_read_rate > 1 or self.interval_alpha > 1:
            raise ValueError("ble_alpha_min, min_read_rate and interval_alpha must be in [0, 1]")
        counts = ("fifo_witnesses", "min_measured_waits", "wait_recent", "history",
                  "min_recaptures")
        for name in (*counts, "ble_min_reads", "ble_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def evict_batch(self) -> int:
        """Tags evicted at once when the table is full: 1/64 of it, at least one."""
        return max(1, self.max_tags // 64)


def rate_span_s(
    rate_window_s: float,
    t_start: float,
    now: float,
    gap_lo: float = -np.inf,
    gap_hi: float = -np.inf,
) -> float:
    """Seconds that arrivals_per_min and throughput_per_min are averaged over.

    ``rate_window_s`` once the engine has run that long; before, the time since its first
    read or tick (there is no data before it, and dividing by the full window would read a
    fresh gateway's queue as barely moving, and its Little's-law wait as huge), but at least
    a tenth of the window so one early event is not read as a flood. Time the engine was down
    (``gap_lo`` to ``gap_hi``, see ZoneEngine.restore) is not observed time either: it is left
    out of the span, so a gap reads as "no data", not as "nobody came".
    """
    if not np.isfinite(t_start):
        return rate_window_s
    span = min(rate_window_s, now - t_start)
    if gap_hi > gap_lo:
        span -= max(0.0, min(gap_hi, now) - max(gap_lo, now - rate_window_s, t_start))
    return float(max(span, 0.1 * rate_window_s))


_NO_RSSI = np.empty(0, dtype=np.float32)


def _behaved(column: np.ndarray, dtype: type) -> np.ndarray:
    """``column`` as a 1-d, C-contiguous, aligned, writeable array of ``dtype`` (no copy when
    it already is one)."""
    # The agent's columns already are: checked by hand, as np.require takes ~5 µs a column
    # (15 µs of every batch, ~6 % of a 4,000-read batch's time in the kernel).
    if type(column) is np.ndarray and column.ndim == 1 and column.dtype == dtype:
        flags = column.flags
        if flags.c_contiguous and flags.aligned and flags.writeable:
            return column
    return np.require(np.asarray(column, dtype=dtype).reshape(-1), requirements=["C", "A", "W"])


def as_read_columns(
    ts: np.ndarray,
    tag: np.ndarray,
    reader: np.ndarray,
    rssi: np.ndarray | None,
    empty_rssi: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read columns as contiguous float64 / uint64 / int32 / float32 arrays of equal length.

    A missing ``rssi`` becomes all NaN (no RSSI: RFID reads), or with ``empty_rssi`` an empty
    array (ingest.ingest_reads: no read of the batch has an RSSI).

    Each column is also aligned and writeable (a copy of a read-only or unaligned view of
    someone else's buffer): the compiled kernels are called with one fixed type per argument
    (backends.py), and for numba a read-only array is another type."""
    ts = _behaved(ts, np.float64)
    tag = _behaved(tag, np.uint64)
    reader = _behaved(reader, np.int32)
    n = ts.size
    if rssi is None:
        if empty_rssi:
            if tag.size != n or reader.size != n:
                raise ValueError("ts, tag, reader (and rssi) must have the same length")
            return ts, tag, reader, _NO_RSSI
        rssi = np.full(n, np.nan, dtype=np.float32)
    rssi = _behaved(rssi, np.float32)
    if tag.size != n or reader.size != n or rssi.size != n:
        raise ValueError("ts, tag, reader (and rssi) must have the same length")
    return ts, tag, reader, rssi


def fingerprint(topo: Topology, params: EngineParams) -> str:
    """sha256 (hex) of a topology's arrays and the engine parameters: what a snapshot must
    match to be restored."""
    h = hashlib.sha256()
    for name, arr in sorted(topo.arrays().items()):
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(sorted(asdict(params).items())).encode())
    return h.hexdigest()


def assign_changed(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (same shape and dtype), writing only the span of entries along
    the first axis where the two differ bit for bit (NaN and -0.0 included).

    The memory of an array the engine allocates is backed by the OS only once written, and
    rows are handed out from row 0 on, so a checkpoint of a gateway holding a few thousand
    tags differs from a fresh engine in a short prefix of each row array: copying all of it
    made every page of every array resident (28 MB at the default 131,072 max_tags)."""
    if dst.ndim == 0 or dst.size == 0:
        dst[...] = src
        return
    bits = np.dtype(f"u{dst.dtype.itemsize}")
    differs = dst.view(bits) != np.ascontiguousarray(src).view(bits)
    rows = np.flatnonzero(differs.reshape(dst.shape[0], -1).any(axis=1))
    if rows.size:
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        dst[lo:hi] = src[lo:hi]


def sort_lines(lines: QueueLines, queue_zones: np.ndarray) -> None:
    """Sort each queue's segments of ``lines`` (queue_order.queue_entries) in place.

    queue_zones: int64[Q], the queue zones' indices. Plain numpy, not compiled: numpy's sort
    of float64 is some 9x faster than the one compiled kernels get (1.8 against 0.2 ms for
    ten lines of 2,500 tags), and this sort was most of a tick."""
    first, off, one, one_n = lines.first, lines.off, lines.one, lines.one_n
    for z in queue_zones.tolist():
        lo, hi = int(off[z]), int(off[z + 1])
        if hi - lo > 1:
            first[lo:hi].sort()
        n = int(one_n[z])
        if n > 1:
            one[lo : lo + n].sort()


# Engine attributes a snapshot holds besides the state arrays (scalars, as 0-d arrays).
_SNAPSHOT_SCALARS = ("_now", "_t_start", "_t_seen", "_obs_start", "_gap_lo", "_gap_hi")

# The packed arrays (state.py) as a snapshot holds them: one array per field, named and typed
# as before the packing, so checkpoints restore across it. Attribute -> (snapshot name,
# column, dtype) of each column.
PACKED_COLUMNS: dict[str, tuple[tuple[str, int, type], ...]] = {
    "_slots": (("slot_keys", S_KEY, np.uint64), ("slot_rows", S_ROW, np.int32)),
    "_row_f64": (
        ("row_last", F_LAST, np.float64),
        ("row_ivl", F_IVL, np.float64),
        ("row_ivl_dev", F_IVL_DEV, np.float64),
        ("row_first", F_FIRST, np.float64),
    ),
    "_row_i32": (
        ("row_state", I_STATE, np.int8),
        ("row_zone", I_ZONE, np.int32),
        ("row_nreads", I_NREADS, np.int32),
        ("row_pend_key", I_PEND_KEY, np.int32),
    ),
}


def _unpacked(packed: np.ndarray, col: int, dtype: type) -> np.ndarray:
    """Column ``col`` of a packed array as its snapshot array (a copy); the slots' rows
    (uint64) as signed, -1 in an empty slot."""
    column = packed[:, col]
    if packed.dtype == np.uint64 and np.dtype(dtype).kind == "i":
        return np.where(packed[:, S_KEY] == 0, -1, column.view(np.int64)).astype(dtype)
    return column.astype(dtype)


def _assign_column(dst: np.ndarray, values: np.ndarray, chunk: int = 1 << 16) -> None:
    """``dst[:] = values``: a packed column from its snapshot array (a slot's row -1 -> 0),
    chunk by chunk, writing only where they differ (assign_changed), so a restore makes no
    more of a big engine resident than a fresh engine's differing rows."""
    for lo in range(0, dst.shape[0], chunk):
        part = values[lo : lo + chunk]
        if dst.dtype == np.uint64 and part.dtype.kind == "i":
            part = np.maximum(part, 0).astype(np.uint64)
        assign_changed(dst[lo : lo + chunk], part.astype(dst.dtype, copy=False))


class ZoneEngine:
    """Zone state for up to ``max_tags`` live tags; metrics on demand. Not thread-safe.

    Call ``ingest`` with each batch of reads and ``tick(now)`` once per tick. Time is any
    float64 seconds scale; it should not step (feed timestamps derived from a monotonic clock):
    reads older than their tag's last read are applied at that last read, and a ``now`` older
    than a previous one is replaced by the previous one, so a backward step freezes timeouts
    and windows until time catches up, and a forward step times out everyone at once.

    ``snapshot()`` / ``restore(snapshot, now)`` checkpoint the state across a restart.
    """

    def __init__(self, topo: Topology, *, kernels: Kernels | None = None,
                 **params: float) -> None:
        """``params``: any EngineParams field by name (max_tags, window_s, horizon_s, ...).
        ``kernels``: the compiled code to call (backends.py; default: the process's choice,
        an ahead-of-time module when one is built, else numba's JIT)."""
        self.topo = topo
        self.kernels = choose() if kernels is None else kernels
        self.params = p = EngineParams(**params)  # type: ignore[arg-type]
        self._fingerprint = fingerprint(topo, p)
        bits = table_bits(p.max_tags)
        self._shift = np.uint64(64 - bits)
        # hash slots: key and row side by side (state.S_KEY, S_ROW; empty: key 0, row 0)
        self._slots = np.zeros((1 << bits, 2), dtype=np.uint64)
        m = p.max_tags
        # The fields every read touches, packed per tag (state.F_*, I_*: last read, read
        # interval EWMA (NaN: none) and its deviation, first read; state, zone, reads at the
        # reader that made the state (strays), the reader of a streak short of min_reads).
        self._row_f64 = np.zeros((m, ROW_FIELDS), dtype=np.float64)
        self._row_f64[:, F_IVL] = np.nan
        self._row_i32 = np.zeros((m, ROW_FIELDS), dtype=np.int32)
        self._row_i32[:, I_ZONE] = -1
        self._row_i32[:, I_PEND_KEY] = -1
        self._row_key = np.zeros(m, dtype=np.uint64)
        self._row_entry = np.zeros(m, dtype=np.int8)
        self._row_pend_n = np.zeros(m, dtype=np.int32)
        self._row_pend_t = np.zeros(m, dtype=np.float64)
        # the ring position of a held tag's exit record (strays: window_stats.py)
        self._row_dep = np.full(m, -1, dtype=np.int64)
        self._row_exits0 = np.zeros(m, dtype=np.int64)  # the zone's exits read when it joined
        k = p.ble_candidates
        self._cand_reader = np.full((m, k), -1, dtype=np.int32)
        self._cand_s = np.zeros((m, k), dtype=np.float64)
        self._cand_t = np.zeros((m, k), dtype=np.float64)
        self._cand_n = np.zeros((m, k), dtype=np.int32)
        # Rows are handed out from the top of the stack: row 0 first.
        self._free_rows = np.arange(m - 1, -1, -1, dtype=np.int32)
        self._counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self._counters[C_FREE_TOP] = m
        z = topo.n_zones
        self._zone_count = np.zeros(z, dtype=np.int64)
        self._fifo_entry = np.zeros((z, p.fifo_witnesses), dtype=np.float64)
        self._fifo_n = np.zeros(z, dtype=np.int64)
        self._fifo_cutoff = np.full(z, -np.inf, dtype=np.float64)
        # read-rate estimates count departures from rr_from (see ingest.py)
        self._rr_from = np.full(z, np.inf, dtype=np.float64)
        self._rr_seen = np.zeros(z, dtype=np.int64)
        # shortest wait measured of a guest with at most walk_ahead exits read during it
        self._min_wait = np.full(z, np.inf, dtype=np.float64)
        self._zone_exits = np.zeros(z, dtype=np.int64)  # exits read ever
        # the service rate last measured on a busy line (capacity) and when (window_stats.py)
        self._capacity = np.full((z, 2), np.nan, dtype=np.float64)
        self._dep_t = np.zeros((z, p.history), dtype=np.float64)
        self._dep_dur = np.zeros((z, p.history), dtype=np.float64)
        self._dep_kind = np.zeros((z, p.history), dtype=np.int8)
        self._dep_entry = np.zeros((z, p.history), dtype=np.int8)
        self._dep_n = np.zeros(z, dtype=np.int64)
        self._arr_t = np.zeros((z, p.history), dtype=np.float64)
        self._arr_n = np.zeros(z, dtype=np.int64)
        self._queue_zones = np.flatnonzero(topo.zone_kind != KIND_AREA)
        # queue_order.queue_entries' scratch (M tags, and a spare entry)
        self._q_first = np.zeros(m + 1, dtype=np.float64)
        self._q_off = np.zeros(z + 1, dtype=np.int64)
        self._q_one = np.zeros(m + 1, dtype=np.float64)  # ... single-read tags in line
        self._q_one_n = np.zeros(z, dtype=np.int64)
        self._now = -np.inf
        self._t_start = np.inf  # earliest read or tick seen (see rate_span_s)
        self._t_seen = -np.inf  # latest read seen
        self._obs_start = -np.inf  # when the engine last began watching (restore)
        self._gap_lo = -np.inf  # the last time the engine was down (restore)
        self._gap_hi = -np.inf
        self._ingest_compiled = False
        self._build_named_state()

    def _build_named_state(self) -> None:
        """The kernels' named state (state.py), built once around the very arrays above.

        Every array is written in place from here on (the kernels, ``restore`` through
        assign_changed), never reassigned, so these tuples stay valid; they hold no array of
        their own and add nothing to a snapshot."""
        t, p = self.topo, self.params
        # Parameters and topology by field name (state.named_from): one mapping.
        self._k_topo = named_from(TopologyArrays, t)
        self._k_tag_params = named_from(TagParams, p)
        self._k_metric_params = named_from(MetricParams, p)
        self._k_table = TagTable(self._slots, self._free_rows, self._counters)
        self._k_rows = TagRows(
            self._row_f64,
            self._row_i32,
            self._row_key,
            self._row_entry,
            self._row_pend_n,
            self._row_pend_t,
            self._row_dep,
            self._row_exits0,
        )
        self._k_cand = BleCandidates(self._cand_reader, self._cand_s, self._cand_t, self._cand_n)
        self._k_zones = ZoneState(
            self._zone_count,
            self._zone_exits,
            self._fifo_entry,
            self._fifo_n,
            self._fifo_cutoff,
            self._rr_from,
            self._rr_seen,
            self._min_wait,
            self._capacity,
        )
        self._k_hist = History(
            self._dep_t,
            self._dep_dur,
            self._dep_kind,
            self._dep_entry,
            self._dep_n,
            self._arr_t,
            self._arr_n,
        )
        self._k_lines = QueueLines(self._q_first, self._q_off, self._q_one, self._q_one_n)
        # Every argument of these calls has one numba type for the engine's life (the read
        # columns too: as_read_columns), so they skip numba's per-call typing (jit) or are
        # checked once (aot): backends.py.
        k = self.kernels
        self._ingest_reads = k.call("ingest_reads")
        self._sweep_departures = k.call("sweep_departures")
        self._queue_entries = k.call("queue_entries")
        self._zone_metrics = k.call("zone_metrics")

    def ingest(
        self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None = None
    ) -> None:
        """Apply a batch of reads: ts float64[N] s, tag uint64[N] (0 = invalid), reader int32[N]
        (index into the topology), rssi float32[N] dBm or None (NaN = none). A finite RSSI at a
        PRESENCE reader makes the read a BLE advert (smoothed, zone by hysteresis)."""
        ts, tag, reader, rssi = as_read_columns(ts, tag, reader, rssi, empty_rssi=True)
        if ts.size == 0 and self._ingest_compiled:
            return
        # The first call goes through the kernel even when empty: the agent warms up with an
        # empty batch so the kernel is compiled (or loaded from the cache) at start-up, not
        # on the first tick with reads.
        self._ingest_compiled = True
        t_lo, t_hi = self._ingest_reads.call(
            ts,
            tag,
            reader,
            rssi,
            np.float64(self._obs_start),
            self._shift,
            self._k_topo,
            self._k_tag_params,
            self._k_table,
            self._k_rows,
            self._k_cand,
            self._k_zones,
            self._k_hist,
        )
        self._t_start = min(self._t_start, t_lo)
        self._t_seen = max(self._t_seen, t_hi)

    def tick(self, now: float) -> ZoneMetrics:
        """Decide departures due at ``now`` (float64 s), then return the metrics at ``now``."""
        now = float(now)
        if not np.isnan(now):
            self._now = max(self._now, now)
        now = self._now
        self._t_start = min(self._t_start, now)
        p, t = self.params, self.topo
        self._sweep_departures.call(
            np.float64(now),
            np.float64(self._obs_start),
            self._shift,
            self._k_topo,
            self._k_tag_params,
            self._k_table,
            self._k_rows,
            self._k_zones,
            self._k_hist,
        )
        self._queue_entries.call(t.zone_kind, self._k_zones, self._k_rows, self._k_lines)
        sort_lines(self._k_lines, self._queue_zones)
        out_f = np.empty((N_FLOAT_METRICS, t.n_zones), dtype=np.float64)
        method = np.zeros(t.n_zones, dtype=np.int8)
        ql_method = np.zeros(t.n_zones, dtype=np.int8)
        samples = np.zeros(t.n_zones, dtype=np.int64)
        gap = (self._t_start, now, self._gap_lo, self._gap_hi)
        self._zone_metrics.call(
            np.float64(now),
            np.float64(rate_span_s(p.rate_window_s, *gap)),
            np.float64(self._gap_lo),
            np.float64(self._gap_hi),
            np.float64(self._t_start),
            t.zone_kind,
            self._k_metric_params,
            self._k_zones,
            self._k_hist,
            self._k_lines,
            out_f,
            method,
            ql_method,
            samples,
        )
        rows = dict(zip(FLOAT_METRICS, out_f, strict=True))
        return ZoneMetrics(
            wait_method=method,
            queue_length_method=ql_method,
            live_tags=self._zone_count.copy(),
            wait_samples=samples,
            now=now,
            **rows,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The state arrays a snapshot holds as they are (the packed ones: PACKED_COLUMNS)."""
        scratch = ("_q_first", "_q_off", "_q_one", "_q_one_n")
        derived = ("_queue_zones",)  # from the topology
        skip = (*scratch, *derived, *PACKED_COLUMNS)
        return {
            name: value
            for name, value in vars(self).items()
            if isinstance(value, np.ndarray) and name not in skip
        }

    def tag_fields(self) -> dict[str, np.ndarray]:
        """Every per-tag field (M rows) by its snapshot name (``row_key``, ``row_state``,
        ``row_zone``, ``row_first``, ...): views of the engine's arrays, valid until the
        next ingest or tick. For reading the state in place (a snapshot copies it all)."""
        out = {n.lstrip("_"): a for n, a in self._state_arrays().items() if n.startswith("_row_")}
        for attr, cols in PACKED_COLUMNS.items():
            if attr.startswith("_row_"):
                packed = getattr(self, attr)
                out.update((name, packed[:, col]) for name, col, _ in cols)
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every array and scalar of the engine's state, copied, as named numpy arrays (ready
        for ``np.savez``), with ``format`` (SNAPSHOT_FORMAT) and ``fingerprint`` (of the
        topology and parameters, see :func:`fingerprint`)."""
        out = {name.lstrip("_"): arr.copy() for name, arr in self._state_arrays().items()}
        for attr, cols in PACKED_COLUMNS.items():
            packed = getattr(self, attr)
            out.update((name, _unpacked(packed, col, dtype)) for name, col, dtype in cols)
        for name in _SNAPSHOT_SCALARS:
            out[name.lstrip("_")] = np.array(getattr(self, name), dtype=np.float64)
        out["shift"] = np.array(self._shift, dtype=np.uint64)
        out["format"] = np.array(SNAPSHOT_FORMAT, dtype=np.int64)
        out["fingerprint"] = np.array(self._fingerprint)
        return out

    def restore(self, snapshot: dict[str, np.ndarray], now: float) -> None:
        """Load ``snapshot`` (from ``snapshot()`` of an engine with the same topology and
        parameters) and resume at ``now`` (float s).

        Raises SnapshotMismatch (nothing changed) for a newer format, another topology or
        other parameters, or a missing or misshapen array. If ``now`` is later than the last
        read or tick of the snapshot, the time between was a gap with no observations:
        tags whose limit passed in it leave at the next tick (as they would have); rates
        leave it out of their span (rate_span_s); and read-rate estimates skip the guests
        whose visit spanned it (their reads at the far end were missed while down) until
        ``fifo_witnesses`` guests who entered after ``now`` have exited. With no gap the
        engine continues exactly as the one that took the snapshot.
        """
        fmt = int(np.asarray(snapshot.get("format", -1)))
        if fmt != SNAPSHOT_FORMAT:
            raise SnapshotMismatch(
                f"snapshot format {fmt}, this engine reads format {SNAPSHOT_FORMAT}"
            )
        theirs = str(np.asarray(snapshot.get("fingerprint", "")))
        if theirs != self._fingerprint:
            raise SnapshotMismatch(
                "snapshot is of another topology or other engine parameters "
                f"(fingerprint {theirs[:12]}, this engine {self._fingerprint[:12]})"
            )
        mine = self._state_arrays()
        for name, arr in mine.items():
            got = snapshot.get(name.lstrip("_"))
            if got is None or got.shape != arr.shape or got.dtype != arr.dtype:
                raise SnapshotMismatch(f"snapshot array {name.lstrip('_')!r} missing or misshapen")
        for attr, cols in PACKED_COLUMNS.items():
            n_rows = getattr(self, attr).shape[0]
            for name, _, dtype in cols:
                got = snapshot.get(name)
                if got is None or got.shape != (n_rows,) or got.dtype != np.dtype(dtype):
                    raise SnapshotMismatch(f"snapshot array {name!r} missing or misshapen")
        for name in _SNAPSHOT_SCALARS:
            if name.lstrip("_") not in snapshot:
                raise SnapshotMismatch(f"snapshot scalar {name.lstrip('_')!r} missing")
        for name, arr in mine.items():
            assign_changed(arr, snapshot[name.lstrip("_")])
        for attr, cols in PACKED_COLUMNS.items():
            dst = getattr(self, attr)
            for name, col, _ in cols:
                _assign_column(dst[:, col], snapshot[name])
        for name in _SNAPSHOT_SCALARS:
            setattr(self, name, float(snapshot[name.lstrip("_")]))
        self._shift = np.uint64(snapshot["shift"])
        now = float(now)
        down_from = max(self._now, self._t_seen)
        if np.isfinite(now) and np.isfinite(down_from) and now > down_from:
            self._gap_lo, self._gap_hi = down_from, now
            self._obs_start = now
            self._rr_from[:] = np.inf
            self._rr_seen[:] = 0
        if not np.isnan(now):
            self._now = max(self._now, now)

    # -- introspection -------------------------------------------------------------------
    @property
    def live_tags(self) -> int:
        """Tags the engine currently remembers (in a zone, held after a queue exit, or short
        of their reader's min_reads)."""
        return self.params.max_tags - int(self._counters[C_FREE_TOP])

    def live_keys(self) -> np.ndarray:
        """uint64[K]: the keys (pseudonyms) of the tags the engine remembers now (those
        counted by ``live_tags``), in no particular order."""
        k = self._row_key
        return k[k != 0]

    @property
    def evictions(self) -> int:
        """Tags dropped so far because the table was full."""
        return int(self._counters[C_EVICTIONS])

    @property
    def reads(self) -> int:
        """Reads applied so far (including reads still short of their reader's min_reads)."""
        return int(self._counters[C_READS])

    @property
    def bad_reads(self) -> int:
        """Reads ignored so far: NaN timestamp, tag 0, or a reader index out of range."""
        return int(self._counters[C_BAD_READS])

    @property
    def filtered_reads(self) -> int:
        """Reads ignored so far because their RSSI was below their reader's floor."""
        return int(self._counters[C_FILTERED])

    @property
    def departures(self) -> np.ndarray:
        """int64[Z]: departures of every kind recorded per zone so far."""
        return self._dep_n.copy()
