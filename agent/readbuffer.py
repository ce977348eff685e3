"""The columnar read buffer between the reader callbacks and the kernels.

Reads arrive one batch at a time on the event loop; every tick the buffer hands the kernels
four contiguous numpy arrays and starts again. The columns are ``array.array``s while they
fill: appending to one costs a few tens of nanoseconds, where setting a numpy element from
Python costs ten times that, and this is the per-read path a Pi spends its CPU on. A read is
never dropped for lack of room (the arrays grow).

Columns: ``ts`` float64 seconds since the epoch, ``tag`` uint64 pseudonym, ``reader`` int32
index into the config's reader list, ``rssi`` float32 dBm (NaN where the protocol has none).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import numpy as np

_NAN_F32 = array("f", (math.nan,))  # repeated for a batch without RSSI


class ReadBuffer:
    def __init__(self, capacity: int = 4096) -> None:
        # ``capacity`` is kept for callers that size the buffer; array.array grows itself.
        del capacity
        self._new()

    def _new(self) -> None:
        self.ts = array("d")
        self.tag = array("Q")
        self.reader = array("i")
        self.rssi = array("f")

    @property
    def n(self) -> int:
        return len(self.ts)

    def append(self, ts: float, tag: int, reader: int, rssi: float | None) -> None:
        self.ts.append(ts)
        self.tag.append(tag)
        self.reader.append(reader)
        self.rssi.append(math.nan if rssi is None else rssi)

    def append_batch(self, ts: float, tags: Sequence[int], reader: int,
                     rssi: Sequence[float] | None) -> None:
        """One reader's batch, all stamped ``ts``: ``tags`` and ``rssi`` (NaN for none) of
        equal length, or ``rssi`` None when no read of the batch has one (all NaN)."""
        k = len(tags)
        self.ts.extend(array("d", (ts,)) * k)
        self.tag.extend(tags)
        self.reader.extend(array("i", (reader,)) * k)
        self.rssi.extend(_NAN_F32 * k if rssi is None else rssi)

    def extend(self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray,
               rssi: np.ndarray) -> None:
        """Append columns of equal length (already pseudonymised reads)."""
        self.ts.frombytes(np.ascontiguousarray(ts, np.float64).tobytes())
        self.tag.frombytes(np.ascontiguousarray(tag, np.uint64).tobytes())
        self.reader.frombytes(np.ascontiguousarray(reader, np.int32).tobytes())
        self.rssi.frombytes(np.ascontiguousarray(rssi, np.float32).tobytes())

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The buffered columns as numpy arrays, in arrival order; the buffer is emptied."""
        out = (np.frombuffer(self.ts, np.float64), np.frombuffer(self.tag, np.uint64),
               np.frombuffer(self.reader, np.int32), np.frombuffer(self.rssi, np.float32))
        self._new()  # the arrays handed out keep the old buffers alive
        return out
