"""The columnar read buffer between the reader callbacks and the kernels.

Reads arrive one batch at a time on the event loop; every tick the buffer hands the kernels
four contiguous arrays and starts again. Arrays are preallocated and reused; when a burst
outgrows them they double (a read is never dropped for lack of room).

Columns: ``ts`` float64 seconds since the epoch, ``tag`` uint64 pseudonym, ``reader`` int32
index into the config's reader list, ``rssi`` float32 dBm (NaN where the protocol has none).
"""

from __future__ import annotations

import numpy as np


class ReadBuffer:
    def __init__(self, capacity: int = 4096) -> None:
        self._alloc(max(16, capacity))
        self.n = 0

    def _alloc(self, cap: int) -> None:
        self.ts = np.empty(cap, np.float64)
        self.tag = np.empty(cap, np.uint64)
        self.reader = np.empty(cap, np.int32)
        self.rssi = np.empty(cap, np.float32)

    @property
    def capacity(self) -> int:
        return int(self.ts.shape[0])

    def append(self, ts: float, tag: int, reader: int, rssi: float | None) -> None:
        if self.n == self.capacity:
            self._grow()
        i = self.n
        self.ts[i] = ts
        self.tag[i] = tag
        self.reader[i] = reader
        self.rssi[i] = np.nan if rssi is None else rssi
        self.n = i + 1

    def extend(self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray,
               rssi: np.ndarray) -> None:
        """Append columns of equal length (already pseudonymised reads)."""
        k = int(ts.shape[0])
        while self.n + k > self.capacity:
            self._grow()
        j = self.n
        self.ts[j:j + k] = ts
        self.tag[j:j + k] = tag
        self.reader[j:j + k] = reader
        self.rssi[j:j + k] = rssi
        self.n = j + k

    def _grow(self) -> None:
        old: tuple[np.ndarray, ...] = (self.ts, self.tag, self.reader, self.rssi)
        self._alloc(self.capacity * 2)
        new: tuple[np.ndarray, ...] = (self.ts, self.tag, self.reader, self.rssi)
        for dst, src in zip(new, old, strict=True):
            dst[: self.n] = src[: self.n]

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the buffered columns, in arrival order; the buffer is emptied."""
        n = self.n
        out = (self.ts[:n].copy(), self.tag[:n].copy(), self.reader[:n].copy(),
               self.rssi[:n].copy())
        self.n = 0
        return out
