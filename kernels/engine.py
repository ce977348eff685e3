"""ZoneEngine: the numba-backed zone state machine and its per-tick metrics.

The engine owns every array it works on, allocated once in the constructor; ingest() and
tick() only run compiled kernels over them (no per-read Python objects). See ingest.py,
sweep.py and window_stats.py for the exact semantics, and reference.py for the plain-Python
twin the tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .codes import C_BAD_READS, C_EVICTIONS, C_FREE_TOP, C_READS, N_COUNTERS
from .hashtable import table_bits
from .ingest import ingest_reads
from .queue_order import queue_entries
from .sweep import sweep_departures
from .topology import Topology
from .window_stats import zone_metrics

# Names of the float64 metric rows filled by window_stats.zone_metrics, in its row order.
FLOAT_METRICS = (
    "queue_length",
    "occupancy",
    "wait_s",
    "dwell_p50_s",
    "dwell_p90_s",
    "arrivals_per_min",
    "throughput_per_min",
    "wait_forecast_s",
    "entry_read_rate",
    "exit_read_rate",
)


@dataclass
class ZoneMetrics:
    """Metrics of every zone at one tick; arrays indexed by zone, NaN where undefined.

    queue_length: float64[Z], tags queueing (at or after the FIFO frontier) corrected for the
        entry read rate (queue zones; NaN for areas).
    occupancy: float64[Z], tags in the zone as read (queue zones: not corrected).
    wait_s: float64[Z], seconds (queue zones): the wait of the guests boarding now, produced
        as wait_method says.
    wait_method: int8[Z], METHOD_MEASURED | METHOD_LITTLE | METHOD_NONE.
    dwell_p50_s, dwell_p90_s: float64[Z], seconds; queue zones: percentiles of measured waits,
        area zones: of dwells of visits that ended in the window.
    arrivals_per_min, throughput_per_min: float64[Z], visits begun / ended per minute (queue
        zones: corrected for the entry / exit read rate).
    wait_forecast_s: float64[Z], seconds, the wait of the guest boarding ``horizon_s`` from
        now (NaN during the first ``rate_window_s`` of a run).
    entry_read_rate, exit_read_rate: float64[Z] in [0, 1], capture-recapture estimates of the
        fraction of tags a queue's entry / exit reader reads; NaN for areas and until enough
        tags were read at both ends.
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
        for name in (*positive, "ble_stale_s", "min_read_rate", "read_rate_window_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not (np.isfinite(self.fifo_slack_s) and self.fifo_slack_s >= 0):
            raise ValueError(f"fifo_slack_s must be finite and >= 0, got {self.fifo_slack_s!r}")
        for name in ("ble_decay_db_per_s", "ble_margin_db", "ble_holdoff_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        if not 0 <= self.ble_alpha_min <= 1 or self.min_read_rate > 1:
            raise ValueError("ble_alpha_min and min_read_rate must be in [0, 1]")
        counts = ("fifo_witnesses", "min_measured_waits", "wait_recent", "history",
                  "min_recaptures")
        for name in (*counts, "ble_min_reads", "ble_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def ble_array(self) -> np.ndarray:
        """float64[6]: the BLE settings in the order ingest.ingest_reads expects."""
        return np.array(
            [
                self.ble_tau_s,
                self.ble_alpha_min,
                self.ble_stale_s,
                self.ble_decay_db_per_s,
                self.ble_holdoff_s,
                self.ble_margin_db,
            ],
            dtype=np.float64,
        )

    @property
    def evict_batch(self) -> int:
        """Tags evicted at once when the table is full: 1/64 of it, at least one."""
        return max(1, self.max_tags // 64)


def rate_span_s(rate_window_s: float, t_start: float, now: float) -> float:
    """Seconds that arrivals_per_min and throughput_per_min are averaged over.

    ``rate_window_s`` once the engine has run that long; before, the time since its first
    read or tick (there is no data before it, and dividing by the full window would read a
    fresh gateway's queue as barely moving, and its Little's-law wait as huge), but at least
    a tenth of the window so one early event is not read as a flood.
    """
    if not np.isfinite(t_start):
        return rate_window_s
    return float(min(rate_window_s, max(now - t_start, 0.1 * rate_window_s)))


def as_read_columns(
    ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read columns as contiguous float64 / uint64 / int32 / float32 arrays of equal length.

    A missing ``rssi`` becomes all NaN (no RSSI: RFID reads)."""
    ts = np.ascontiguousarray(ts, dtype=np.float64).reshape(-1)
    tag = np.ascontiguousarray(tag, dtype=np.uint64).reshape(-1)
    reader = np.ascontiguousarray(reader, dtype=np.int32).reshape(-1)
    n = ts.size
    if rssi is None:
        rssi = np.full(n, np.nan, dtype=np.float32)
    rssi = np.ascontiguousarray(rssi, dtype=np.float32).reshape(-1)
    if tag.size != n or reader.size != n or rssi.size != n:
        raise ValueError("ts, tag, reader (and rssi) must have the same length")
    return ts, tag, reader, rssi


class ZoneEngine:
    """Zone state for up to ``max_tags`` live tags; metrics on demand. Not thread-safe.

    Call ``ingest`` with each batch of reads and ``tick(now)`` once per tick. Time is any
    float64 seconds scale; it should not step (feed timestamps derived from a monotonic clock):
    reads older than their tag's last read are applied at that last read, and a ``now`` older
    than a previous one is replaced by the previous one, so a backward step freezes timeouts
    and windows until time catches up, and a forward step times out everyone at once.
    """

    def __init__(self, topo: Topology, **params: float) -> None:
        """``params``: any EngineParams field by name (max_tags, window_s, horizon_s, ...)."""
        self.topo = topo
        self.params = p = EngineParams(**params)  # type: ignore[arg-type]
        bits = table_bits(p.max_tags)
        self._shift = np.uint64(64 - bits)
        self._slot_keys = np.zeros(1 << bits, dtype=np.uint64)
        self._slot_rows = np.full(1 << bits, -1, dtype=np.int32)
        m = p.max_tags
        self._row_key = np.zeros(m, dtype=np.uint64)
        self._row_zone = np.full(m, -1, dtype=np.int32)
        self._row_state = np.zeros(m, dtype=np.int8)
        self._row_first = np.zeros(m, dtype=np.float64)
        self._row_last = np.zeros(m, dtype=np.float64)
        self._row_entry = np.zeros(m, dtype=np.int8)
        k = p.ble_candidates
        self._cand_reader = np.full((m, k), -1, dtype=np.int32)
        self._cand_s = np.zeros((m, k), dtype=np.float64)
        self._cand_t = np.zeros((m, k), dtype=np.float64)
        self._cand_n = np.zeros((m, k), dtype=np.int32)
        self._ble = p.ble_array()
        # Rows are handed out from the top of the stack: row 0 first.
        self._free_rows = np.arange(m - 1, -1, -1, dtype=np.int32)
        self._counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self._counters[C_FREE_TOP] = m
        z = topo.n_zones
        self._zone_count = np.zeros(z, dtype=np.int64)
        self._fifo_entry = np.zeros((z, p.fifo_witnesses), dtype=np.float64)
        self._fifo_n = np.zeros(z, dtype=np.int64)
        self._fifo_cutoff = np.full(z, -np.inf, dtype=np.float64)
        self._dep_t = np.zeros((z, p.history), dtype=np.float64)
        self._dep_dur = np.zeros((z, p.history), dtype=np.float64)
        self._dep_kind = np.zeros((z, p.history), dtype=np.int8)
        self._dep_entry = np.zeros((z, p.history), dtype=np.int8)
        self._dep_n = np.zeros(z, dtype=np.int64)
        self._arr_t = np.zeros((z, p.history), dtype=np.float64)
        self._arr_n = np.zeros(z, dtype=np.int64)
        self._q_first = np.zeros(m, dtype=np.float64)  # queue_order.queue_entries
        self._q_off = np.zeros(z + 1, dtype=np.int64)
        self._now = -np.inf
        self._t_start = np.inf  # earliest read or tick seen (see rate_span_s)
        self._ingest_compiled = False

    def ingest(
        self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None = None
    ) -> None:
        """Apply a batch of reads: ts float64[N] s, tag uint64[N] (0 = invalid), reader int32[N]
        (index into the topology), rssi float32[N] dBm or None (NaN = none). A finite RSSI at a
        PRESENCE reader makes the read a BLE advert (smoothed, zone by hysteresis)."""
        ts, tag, reader, rssi = as_read_columns(ts, tag, reader, rssi)
        if ts.size == 0 and self._ingest_compiled:
            return
        # The first call goes through the kernel even when empty: the agent warms up with an
        # empty batch so the kernel is compiled (or loaded from the cache) at start-up, not
        # on the first tick with reads.
        self._ingest_compiled = True
        if not np.all(np.isnan(ts)):
            self._t_start = min(self._t_start, float(np.nanmin(ts)))
        t = self.topo
        ingest_reads(
            ts,
            tag,
            reader,
            rssi,
            t.reader_zone,
            t.reader_role,
            t.zone_kind,
            np.float64(self.params.fifo_slack_s),
            np.int64(self.params.evict_batch),
            self._slot_keys,
            self._slot_rows,
            self._shift,
            self._row_key,
            self._row_zone,
            self._row_state,
            self._row_first,
            self._row_last,
            self._row_entry,
            self._cand_reader,
            self._cand_s,
            self._cand_t,
            self._cand_n,
            self._ble,
            np.int64(self.params.ble_min_reads),
            self._free_rows,
            self._counters,
            self._zone_count,
            self._fifo_entry,
            self._fifo_n,
            self._fifo_cutoff,
            self._dep_t,
            self._dep_dur,
            self._dep_kind,
            self._dep_entry,
            self._dep_n,
            self._arr_t,
            self._arr_n,
        )

    def tick(self, now: float) -> ZoneMetrics:
        """Decide departures due at ``now`` (float64 s), then return the metrics at ``now``."""
        now = float(now)
        if not np.isnan(now):
            self._now = max(self._now, now)
        now = self._now
        self._t_start = min(self._t_start, now)
        p, t = self.params, self.topo
        sweep_departures(
            np.float64(now),
            np.float64(p.exit_hold_s),
            t.zone_kind,
            t.zone_timeout_s,
            self._fifo_cutoff,
            self._slot_keys,
            self._slot_rows,
            self._shift,
            self._row_key,
            self._row_zone,
            self._row_state,
            self._row_first,
            self._row_last,
            self._free_rows,
            self._counters,
            self._zone_count,
            self._dep_t,
            self._dep_dur,
            self._dep_kind,
            self._dep_entry,
            self._dep_n,
            self._row_entry,
        )
        queue_entries(
            t.zone_kind,
            self._zone_count,
            self._row_state,
            self._row_zone,
            self._row_first,
            self._q_first,
            self._q_off,
        )
        out_f = np.empty((len(FLOAT_METRICS), t.n_zones), dtype=np.float64)
        method = np.zeros(t.n_zones, dtype=np.int8)
        samples = np.zeros(t.n_zones, dtype=np.int64)
        zone_metrics(
            np.float64(now),
            np.float64(p.window_s),
            np.float64(p.rate_window_s),
            np.float64(rate_span_s(p.rate_window_s, self._t_start, now)),
            np.float64(p.horizon_s),
            np.int64(p.min_measured_waits),
            np.int64(p.wait_recent),
            np.int64(p.min_recaptures),
            np.float64(p.min_read_rate),
            np.float64(p.read_rate_window_s),
            t.zone_kind,
            self._zone_count,
            self._dep_t,
            self._dep_dur,
            self._dep_kind,
            self._dep_entry,
            self._dep_n,
            self._arr_t,
            self._arr_n,
            self._fifo_entry,
            self._fifo_n,
            self._q_first,
            self._q_off,
            out_f,
            method,
            samples,
        )
        rows = dict(zip(FLOAT_METRICS, out_f, strict=True))
        return ZoneMetrics(
            wait_method=method,
            live_tags=self._zone_count.copy(),
            wait_samples=samples,
            now=now,
            **rows,
        )

    # -- introspection -------------------------------------------------------------------
    @property
    def live_tags(self) -> int:
        """Tags the engine currently remembers (in a zone, or held after a queue exit)."""
        return self.params.max_tags - int(self._counters[C_FREE_TOP])

    @property
    def evictions(self) -> int:
        """Tags dropped so far because the table was full."""
        return int(self._counters[C_EVICTIONS])

    @property
    def reads(self) -> int:
        """Reads applied so far."""
        return int(self._counters[C_READS])

    @property
    def bad_reads(self) -> int:
        """Reads ignored so far: NaN timestamp, tag 0, or a reader index out of range."""
        return int(self._counters[C_BAD_READS])

    @property
    def departures(self) -> np.ndarray:
        """int64[Z]: departures of every kind recorded per zone so far."""
        return self._dep_n.copy()
