"""NumpyIngest: the ingest path written as vectorised numpy, the baseline of the speed bench.

Not used by the agent. It exists so ``bench/`` can report how much the compiled kernel buys
over the best plain-numpy version of the same per-tag state update, rather than only over the
one-read-at-a-time Python twin.

How a batch is applied, without a Python loop over reads:

1. drop bad reads (NaN time, tag 0, unknown reader; counted as ZoneEngine counts them) and
   stable-sort the rest by time, unless already sorted;
2. group the reads by tag with a stable argsort of the keys, so each tag's reads stay in time
   order;
3. look every distinct tag up in an open-addressing hash table (uint64 key -> row; the same
   Fibonacci hashing and linear probing as ``hashtable.py``) probing all keys at once, one
   vectorised step per probe distance; unseen tags are inserted the same way, with
   ``np.unique`` settling which of several keys wanting one empty slot gets it;
4. per read, the previous zone is the preceding read of the same tag (or the tag's stored zone
   for its first read in the batch); a read whose zone differs starts a visit. Arrivals and
   moved-out departures are counted per zone with ``np.bincount``; each tag's final visit
   starts at its last zone change (``np.maximum.accumulate`` over change positions).

Semantics implemented (and held to ZoneEngine by tests/test_kernels_numpy.py): RFID reads at
PRESENCE and ENTRY readers in area and queue zones. Per tag: the zone, first read of the
current visit, last read (a read older than the tag's last read is applied at that last
read), whether the visit began at a queue's entry reader; per zone: tags present, arrivals,
and departures of tags that moved to another zone. Not implemented: EXIT readers (exits,
measured waits, FIFO witnesses), BLE RSSI smoothing (``rssi`` is ignored), departure and
arrival timestamps (only counted), timeouts and ``tick``, deletion and eviction (the table
holds ``max_tags`` tags, then ``ingest`` raises).
"""

from __future__ import annotations

import numpy as np

from .engine import as_read_columns
from .hashtable import table_bits
from .topology import KIND_QUEUE, ROLE_ENTRY, Topology

_FIB = np.uint64(0x9E3779B97F4A7C15)  # same multiplier as hashtable.py


class NumpyIngest:
    """Per-tag zone state updated by vectorised numpy; ``ingest`` has ZoneEngine's signature.

    State (arrays indexed by row, rows handed out in order of first read):
    ``row_key`` uint64, ``row_zone`` int32 (-1: no row), ``row_first`` / ``row_last`` float64
    seconds, ``row_entry`` bool. Per zone (int64[Z]): ``zone_count`` tags present,
    ``arrivals`` visits begun, ``moved`` departures to another zone.
    """

    def __init__(self, topo: Topology, max_tags: int = 1 << 17) -> None:
        if max_tags < 1:
            raise ValueError("max_tags must be >= 1")
        self.topo = topo
        self.max_tags = int(max_tags)
        bits = table_bits(max_tags)  # at most half full, as in ZoneEngine
        self._shift = np.uint64(64 - bits)
        self._mask = np.int64((1 << bits) - 1)
        self._slot_keys = np.zeros(1 << bits, dtype=np.uint64)
        self._slot_rows = np.full(1 << bits, -1, dtype=np.int64)
        self.row_key = np.zeros(max_tags, dtype=np.uint64)
        self.row_zone = np.full(max_tags, -1, dtype=np.int32)
        self.row_first = np.zeros(max_tags, dtype=np.float64)
        self.row_last = np.zeros(max_tags, dtype=np.float64)
        self.row_entry = np.zeros(max_tags, dtype=bool)
        self.n_rows = 0
        z = topo.n_zones
        self.zone_count = np.zeros(z, dtype=np.int64)
        self.arrivals = np.zeros(z, dtype=np.int64)
        self.moved = np.zeros(z, dtype=np.int64)
        self.reads = 0
        self.bad_reads = 0
        # A read's zone is that of its reader; a visit begun there has an entry time only at
        # a queue's entry reader.
        self._entry_reader = (topo.reader_role == ROLE_ENTRY) & (
            topo.zone_kind[topo.reader_zone] == KIND_QUEUE
        )

    @property
    def live_tags(self) -> int:
        """Tags remembered (no timeouts here, so every tag ever read)."""
        return self.n_rows

    # -- hash table -------------------------------------------------------------------------
    def _home(self, keys: np.ndarray) -> np.ndarray:
        # uint64 multiplication wraps modulo 2**64, which is the point of Fibonacci hashing.
        return ((keys * _FIB) >> self._shift).astype(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (distinct, non-zero), -1 where absent: all keys probe in step."""
        rows = np.full(keys.size, -1, dtype=np.int64)
        pos = self._home(keys)
        todo = np.arange(keys.size)
        while todo.size:
            p = pos[todo]
            k = self._slot_keys[p]
            hit = k == keys[todo]
            rows[todo[hit]] = self._slot_rows[p[hit]]
            go_on = ~hit & (k != 0)  # an empty slot ends the probe: absent
            todo = todo[go_on]
            pos[todo] = (p[go_on] + 1) & self._mask
        return rows

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """Give ``keys`` (distinct, absent) new rows and table slots; return the rows."""
        n = keys.size
        if self.n_rows + n > self.max_tags:
            raise OverflowError(f"NumpyIngest holds at most {self.max_tags} tags (no eviction)")
        rows = np.arange(self.n_rows, self.n_rows + n, dtype=np.int64)
        self.n_rows += n
        self.row_key[rows] = keys
        pos = self._home(keys)
        todo = np.arange(n)
        while todo.size:
            p = pos[todo]
            empty = self._slot_keys[p] == 0
            # Several keys may want the same empty slot: the first of each slot takes it.
            slots, first = np.unique(p[empty], return_index=True)
            won = todo[empty][first]
            self._slot_keys[slots] = keys[won]
            self._slot_rows[slots] = rows[won]
            placed = np.zeros(todo.size, dtype=bool)
            placed[np.flatnonzero(empty)[first]] = True
            todo = todo[~placed]
            pos[todo] = (p[~placed] + 1) & self._mask
        return rows

    # -- ingest -----------------------------------------------------------------------------
    def ingest(
        self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None = None
    ) -> None:
        """Apply a batch: ts float64[N] s, tag uint64[N] (0 = invalid), reader int32[N];
        ``rssi`` is accepted for signature compatibility and ignored (RFID semantics)."""
        ts, tag, reader, _ = as_read_columns(ts, tag, reader, rssi)
        n_readers = self.topo.n_readers
        ok = ~np.isnan(ts) & (tag != 0) & (reader >= 0) & (reader < n_readers)
        idx = np.flatnonzero(ok)
        self.bad_reads += ts.size - idx.size
        if idx.size == 0:
            return
        self.reads += idx.size
        t = ts[idx]
        if np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            idx, t = idx[order], t[order]

        # Group by tag; the stable sort keeps each tag's reads in time order.
        by_tag = np.argsort(tag[idx], kind="stable")
        idx, t = idx[by_tag], t[by_tag]
        keys = tag[idx]
        r = reader[idx]
        zone = self.topo.reader_zone[r]
        n = keys.size
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        ends = np.append(starts[1:], n) - 1
        ukeys = keys[starts]

        rows = self._find(ukeys)
        new = rows < 0
        if new.any():
            rows[new] = self._insert(ukeys[new])
            self.row_zone[rows[new]] = -1
            self.row_last[rows[new]] = -np.inf
        sizes = ends - starts + 1
        old_zone = self.row_zone[rows]
        # A read older than its tag's last read counts at that last read; within a tag the
        # reads are time-ordered, so clamping at the stored last read is enough.
        t = np.maximum(t, np.repeat(self.row_last[rows], sizes))

        prev = np.empty(n, dtype=np.int32)
        prev[1:] = zone[:-1]
        prev[starts] = old_zone
        change = zone != prev
        n_z = self.topo.n_zones
        came = np.bincount(zone[change], minlength=n_z)
        left_from = prev[change & (prev >= 0)]
        went = np.bincount(left_from, minlength=n_z)
        self.arrivals += came
        self.moved += went
        self.zone_count += came - went

        # Each tag's current visit began at its last zone change, if it had one in the batch.
        last_change = np.maximum.accumulate(np.where(change, np.arange(n), -1))[ends]
        moved = last_change >= starts
        mrows, at = rows[moved], last_change[moved]
        self.row_zone[mrows] = zone[at]
        self.row_first[mrows] = t[at]
        self.row_entry[mrows] = self._entry_reader[r[at]]
        self.row_last[rows] = t[ends]

    # -- introspection ------------------------------------------------------------------------
    def tag_state(self) -> dict[int, tuple[int, float, float, bool]]:
        """{tag: (zone, first_s, last_s, entered_at_entry_reader)} for every remembered tag."""
        m = self.n_rows
        return {
            int(k): (int(z), float(f), float(last), bool(e))
            for k, z, f, last, e in zip(
                self.row_key[:m],
                self.row_zone[:m],
                self.row_first[:m],
                self.row_last[:m],
                self.row_entry[:m],
                strict=True,
            )
        }
