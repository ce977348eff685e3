"""Internal state codes shared by the compiled kernels and the reference twin.

Tag states (int8, one per tag row):
    TAG_FREE: the row holds no tag.
    TAG_IN: the tag is in its zone (in the queue, or present in the area).
    TAG_EXITED: the tag was just read leaving a queue through its exit reader; it is kept for
        ``exit_hold_s`` so that repeated reads by the exit reader do not count as new exits.
    TAG_PENDING: the tag is in no zone and has fewer reads than its reader's ``min_reads``
        (Topology.reader_min_reads); forgotten once unseen for the zone's timeout.

Departure kinds (int8, one per departure in a zone's history ring):
    DEP_EXIT: read at the queue's exit reader (the only kind counted as queue throughput).
    DEP_TIMEOUT: unseen longer than the zone timeout; dated at the last read.
    DEP_FIFO: cleared from a queue because a tag that entered well after it has exited.
    DEP_MOVED: read in another zone; dated at its last read here.
"""

from __future__ import annotations

TAG_FREE = 0
TAG_IN = 1
TAG_EXITED = 2
TAG_PENDING = 3

DEP_EXIT = 0
DEP_TIMEOUT = 1
DEP_FIFO = 2
DEP_MOVED = 3

# Bits of a queue departure's ``dep_entry`` (history.py):
DEP_OBSERVED = 1  # the visit was read at the entry while the engine watched
DEP_ONE_IN = 2  # ... by a single read there (a stray passer-by is read once)
DEP_ONE_OUT = 4  # an exit read once so far (cleared by a repeat read while the tag is held)

# Slots of the engine's int64 counter array.
C_FREE_TOP = 0  # number of free tag rows on the free stack
C_READS = 1  # reads applied
C_BAD_READS = 2  # reads ignored: tag 0, unknown reader index, or NaN timestamp
C_EVICTIONS = 3  # tags dropped because the table was full
C_DEPARTURES = 4  # departures of every kind
C_FILTERED = 5  # reads ignored because their RSSI was below the reader's floor
N_COUNTERS = 6

# A tag's expected read interval is the EWMA of its intervals plus this many EWMAs of their
# absolute deviation (the way TCP sets its retransmission timer): lost adverts make the
# intervals of a beacon scatter, and a mean alone would time it out in every long gap.
IVL_DEV_WEIGHT = 2.0

# Rows of the float64[N_FLOAT_METRICS, Z] array window_stats.zone_metrics fills: each metric
# is named once here, and engine.FLOAT_METRICS (the ZoneMetrics field of each row) is derived
# from these names, so a row number never travels in step with a tuple elsewhere.
M_QUEUE_LENGTH = 0
M_OCCUPANCY = 1
M_WAIT = 2
M_DWELL_P50 = 3
M_DWELL_P90 = 4
M_ARRIVALS = 5
M_THROUGHPUT = 6
M_FORECAST = 7
M_ENTRY_READ_RATE = 8
M_EXIT_READ_RATE = 9
M_WAIT_JOINING = 10
M_ENTRY_READ_RATE_SD = 11
M_LENGTH_FACTOR = 12
N_FLOAT_METRICS = 13

# ZoneMetrics field of each M_* row.
FLOAT_METRIC_ROWS = {
    "queue_length": M_QUEUE_LENGTH,
    "occupancy": M_OCCUPANCY,
    "wait_s": M_WAIT,
    "dwell_p50_s": M_DWELL_P50,
    "dwell_p90_s": M_DWELL_P90,
    "arrivals_per_min": M_ARRIVALS,
    "throughput_per_min": M_THROUGHPUT,
    "wait_forecast_s": M_FORECAST,
    "entry_read_rate": M_ENTRY_READ_RATE,
    "exit_read_rate": M_EXIT_READ_RATE,
    "wait_joining_s": M_WAIT_JOINING,
    "entry_read_rate_sd": M_ENTRY_READ_RATE_SD,
    "queue_length_factor": M_LENGTH_FACTOR,
}
FLOAT_METRICS = tuple(sorted(FLOAT_METRIC_ROWS, key=FLOAT_METRIC_ROWS.__getitem__))
assert len(FLOAT_METRICS) == N_FLOAT_METRICS and all(
    FLOAT_METRIC_ROWS[name] == i for i, name in enumerate(FLOAT_METRICS)
)
