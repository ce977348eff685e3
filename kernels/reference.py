"""ReferenceEngine: the plain-Python twin of ZoneEngine, written to be obviously correct.

Dicts, lists and deques, one read at a time, no numba. The tests feed both engines the same
calls and require the same metrics; semantics are documented in ingest.py, sweep.py and
window_stats.py. Slow by design: use it only as a test oracle.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codes import (
    DEP_EXIT,
    DEP_FIFO,
    DEP_MOVED,
    DEP_TIMEOUT,
    IVL_DEV_WEIGHT,
    TAG_EXITED,
    TAG_IN,
    TAG_PENDING,
)
from .engine import (
    FLOAT_METRICS,
    SNAPSHOT_FORMAT,
    EngineParams,
    SnapshotMismatch,
    ZoneMetrics,
    as_read_columns,
    fingerprint,
    rate_span_s,
)
from .topology import (
    KIND_AREA,
    METHOD_AT_LEAST,
    METHOD_LITTLE,
    METHOD_MEASURED,
    METHOD_NONE,
    QL_CORRECTED,
    QL_NONE,
    QL_UNCORRECTED,
    QL_WARMING,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    Topology,
)


@dataclass
class _Tag:
    zone: int
    state: int  # TAG_IN, TAG_EXITED or TAG_PENDING (in no zone yet: short of min_reads)
    first: float
    last: float
    entry: bool
    ivl: float = math.nan  # EWMA of the intervals between presence reads in this visit
    dev: float = 0.0  # EWMA of their absolute deviation
    pend_key: int = -1  # reads in a row toward a transition (reader, or R + zone for BLE)
    pend_n: int = 0
    pend_t: float = 0.0  # ... the first of them
    nreads: int = 1  # reads at the reader that made the state (entry in line; exit if held)
    dep: list[Any] | None = None  # a held tag's exit record (its one_out flag)
    exits0: int = 0  # the zone's exits read when this visit began


def read_rate_est(both: int, seen: float, p: EngineParams) -> tuple[float, float, float]:
    """(estimate shrunk toward 1, standard error, rate a count is divided by)."""
    n = seen + p.read_rate_prior
    rate = (both + p.read_rate_prior) / n
    sd = math.sqrt(rate * (1.0 - rate) / n)
    return rate, sd, max(min(1.0, rate + p.read_rate_z * sd), p.min_read_rate)


def stray_count(ones: int, n: int, both_ones: int, both: int, z: float) -> float:
    """Strays among n one-ended tags, ``ones`` of them read once (window_stats.stray_count)."""
    if both <= 0 or both_ones >= both or n <= 0:
        return 0.0
    s = both_ones / both
    est = (ones - s * n) / (1.0 - s)
    var = (n * s * (1.0 - s) + n * n * s * (1.0 - s) / both) / ((1.0 - s) * (1.0 - s))
    return min(max(0.0, est - z * math.sqrt(var)), float(ones))


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
        # BLE candidates per remembered tag: K fixed slots of [reader (-1 = unused), smoothed
        # dBm, last advert s, adverts]; they outlive visits but not the tag's memory.
        self.cands: dict[int, list[list[float]]] = {}
        z = topo.n_zones
        self.zone_count = [0] * z
        # [t, dur, kind, read at the entry (observed), ... once, exit read once so far]
        self.departures: list[deque[list[Any]]] = [
            deque(maxlen=p.history) for _ in range(z)
        ]
        self.arrivals: list[deque[float]] = [deque(maxlen=p.history) for _ in range(z)]
        self.fifo_entries: list[deque[float]] = [deque(maxlen=p.fifo_witnesses) for _ in range(z)]
        self.fifo_cutoff = [-math.inf] * z
        self.rr_from = [math.inf] * z  # read rates count departures from here (or <= gap_lo)
        self.rr_seen = [0] * z  # measured exits of guests who entered while watched
        self.min_wait = [math.inf] * z  # shortest wait with <= walk_ahead exits in it (walk)
        self.zone_exits = [0] * z  # exits read ever
        self.capacity = [[math.nan, math.nan] for _ in range(z)]  # service on a busy line, when
        self.now = -math.inf
        self.t_start = math.inf  # earliest read or tick seen (see rate_span_s)
        self.t_seen = -math.inf  # latest read seen
        self.obs_start = -math.inf
        self.gap_lo = -math.inf
        self.gap_hi = -math.inf
        self.evictions = 0
        self.reads = 0
        self.bad_reads = 0
        self.filtered_reads = 0
        self._fingerprint = fingerprint(topo, p)

    @property
    def live_tags(self) -> int:
        return len(self.tags)

    # -- ingest ----------------------------------------------------------------------------
    def ingest(
        self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray, rssi: np.ndarray | None = None
    ) -> None:
        ts, tag, reader, rssi = as_read_columns(ts, tag, reader, rssi)
        finite = [i for i in range(ts.size) if not math.isnan(ts[i])]
        if finite:
            self.t_start = min(self.t_start, min(float(ts[i]) for i in finite))
            self.t_seen = max(self.t_seen, max(float(ts[i]) for i in finite))
        self.bad_reads += ts.size - len(finite)
        for i in sorted(finite, key=lambda i: ts[i]):  # sorted() is stable
            self._read(float(ts[i]), int(tag[i]), int(reader[i]), float(rssi[i]))

    def _read(self, t: float, key: int, r: int, rssi: float) -> None:
        topo, p = self.topo, self.params
        if key == 0 or not 0 <= r < topo.n_readers:
            self.bad_reads += 1
            return
        if rssi < topo.reader_rssi_floor[r]:  # never for NaN (no RSSI)
            self.filtered_reads += 1
            return
        z = int(topo.reader_zone[r])
        role = int(topo.reader_role[r])
        self.reads += 1
        tg = self.tags.get(key)
        if tg is None and key not in self.cands and len(self.cands) >= p.max_tags:
            self._evict()
        if tg is not None:
            t = max(t, tg.last)
        if key not in self.cands:
            self.cands[key] = [[-1, 0.0, 0.0, 0] for _ in range(p.ble_candidates)]
        state = tg.state if tg is not None and tg.state != TAG_PENDING else None
        ble_read = role == ROLE_PRESENCE and not math.isnan(rssi)
        if ble_read:
            here = tg.zone if tg is not None and state == TAG_IN else -1
            self._ble_observe(self.cands[key], r, t, rssi, here)
            z = self._ble_zone(self.cands[key], t, here)
        area = topo.zone_kind[z] == KIND_AREA
        queue_exit = not area and role == ROLE_EXIT
        same = tg is not None and state is not None and tg.zone == z
        if queue_exit:
            refresh = same and state == TAG_EXITED
        else:
            refresh = same and (state == TAG_IN or (state == TAG_EXITED and role == ROLE_PRESENCE))
        if tg is not None and refresh:
            if state == TAG_IN and (area or role == ROLE_PRESENCE) and t > tg.last:
                if math.isnan(tg.ivl):
                    tg.ivl, tg.dev = topo.zone_timeout_s[z] / topo.zone_missed_reads[z], 0.0
                err = t - tg.last - tg.ivl
                tg.ivl += p.interval_alpha * err
                tg.dev += p.interval_alpha * (abs(err) - tg.dev)
            if not area:
                if state == TAG_IN and role == ROLE_ENTRY:
                    tg.nreads += 1
                elif queue_exit:
                    tg.nreads += 1
                    if tg.nreads == 2 and tg.dep is not None:
                        tg.dep[5] = False  # (harmless once the ring has dropped it)
            tg.last = t
            tg.pend_key = -1
            return

        t0 = t
        need = int(topo.reader_min_reads[r])
        if need > 1:
            pk = topo.n_readers + z if ble_read else r
            if tg is None:
                tg = self.tags[key] = _Tag(z, TAG_PENDING, t, t, False)
            if tg.pend_key == pk and t - tg.pend_t <= topo.zone_timeout_s[z]:
                tg.pend_n += 1
            else:
                tg.pend_key, tg.pend_n, tg.pend_t = pk, 1, t
            if tg.pend_n < need:
                if state is None:
                    tg.state, tg.zone, tg.last = TAG_PENDING, z, t
                return
            t0 = tg.pend_t
        if tg is not None:
            tg.pend_key = -1
        if tg is not None and state is not None and tg.zone != z:
            if state == TAG_IN:
                if topo.zone_kind[tg.zone] == KIND_AREA:
                    self._depart(tg.zone, tg.last, tg.last - tg.first, DEP_MOVED, False)
                else:
                    obs = self._observed(tg)
                    self._depart(tg.zone, t0, math.nan, DEP_MOVED, obs, obs and tg.nreads == 1)
            state = None

        if not queue_exit:  # a new visit
            self.tags[key] = _Tag(z, TAG_IN, t0, t, role == ROLE_ENTRY and not area,
                                  nreads=max(need, 1), exits0=self.zone_exits[z])
            self.zone_count[z] += 1
            self.arrivals[z].append(t0)
        elif tg is not None and state == TAG_IN:
            dur = math.nan
            entry = self._observed(tg)
            if tg.entry:
                dur = t0 - tg.first
                if self.zone_exits[z] - tg.exits0 <= p.walk_ahead:
                    self.min_wait[z] = min(self.min_wait[z], dur)
                self._fifo_witness(z, tg.first)
                if entry:
                    self.rr_seen[z] += 1
                    if self.rr_seen[z] == p.fifo_witnesses:
                        self.rr_from[z] = t0
            tg.dep = self._depart(z, t0, dur, DEP_EXIT, entry, entry and tg.nreads == 1,
                                  need <= 1)
            tg.state, tg.last, tg.nreads = TAG_EXITED, t, max(need, 1)
            self.zone_exits[z] += 1
        else:  # seen only at the exit
            rec = [t0, math.nan, DEP_EXIT, False, False, need <= 1]
            self.departures[z].append(rec)
            self.zone_exits[z] += 1
            self.tags[key] = _Tag(z, TAG_EXITED, t0, t, False, nreads=max(need, 1), dep=rec)

    def _observed(self, tg: _Tag) -> bool:
        """Read at the entry while the engine watched (counts for the read rates)."""
        return tg.entry and tg.first >= self.obs_start

    def _score(self, c: list[float], t: float) -> float:
        p = self.params
        return c[1] - p.ble_decay_db_per_s * max(0.0, t - c[2] - p.ble_holdoff_s)

    def _ble_observe(self, cands: list[list[float]], r: int, t: float, x: float, here: int) -> None:
        p = self.params
        for c in cands:
            if c[0] == r:
                dt = t - c[2]
                if dt > p.ble_stale_s:
                    c[1], c[3] = x, 1
                else:
                    alpha = max(p.ble_alpha_min, 1.0 - math.exp(-dt / p.ble_tau_s))
                    c[1] += alpha * (x - c[1])
                    c[3] += 1
                c[2] = t
                return
        free = [c for c in cands if c[0] < 0]
        if free:
            victim = free[0]
        else:
            # min() keeps the first of equal scores, like the kernel's strict comparison
            away = [c for c in cands if self.topo.reader_zone[int(c[0])] != here]
            victim = min(away or cands, key=lambda c: self._score(c, t))
        victim[:] = [r, x, t, 1]

    def _ble_zone(self, cands: list[list[float]], t: float, here: int) -> int:
        p = self.params
        used = [c for c in cands if c[0] >= 0]
        best = max(used, key=lambda c: self._score(c, t))  # max() keeps the first of ties
        zb = int(self.topo.reader_zone[int(best[0])])
        if here < 0 or zb == here:
            return zb
        here_score = max(
            (self._score(c, t) for c in used if self.topo.reader_zone[int(c[0])] == here),
            default=-math.inf,
        )
        if self._score(best, t) > here_score + p.ble_margin_db and best[3] >= p.ble_min_reads:
            return zb
        return here

    def _depart(
        self,
        z: int,
        t: float,
        dur: float,
        kind: int,
        entry: bool,
        one_in: bool = False,
        one_out: bool = False,
    ) -> list[Any]:
        rec = [t, dur, kind, entry, one_in, one_out]
        self.departures[z].append(rec)
        self.zone_count[z] -= 1
        return rec

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
            self._forget(key)
            self.evictions += 1

    def _forget(self, key: int) -> None:
        del self.tags[key]
        del self.cands[key]

    # -- tick ------------------------------------------------------------------------------
    def tick(self, now: float) -> ZoneMetrics:
        if not math.isnan(now):
            self.now = max(self.now, float(now))
        now = self.now
        self.t_start = min(self.t_start, now)
        kinds = self.topo.zone_kind
        for key, tg in list(self.tags.items()):
            area = kinds[tg.zone] == KIND_AREA
            timeout = self.topo.zone_timeout_s[tg.zone]
            if tg.state == TAG_IN:
                limit = timeout
                if not math.isnan(tg.ivl):
                    expected = tg.ivl + IVL_DEV_WEIGHT * tg.dev
                    limit = min(limit, self.topo.zone_missed_reads[tg.zone] * expected)
                if not area and tg.first < self.fifo_cutoff[tg.zone]:
                    kind = DEP_FIFO
                elif now - tg.last > limit:
                    kind = DEP_TIMEOUT
                else:
                    continue
                if area:
                    self._depart(tg.zone, tg.last, tg.last - tg.first, kind, False)
                else:
                    obs = self._observed(tg)
                    self._depart(tg.zone, now, math.nan, kind, obs, obs and tg.nreads == 1)
                self._forget(key)
            else:  # held after an exit, or short of min_reads
                hold = self.params.exit_hold_s if tg.state == TAG_EXITED else timeout
                if now - tg.last > hold:
                    self._forget(key)
        self.fifo_cutoff = [-math.inf] * len(self.fifo_cutoff)
        return self._metrics(now)

    def _metrics(self, now: float) -> ZoneMetrics:
        p = self.params
        nz = self.topo.n_zones
        out = {name: np.full(nz, np.nan) for name in FLOAT_METRICS}
        method = np.zeros(nz, dtype=np.int8)
        ql_method = np.zeros(nz, dtype=np.int8)
        samples = np.zeros(nz, dtype=np.int64)
        gap = (self.t_start, now, self.gap_lo, self.gap_hi)
        span = rate_span_s(p.rate_window_s, *gap)
        for z in range(nz):
            area = self.topo.zone_kind[z] == KIND_AREA
            deps = self.departures[z]
            served = sum(
                1
                for t, _, kind, *_ in deps
                if t > now - p.rate_window_s and (area or kind == DEP_EXIT)
            )
            # in the order recorded: the last ones are the latest
            durs = [d for t, d, *_ in deps if t > now - p.window_s and not math.isnan(d)]
            # exits in joining_window_s (in the order recorded) and the time between them,
            # stalls cut to stall_s, up to now: the service rate is exits / that time
            # ... and the gap before the first of them, from the latest exit recorded before
            # it that is older than the window
            exit_ts: list[float] = []
            busy, busy_sq, last_exit, prev_exit = 0.0, 0.0, -math.inf, -math.inf
            longest, first_gap = 0.0, math.inf
            for t, _, kind, *_ in deps:
                if kind != DEP_EXIT:
                    continue
                if t <= now - p.joining_window_s:
                    prev_exit = max(prev_exit, t)
                    continue
                if exit_ts:
                    gap = min(max(0.0, t - last_exit), p.stall_s)
                    busy += gap
                    busy_sq += gap * gap
                    longest = max(longest, gap)
                else:
                    first_gap = t - prev_exit
                exit_ts.append(t)
                last_exit = max(last_exit, t)
            served_j = len(exit_ts)
            silence = now - last_exit
            # the mean wait for the next exit (dispatch) from a random moment: E[g^2] / 2 E[g]
            residual = busy_sq / (2.0 * busy) if busy > 0 else 0.0
            if exit_ts:
                # the first exit ends a gap of at most one dispatch interval; silence beyond
                # the longest gap is time the ride did not serve
                cut = longest if longest > 0 else p.stall_s
                busy += min(max(0.0, first_gap), cut, p.stall_s)
                busy += max(0.0, min(max(0.0, silence), p.stall_s) - longest)
            recent = [
                (kind, entry, one_in, one_out)
                for t, _, kind, entry, one_in, one_out in deps
                if t > now - p.read_rate_window_s and (t >= self.rr_from[z] or t <= self.gap_lo)
            ]
            shortest = min(
                (d for t, d, *_ in deps if t > now - p.read_rate_window_s and not math.isnan(d)),
                default=math.nan,
            )
            arrived = sum(1 for t in self.arrivals[z] if t > now - p.rate_window_s)
            arrivals = arrived * 60.0 / span
            throughput = served * 60.0 / span
            count = float(self.zone_count[z])
            out["occupancy"][z] = count
            read_rate = 1.0
            line: list[float] = []
            if not area:
                # queueing: tags at or after the FIFO frontier, the earliest entry of the last
                # K measured exits (older tags have boarded with their exit read missed)
                line = sorted(
                    tg.first for tg in self.tags.values() if tg.zone == z and tg.state == TAG_IN
                )
                w = self.fifo_entries[z]
                frontier = min(w) if len(w) == p.fifo_witnesses else -math.inf
                line = line[bisect.bisect_left(line, frontier) :]
                count = float(len(line))
                ones = sum(
                    1
                    for tg in self.tags.values()
                    if tg.zone == z and tg.state == TAG_IN and tg.entry and tg.nreads == 1
                    and tg.first >= frontier
                )
            samples[z] = len(durs)
            if durs:
                out["dwell_p50_s"][z] = percentile(durs, 50)
                out["dwell_p90_s"][z] = percentile(durs, 90)
            if not area:
                # Lincoln-Petersen: tags read at the exit that were also read at the entry.
                exits = sum(1 for kind, *_ in recent if kind == DEP_EXIT)
                both = sum(1 for kind, entry, *_ in recent if kind == DEP_EXIT and entry)
                missed = sum(1 for kind, entry, *_ in recent if kind != DEP_EXIT and entry)
                both_one_in = sum(1 for k, e, o, _ in recent if k == DEP_EXIT and e and o)
                both_one_out = sum(1 for k, e, _, o in recent if k == DEP_EXIT and e and o)
                missed_one = sum(1 for k, e, o, _ in recent if k != DEP_EXIT and e and o)
                exit_only_one = sum(1 for k, e, _, o in recent if k == DEP_EXIT and not e and o)
                rate_out = 1.0
                keep_out = 1.0
                ql_method[z] = QL_UNCORRECTED
                if both >= p.min_recaptures:
                    s_in = stray_count(missed_one, missed, both_one_in, both, p.stray_z)
                    s_out = stray_count(exit_only_one, exits - both, both_one_out, both, p.stray_z)
                    if s_in > 0.0:
                        count -= ones * s_in / (both_one_in + missed_one)
                        arrivals *= 1.0 - s_in / (both + missed)
                    keep_out = 1.0 - s_out / exits
                    p_in, sd_in, read_rate = read_rate_est(both, exits - s_out, p)
                    p_out, _, rate_out = read_rate_est(both, both + missed - s_in, p)
                    out["entry_read_rate"][z] = p_in
                    out["entry_read_rate_sd"][z] = sd_in
                    out["exit_read_rate"][z] = p_out
                    ql_method[z] = QL_CORRECTED
                arrivals /= read_rate
                throughput *= keep_out / rate_out
                count /= read_rate
                if self.gap_hi > self.gap_lo:  # guests who joined while down, still in line
                    count += arrivals / 60.0 * max(0.0, self.gap_hi - max(self.gap_lo, frontier))
                out["queue_length_factor"][z] = 1.0 / read_rate
            else:
                ql_method[z] = QL_NONE
            out["arrivals_per_min"][z] = arrivals
            out["throughput_per_min"][z] = throughput
            if area:
                continue
            out["queue_length"][z] = count
            if len(durs) >= p.min_measured_waits:
                wait, method[z] = percentile(durs[-p.wait_recent :], 50), METHOD_MEASURED
            elif throughput > 0 and served >= p.min_measured_waits:
                wait, method[z] = count / (throughput / 60.0), METHOD_LITTLE
            elif count == 0:
                wait, method[z] = 0.0, METHOD_LITTLE
            else:
                wait, method[z] = math.nan, METHOD_NONE
            kept = sum(1 for _, _, kind, *_ in deps if kind == DEP_EXIT)
            if (not self.fifo_entries[z] and kept >= p.fifo_witnesses
                    and last_exit > self.t_start):
                # warming up: the line was there before the start (see QL_WARMING)
                ql_method[z] = QL_WARMING
                if not wait >= last_exit - self.t_start:
                    wait, method[z] = last_exit - self.t_start, METHOD_AT_LEAST
            out["wait_s"][z] = wait
            mu_j = served_j / busy * keep_out / rate_out if busy > 0 else 0.0
            stalled = silence > min(2.0 * p.stall_s, max(p.stall_s, 2.0 * longest))
            cap = self.capacity[z]
            walk = 0.0 if math.isinf(self.min_wait[z]) else self.min_wait[z]
            busy_line = (served_j >= p.min_measured_waits and not stalled
                         and method[z] == METHOD_MEASURED and wait > walk + 4.0 * residual)
            if busy_line:
                cap[:] = [mu_j, now]  # a busy line: the boarders missed a full dispatch
            else:
                # a short line is served at capacity (its exits are the demand): the rate last
                # measured on a busy line, or at least the fullest dispatch per interval
                if cap[1] > now - p.capacity_s and cap[0] > mu_j:
                    mu_j = cap[0]
                size, fullest, gaps, n_gaps = 0, 0, 0.0, 0
                latest = -math.inf
                for i, t in enumerate(exit_ts):
                    if i > 0:
                        between = min(max(0.0, t - latest), p.stall_s)
                        if between > residual:
                            fullest, size = max(fullest, size), 0
                            gaps += between
                            n_gaps += 1
                    size += 1
                    latest = max(latest, t)
                fullest = max(fullest, size)
                seats = fullest / (gaps / n_gaps) if n_gaps and gaps > 0 else 0.0
                mu_j = max(mu_j, seats * keep_out / rate_out)
            floor = walk + residual
            if method[z] == METHOD_MEASURED and not busy_line:
                floor = wait  # a line that is not busy: the boarders waited the empty line's
            if count <= 0 or not line:
                out["wait_joining_s"][z] = floor
            elif (served_j >= p.min_measured_waits and longest > 0 and mu_j > 0
                  and not stalled):  # a rate needs exits spread in time (not one train)
                # each guest boards a walk (and a dispatch) after entering, but not before
                # the guests ahead have boarded at the service rate
                step = count / len(line) / mu_j
                board = now - step
                for e in line:
                    board = max(board + step, e + floor)
                out["wait_joining_s"][z] = max(board + 1.0 / mu_j - now, floor)
            # else NaN: no evidence of the service, or a stopped ride
            lam, mu = arrivals / 60.0, throughput / 60.0
            projected = max(0.0, count + (lam - mu) * p.horizon_s)
            j = math.floor(mu * p.horizon_s * read_rate)  # tags boarding within the horizon
            if math.isnan(wait) or span < p.rate_window_s:  # no forecast in the first window
                fc = math.nan
            elif j < len(line):  # the guest boarding then is in the line now
                fc = max(0.0, now + p.horizon_s - line[j])
            elif mu > 0 and lam > 0:  # ... joins (mu * horizon - count) / lam from now
                fc = p.horizon_s - (mu * p.horizon_s - count) / lam
                fc = max(fc, 0.0 if math.isnan(shortest) else shortest)
            elif mu > 0:
                fc = max(0.0, wait + (projected - count) / mu)
            else:
                fc = 0.0 if projected == 0 else math.nan
            out["wait_forecast_s"][z] = fc
        return ZoneMetrics(
            wait_method=method,
            queue_length_method=ql_method,
            live_tags=np.array(self.zone_count, dtype=np.int64),
            wait_samples=samples,
            now=now,
            **out,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole state (deep-copied), with ``format`` and ``fingerprint`` like ZoneEngine's."""
        # one deepcopy: a held tag and its zone's ring share the exit record
        state = copy.deepcopy({k: v for k, v in vars(self).items() if k not in ("topo", "params")})
        state["format"] = SNAPSHOT_FORMAT
        state["fingerprint"] = self._fingerprint
        return state

    def restore(self, snapshot: dict[str, Any], now: float) -> None:
        """Same checks and gap accounting as ZoneEngine.restore."""
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotMismatch(f"snapshot format {snapshot.get('format')}")
        if snapshot.get("fingerprint") != self._fingerprint:
            raise SnapshotMismatch("snapshot is of another topology or other engine parameters")
        state = copy.deepcopy({k: v for k, v in snapshot.items() if k not in ("format", "fingerprint")})
        for k, v in state.items():
            setattr(self, k, v)
        down_from = max(self.now, self.t_seen)
        if math.isfinite(now) and math.isfinite(down_from) and now > down_from:
            self.gap_lo, self.gap_hi = down_from, now
            self.obs_start = now
            self.rr_from = [math.inf] * self.topo.n_zones
            self.rr_seen = [0] * self.topo.n_zones
        if not math.isnan(now):
            self.now = max(self.now, now)
