"""Public codes and the zone/reader topology the kernels are configured with.

The agent builds a :class:`Topology` from its config (reader ids and zone ids become indices);
the kernels only ever see these plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reader roles (int8). A queue zone has ENTRY and EXIT readers; an area zone PRESENCE readers.
ROLE_PRESENCE = 0
ROLE_ENTRY = 1
ROLE_EXIT = 2

# Zone kinds (int8).
KIND_QUEUE = 0
KIND_AREA = 1

# How ZoneMetrics.wait_s was produced (int8).
METHOD_NONE = 0  # no estimate (wait_s is NaN)
METHOD_MEASURED = 1  # median of waits measured by entry/exit re-identification
METHOD_LITTLE = 2  # Little's law: queue_length / throughput
# A lower bound: the line was there before the engine started (fifo_witnesses exits read,
# but no guest it saw enter has boarded yet): the guests boarding now waited at least since
# the start.
METHOD_AT_LEAST = 3

# How ZoneMetrics.queue_length was produced (int8).
QL_NONE = 0  # not a queue zone (queue_length is NaN)
QL_UNCORRECTED = 1  # tags queueing as read: too few recaptures for a read-rate correction
QL_CORRECTED = 2  # tags queueing divided by the (shrunk, conservative) entry read rate
# A lower bound while warming up: the line was there before the engine started, and the guests
# who entered before it are not counted (never read at the entry while it watched) until the
# first guests who entered after the start board; see METHOD_AT_LEAST.
QL_WARMING = 3


def _as(name: str, value: object, dtype: type, ndim: int = 1) -> np.ndarray:
    # A private copy: the frozen topology must not share (or freeze) the caller's buffers.
    arr: np.ndarray = np.array(value, dtype=dtype, copy=True, order="C")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    return arr


def _optional(
    name: str, value: object, dtype: type, n: int, default: float
) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=dtype)
    arr = _as(name, value, dtype)
    if arr.size != n:
        raise ValueError(f"{name} must have {n} values, got {arr.size}")
    return arr


@dataclass(frozen=True)
class Topology:
    """Readers and zones as index arrays (R readers, Z zones).

    reader_zone: int32[R], index of the zone each reader belongs to (0 <= z < Z).
    reader_role: int8[R], ROLE_PRESENCE | ROLE_ENTRY | ROLE_EXIT.
    zone_kind: int8[Z], KIND_QUEUE | KIND_AREA.
    zone_timeout_s: float64[Z], seconds a tag may go unseen before it is decided to have left
        (the departure is then dated at its last read). Queues need a long timeout because
        tags in a queue are only read at its ends; areas with presence readers a short one.

    Optional (None: the default for every reader / zone):

    reader_rssi_floor: float64[R] dBm; a read with a finite RSSI below its reader's floor is
        ignored (counted in ``ZoneEngine.filtered_reads``); default -inf (no floor). Reads
        without RSSI (NaN, RFID) are never filtered.
    reader_min_reads: int32[R] >= 1; a read that would change a tag's state (join a zone,
        move to another, exit a queue) takes effect only at the ``min_reads``-th read in a
        row of the tag at that reader (within the zone's timeout), dated at the first of
        them; default 1 (every read counts). A passer-by read once never joins.
    zone_missed_reads: float64[Z] > 0; a tag leaves a zone once unseen for this many of its
        own expected read intervals (an EWMA of the intervals between its presence reads),
        but never later than ``zone_timeout_s``; default 4.0. A tag with no interval yet (a
        queue tag read once at the entry) keeps the zone timeout.

    Arrays are copied to contiguous arrays of exactly these dtypes; inconsistent input raises
    ValueError.
    """

    reader_zone: np.ndarray
    reader_role: np.ndarray
    zone_kind: np.ndarray
    zone_timeout_s: np.ndarray
    # None in the constructor means the default; after __post_init__ always an array.
    reader_rssi_floor: np.ndarray = None  # type: ignore[assignment]
    reader_min_reads: np.ndarray = None  # type: ignore[assignment]
    zone_missed_reads: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        rz = _as("reader_zone", self.reader_zone, np.int32)
        rr = _as("reader_role", self.reader_role, np.int8)
        zk = _as("zone_kind", self.zone_kind, np.int8)
        zt = _as("zone_timeout_s", self.zone_timeout_s, np.float64)
        if rz.shape != rr.shape:
            raise ValueError(f"reader_zone {rz.shape} and reader_role {rr.shape} differ")
        if zk.shape != zt.shape:
            raise ValueError(f"zone_kind {zk.shape} and zone_timeout_s {zt.shape} differ")
        if zk.size == 0:
            raise ValueError("a topology needs at least one zone")
        if rz.size and (rz.min() < 0 or rz.max() >= zk.size):
            raise ValueError(f"reader_zone values must be in [0, {zk.size})")
        if rr.size and not np.isin(rr, (ROLE_PRESENCE, ROLE_ENTRY, ROLE_EXIT)).all():
            raise ValueError("reader_role values must be ROLE_PRESENCE, ROLE_ENTRY or ROLE_EXIT")
        if not np.isin(zk, (KIND_QUEUE, KIND_AREA)).all():
            raise ValueError("zone_kind values must be KIND_QUEUE or KIND_AREA")
        if not (np.isfinite(zt) & (zt > 0)).all():
            raise ValueError("zone_timeout_s values must be finite and > 0")
        n_r, n_z = rz.size, zk.size
        rf = _optional("reader_rssi_floor", self.reader_rssi_floor, np.float64, n_r, -np.inf)
        rm = _optional("reader_min_reads", self.reader_min_reads, np.int32, n_r, 1)
        zm = _optional("zone_missed_reads", self.zone_missed_reads, np.float64, n_z, 4.0)
        if np.isnan(rf).any() or (rf == np.inf).any():
            raise ValueError("reader_rssi_floor values must be numbers or -inf (no floor)")
        if (rm < 1).any():
            raise ValueError("reader_min_reads values must be >= 1")
        if not (np.isfinite(zm) & (zm > 0)).all():
            raise ValueError("zone_missed_reads values must be finite and > 0")
        for name, arr in (
            ("reader_zone", rz),
            ("reader_role", rr),
            ("zone_kind", zk),
            ("zone_timeout_s", zt),
            ("reader_rssi_floor", rf),
            ("reader_min_reads", rm),
            ("zone_missed_reads", zm),
        ):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_readers(self) -> int:
        return int(self.reader_zone.size)

    @property
    def n_zones(self) -> int:
        return int(self.zone_kind.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by field name (defaults filled in)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
