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


def _as(name: str, value: object, dtype: type, ndim: int = 1) -> np.ndarray:
    # A private copy: the frozen topology must not share (or freeze) the caller's buffers.
    arr: np.ndarray = np.array(value, dtype=dtype, copy=True, order="C")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
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

    Arrays are copied to contiguous arrays of exactly these dtypes; inconsistent input raises
    ValueError.
    """

    reader_zone: np.ndarray
    reader_role: np.ndarray
    zone_kind: np.ndarray
    zone_timeout_s: np.ndarray

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
        for name, arr in (
            ("reader_zone", rz),
            ("reader_role", rr),
            ("zone_kind", zk),
            ("zone_timeout_s", zt),
        ):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_readers(self) -> int:
        return int(self.reader_zone.size)

    @property
    def n_zones(self) -> int:
        return int(self.zone_kind.size)
