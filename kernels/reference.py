"""ReferenceEngine: the plain-Python twin of ZoneEngine, written to be obviously correct.

Dicts, lists and deques, one read at a time, no numba. The tests feed both engines the same
calls and require the same metrics; semantics are documented in ingest.py, sweep.py and
window_stats.py. Slow by design: use it only as a test oracle.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .codes import DEP_EXIT, DEP_FIFO, DEP_MOVED, DEP_TIMEOUT, TAG_EXITED, TAG_IN
from .engine import EngineParams, ZoneMetrics, as_read_columns
from .topology import (
    KIND_AREA,
    METHOD_LITTLE,
    METHOD_MEASURED,
    METHOD_NONE,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    Topology,
)


@dataclass
class _Tag:
    zone: int
    state: int  # TAG_IN or TAG_EXITED
    first: float
    last: float
    entry: bool


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list."""
    xs = sorted(values)
    pos = q / 100.0 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class ReferenceEngine:
    """Same constructor, methods and results as ZoneEngine."""

    def __init__(self, topo: Topology, **params: float) -> None:
        self.topo = topo
        self.params = p = EngineParams(**params)  # type: ignore[arg-type]
        self.tags: dict[int, _Tag] = {}
        z = topo.n_zones
        self.zone_count = [0] * z
        self.departures: list[deque[tuple[float, float, int]]] = [
            deque(maxlen=p.history) for _ in range(z)
        ]
        self.arrivals: list[deque[float]] = [deque(maxlen=p.history) for _ in range(z)]
        self.fifo_entries: list[deque[float]] = [deque(maxlen=p.fifo_witnesses) for _ in range(z)]
        self.fifo_cutoff = [-math.inf] * z
        self.now = -math.inf
        self.evictions = 0
        self.reads = 0
        self.bad_reads = 0

    @property
    def live_tags(self) -> int:
        return len(self.tags)

    # -- ingest ----------------------------------------------------------------------------
    def ingest(
        self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None = None
    ) -> None:
        ts, tag, reader, _ = as_read_columns(ts, tag, reader, rssi)
        finite = [i for i in range(ts.size) if not math.isnan(ts[i])]
        self.bad_reads += ts.size - len(finite)
        for i in sorted(finite, key=lambda i: ts[i]):  # sorted() is stable
            self._read(float(ts[i]), int(tag[i]), int(reader[i]))

    def _read(self, t: float, key: int, r: int) -> None:
        topo = self.topo
        if key == 0 or not 0 <= r < topo.n_readers:
            self.bad_reads += 1
            return
        z = int(topo.reader_zone[r])
        role = int(topo.reader_role[r])
        area = topo.zone_kind[z] == KIND_AREA
        self.reads += 1
        tg = self.tags.get(key)
        if tg is None and len(self.tags) >= self.params.max_tags:
            self._evict()
        if tg is not None:
            t = max(t, tg.last)
            if tg.zone != z:
                if tg.state == TAG_IN:
                    prev_area = topo.zone_kind[tg.zone] == KIND_AREA
                    dur = tg.last - tg.first if prev_area else math.nan
                    self._depart(tg.zone, tg.last, dur, DEP_MOVED)
                tg = None

        if area or role != ROLE_EXIT:
            if tg is not None and (
                tg.state == TAG_IN or (tg.state == TAG_EXITED and role == ROLE_PRESENCE)
            ):
                tg.last = t
            else:
                self.tags[key] = _Tag(z, TAG_IN, t, t, role == ROLE_ENTRY and not area)
                self.zone_count[z] += 1
                self.arrivals[z].append(t)
        elif tg is not None and tg.state == TAG_IN:
            dur = math.nan
            if tg.entry:
                dur = t - tg.first
                self._fifo_witness(z, tg.first)
            self._depart(z, t, dur, DEP_EXIT, counted=False)
            self.zone_count[z] -= 1
            tg.state, tg.last = TAG_EXITED, t
        elif tg is not None:  # already exited: a repeated exit read
            tg.last = t
        else:
            self.departures[z].append((t, math.nan, DEP_EXIT))
            self.tags[key] = _Tag(z, TAG_EXITED, t, t, False)

    def _depart(self, z: int, t: float, dur: float, kind: int, counted: bool = True) -> None:
        self.departures[z].append((t, dur, kind))
        if counted:
            self.zone_count[z] -= 1

    def _fifo_witness(self, z: int, entry_t: float) -> None:
        w = self.fifo_entries[z]
        w.append(entry_t)
        if len(w) == self.params.fifo_witnesses:
            self.fifo_cutoff[z] = max(self.fifo_cutoff[z], min(w) - self.params.fifo_slack_s)

    def _evict(self) -> None:
        stalest = sorted(self.tags.items(), key=lambda kv: (kv[1].last, kv[0]))
        for key, tg in stalest[: self.params.evict_batch]:
            if tg.state == TAG_IN:
                self.zone_count[tg.zone] -= 1
            del self.tags[key]
            self.evictions += 1

    # -- tick ------------------------------------------------------------------------------
    def tick(self, now: float) -> ZoneMetrics:
        if not math.isnan(now):
            self.now = max(self.now, float(now))
        now = self.now
        kinds = self.topo.zone_kind
        for key, tg in list(self.tags.items()):
            area = kinds[tg.zone] == KIND_AREA
            if tg.state == TAG_IN:
                if not area and tg.first < self.fifo_cutoff[tg.zone]:
                    kind = DEP_FIFO
                elif now - tg.last > self.topo.zone_timeout_s[tg.zone]:
                    kind = DEP_TIMEOUT
                else:
                    continue
                self._depart(tg.zone, tg.last, tg.last - tg.first if area else math.nan, kind)
                del self.tags[key]
            elif now - tg.last > self.params.exit_hold_s:
                del self.tags[key]
        self.fifo_cutoff = [-math.inf] * len(self.fifo_cutoff)
        return self._metrics(now)

    def _metrics(self, now: float) -> ZoneMetrics:
        p = self.params
        nz = self.topo.n_zones
        out = {
            name: np.full(nz, np.nan)
            for name in (
                "queue_length",
                "occupancy",
                "wait_s",
                "dwell_p50_s",
                "dwell_p90_s",
                "arrivals_per_min",
                "throughput_per_min",
                "wait_forecast_s",
            )
        }
        method = np.zeros(nz, dtype=np.int8)
        samples = np.zeros(nz, dtype=np.int64)
        for z in range(nz):
            area = self.topo.zone_kind[z] == KIND_AREA
            served = sum(
                1
                for t, _, kind in self.departures[z]
                if t > now - p.rate_window_s and (area or kind == DEP_EXIT)
            )
            durs = [d for t, d, _ in self.departures[z] if t > now - p.window_s and d == d]
            arrived = sum(1 for t in self.arrivals[z] if t > now - p.rate_window_s)
            arrivals = arrived * 60.0 / p.rate_window_s
            throughput = served * 60.0 / p.rate_window_s
            count = float(self.zone_count[z])
            out["occupancy"][z] = count
            out["arrivals_per_min"][z] = arrivals
            out["throughput_per_min"][z] = throughput
            samples[z] = len(durs)
            if durs:
                out["dwell_p50_s"][z] = percentile(durs, 50)
                out["dwell_p90_s"][z] = percentile(durs, 90)
            if area:
                continue
            out["queue_length"][z] = count
            if len(durs) >= p.min_measured_waits:
                wait, method[z] = percentile(durs, 50), METHOD_MEASURED
            elif throughput > 0:
                wait, method[z] = count / (throughput / 60.0), METHOD_LITTLE
            elif count == 0:
                wait, method[z] = 0.0, METHOD_LITTLE
            else:
                wait, method[z] = math.nan, METHOD_NONE
            out["wait_s"][z] = wait
            lam, mu = arrivals / 60.0, throughput / 60.0
            projected = max(0.0, count + (lam - mu) * p.horizon_s)
            if math.isnan(wait):
                fc = math.nan
            elif mu > 0:
                fc = max(0.0, wait + (projected - count) / mu)
            else:
                fc = 0.0 if projected == 0 else math.nan
            out["wait_forecast_s"][z] = fc
        return ZoneMetrics(
            wait_method=method,
            live_tags=np.array(self.zone_count, dtype=np.int64),
            wait_samples=samples,
            now=now,
            **out,
        )
