"""Internal state codes shared by the compiled kernels and the reference twin.

Tag states (int8, one per tag row):
    TAG_FREE: the row holds no tag.
    TAG_IN: the tag is in its zone (in the queue, or present in the area).
    TAG_EXITED: the tag was just read leaving a queue through its exit reader; it is kept for
        ``exit_hold_s`` so that repeated reads by the exit reader do not count as new exits.

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

DEP_EXIT = 0
DEP_TIMEOUT = 1
DEP_FIFO = 2
DEP_MOVED = 3

# Slots of the engine's int64 counter array.
C_FREE_TOP = 0  # number of free tag rows on the free stack
C_READS = 1  # reads applied
C_BAD_READS = 2  # reads ignored: tag 0, unknown reader index, or NaN timestamp
C_EVICTIONS = 3  # tags dropped because the table was full
C_DEPARTURES = 4  # departures of every kind
N_COUNTERS = 5
