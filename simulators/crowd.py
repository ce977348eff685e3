"""A seeded crowd model of a venue, with the ground truth the agent's estimates are judged by.

The model is deliberately simple and exact, so that the truth is beyond dispute:

* **Queue zones.** Guests join as a non-homogeneous Poisson process (a :class:`RateSchedule`
  of guests/s). After walking the empty line (``walk_s``) they wait FIFO for a seat. Seats
  come in dispatches of ``batch`` guests at a capacity schedule of guests/s (regular by
  default, like a ride sending a train whenever it is full and ready; a rate of 0 is a
  breakdown). A guest is *in the queue* from joining (the entry reader) to boarding (the exit
  reader); that interval is their wait.
* **Area zones.** Guests walk in as a Poisson process and stay for a lognormal dwell time;
  walk-ins that find the zone at ``capacity`` are turned away (counted, never present).
* **Readers.** An ``entry`` reader reads each guest when they arrive, an ``exit`` reader when
  they leave, a ``presence`` reader every ``presence_period_s`` while they are there. Each
  read succeeds independently with the reader's ``read_prob``; successful reads may be late
  by up to ``jitter_s`` and repeated (a band lingering on the antenna), and a reader may pick
  up stray tags of passers-by that belong to no visit.

Every visit is a distinct guest with a distinct EM4100 tag (5 bytes, version byte first),
kept as the 40-bit big-endian integer in a ``uint64``. All times are simulated seconds from
the start of the simulation. One ``seed`` fixes everything; each zone and reader draws from its
own child stream, so adding a reader does not change the guests of another zone.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

ZoneKind = Literal["queue", "area"]
ReaderRole = Literal["entry", "exit", "presence"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: One tag read: time (simulated s), reader index into ``Layout.readers``, tag (40-bit EM4100
#: data as an integer) and the index of the visit it belongs to in ``Simulation.visits``
#: (-1 for a stray read of a passer-by).
READ_DTYPE = np.dtype([("ts", "f8"), ("reader", "i4"), ("tag", "u8"), ("visit", "i8")])

#: One guest's visit to one zone: zone index into ``Layout.zones``, tag, arrival and leave
#: time (simulated s; ``inf`` when the guest is still there when the simulation ends).
VISIT_DTYPE = np.dtype([("zone", "i4"), ("tag", "u8"), ("arrive_ts", "f8"), ("leave_ts", "f8")])

_TAG_BITS = 40

# Presence readers belong in area zones; one in a queue zone (a BLE scanner over the line)
# gets a chance to read each queued guest this often, in s.
_QUEUE_PRESENCE_S = 5.0


# --------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class SimZone:
    """A zone of the simulated venue. ``capacity`` is in guests (enforced for area zones)."""

    id: str
    kind: ZoneKind
    capacity: int


@dataclass(frozen=True, slots=True)
class SimReader:
    """A simulated wristband reader.

    read_prob: probability that one passage (or one presence period) yields a read.
    jitter_s: each successful read is late by a uniform 0..jitter_s seconds.
    dup_prob: after each read, probability of one more read of the same band (repeatedly, so
        the number of extra reads is geometric with mean dup_prob / (1 - dup_prob)).
    dup_gap_s: seconds between such repeated reads (RDM6300-class readers repeat a lingering
        card every few hundred ms).
    stray_rate_hz: reads per second of tags that belong to no visit (bands of passers-by).
    """

    id: str
    zone: str
    role: ReaderRole
    protocol: str = "em4100"
    read_prob: float = 0.9
    jitter_s: float = 0.0
    dup_prob: float = 0.0
    dup_gap_s: float = 0.3
    stray_rate_hz: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.read_prob <= 1.0:
            raise ValueError(f"reader {self.id}: read_prob must be in [0, 1]")
        if not 0.0 <= self.dup_prob < 1.0:
            raise ValueError(f"reader {self.id}: dup_prob must be in [0, 1)")
        if self.jitter_s < 0 or self.dup_gap_s <= 0 or self.stray_rate_hz < 0:
            raise ValueError(f"reader {self.id}: jitter_s, stray_rate_hz >= 0, dup_gap_s > 0")


@dataclass(frozen=True, slots=True)
class Layout:
    """Zones and readers of a simulated venue (what a gateway config describes)."""

    zones: tuple[SimZone, ...]
    readers: tuple[SimReader, ...]

    def __post_init__(self) -> None:
        zone_ids = [z.id for z in self.zones]
        reader_ids = [r.id for r in self.readers]
        if len(set(zone_ids)) != len(zone_ids) or len(set(reader_ids)) != len(reader_ids):
            raise ValueError("zone ids and reader ids must be unique")
        for r in self.readers:
            if r.zone not in zone_ids:
                raise ValueError(f"reader {r.id}: unknown zone {r.zone!r}")

    def zone(self, zone_id: str) -> SimZone:
        return self.zones[self.zone_index(zone_id)]

    def zone_index(self, zone_id: str) -> int:
        for i, z in enumerate(self.zones):
            if z.id == zone_id:
                return i
        raise KeyError(f"no zone {zone_id!r}")

    def reader_index(self, reader_id: str) -> int:
        for i, r in enumerate(self.readers):
            if r.id == reader_id:
                return i
        raise KeyError(f"no reader {reader_id!r}")

    def readers_of(self, zone_id: str) -> tuple[SimReader, ...]:
        return tuple(r for r in self.readers if r.zone == zone_id)


# --------------------------------------------------------------------------------------------
# Rate schedules


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """A rate over simulated time, piecewise linear between knots.

    points: ``(t_s, rate_per_s)`` knots with strictly increasing ``t_s``; the rate is held at
    the first value before the first knot and at the last value after the last one. A step is
    two knots close together (a 1-2 s ramp is also more like real crowds).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a RateSchedule needs at least one (t, rate) point")
        ts = [float(t) for t, _ in self.points]
        rates = [float(r) for _, r in self.points]
        if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
            raise ValueError("RateSchedule times must be strictly increasing")
        if any(not np.isfinite(r) or r < 0 for r in rates):
            raise ValueError("RateSchedule rates must be finite and >= 0")

    @classmethod
    def constant(cls, rate_per_s: float) -> RateSchedule:
        return cls(((0.0, float(rate_per_s)),))

    def rate(self, t: npt.ArrayLike) -> FloatArray:
        """Rate (per s) at simulated time(s) ``t``."""
        ts = np.array([p[0] for p in self.points], dtype=np.float64)
        rs = np.array([p[1] for p in self.points], dtype=np.float64)
        return np.asarray(np.interp(np.asarray(t, dtype=np.float64), ts, rs), dtype=np.float64)

    def on(self, duration_s: float) -> _Cumulative:
        """The cumulative integral of this rate over ``[0, duration_s]``."""
        inner = [float(t) for t, _ in self.points if 0.0 < t < duration_s]
        knots = np.array([0.0, *inner, float(duration_s)], dtype=np.float64)
        return _Cumulative(knots, self.rate(knots))


@dataclass(frozen=True, slots=True)
class _Cumulative:
    """Exact integral Λ(t) of a piecewise-linear rate, and its inverse (for event times)."""

    knots: FloatArray
    rates: FloatArray
    slopes: FloatArray = field(init=False)
    at_knots: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        dt = np.diff(self.knots)
        object.__setattr__(self, "slopes", np.diff(self.rates) / dt)
        seg = 0.5 * (self.rates[:-1] + self.rates[1:]) * dt
        object.__setattr__(self, "at_knots", np.concatenate([[0.0], np.cumsum(seg)]))

    @property
    def total(self) -> float:
        return float(self.at_knots[-1])

    def value(self, t: npt.ArrayLike) -> FloatArray:
        """Λ(t): expected number of events in ``[0, t]``, for 0 <= t <= the horizon."""
        tt = np.asarray(t, dtype=np.float64)
        k = np.clip(np.searchsorted(self.knots, tt, side="right") - 1, 0, len(self.knots) - 2)
        u = tt - self.knots[k]
        return np.asarray(
            self.at_knots[k] + self.rates[k] * u + 0.5 * self.slopes[k] * u * u, dtype=np.float64)

    def inverse(self, y: FloatArray) -> FloatArray:
        """Times t with Λ(t) = y, for 0 <= y <= total (the first such t)."""
        n_seg = len(self.knots) - 1
        # Segment k with at_knots[k] < y <= at_knots[k+1]; segments of zero integral (a rate of
        # 0, a breakdown) are skipped, so no event ever lands inside one.
        k = np.clip(np.searchsorted(self.at_knots, y, side="left") - 1, 0, n_seg - 1)
        delta = y - self.at_knots[k]
        r = self.rates[k]
        a = self.slopes[k]
        # Solve r·u + a·u²/2 = delta in the form that stays exact when a == 0.
        denom = r + np.sqrt(np.maximum(r * r + 2.0 * a * delta, 0.0))
        safe = np.where(denom > 0, denom, 1.0)
        u = np.where(denom > 0, 2.0 * delta / safe, 0.0)
        u = np.minimum(u, self.knots[k + 1] - self.knots[k])
        return np.asarray(self.knots[k] + u, dtype=np.float64)


def poisson_times(
    schedule: RateSchedule, duration_s: float, rng: np.random.Generator
) -> FloatArray:
    """Sorted event times (s) of a Poisson process with the given rate on ``[0, duration_s)``."""
    cum = schedule.on(duration_s)
    n = int(rng.poisson(cum.total))
    y = np.sort(rng.uniform(0.0, cum.total, n))
    return np.minimum(cum.inverse(y), np.nextafter(duration_s, 0.0))


# --------------------------------------------------------------------------------------------
# Flows (what happens in a zone)


@dataclass(frozen=True, slots=True)
class QueueFlow:
    """Demand and service of a queue zone.

    arrivals: guests/s joining the queue (passing the entry reader).
    service: boarding capacity in guests/s; 0 while the ride is down.
    batch: guests per dispatch (seats of a vehicle); dispatches come every batch/service s.
    walk_s: time to walk the empty line from the entry to the exit reader, in s; the shortest
        possible wait.
    random_service: dispatch as a Poisson process instead of regularly (a service desk rather
        than a ride).
    """

    arrivals: RateSchedule
    service: RateSchedule
    batch: int = 1
    walk_s: float = 0.0
    random_service: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1 or self.walk_s < 0:
            raise ValueError("QueueFlow: batch >= 1 and walk_s >= 0 required")


@dataclass(frozen=True, slots=True)
class AreaFlow:
    """Demand of an area zone.

    arrivals: guests/s walking in (before the capacity check).
    dwell_median_s: median dwell time in s (lognormal).
    dwell_sigma: shape of the lognormal: the standard deviation of ln(dwell).
    presence_period_s: how often a presence reader gets a chance to read each present guest.
    """

    arrivals: RateSchedule
    dwell_median_s: float
    dwell_sigma: float = 0.5
    presence_period_s: float = 5.0

    def __post_init__(self) -> None:
        if self.dwell_median_s <= 0 or self.dwell_sigma < 0 or self.presence_period_s <= 0:
            raise ValueError("AreaFlow: dwell_median_s > 0, dwell_sigma >= 0, period > 0")


Flow = QueueFlow | AreaFlow


# --------------------------------------------------------------------------------------------
# Ground truth per zone


@dataclass(frozen=True, slots=True)
class _ZoneTruth:
    """Sorted views of one zone's visits for fast truth queries."""

    arrive_sorted: FloatArray
    leave_sorted: FloatArray  # inf (still there) sorts last
    wait_by_leave: FloatArray  # leave - arrive, in the order of leave_sorted
    # Queue zones only: seat times and which seat each guest (in arrival order) took.
    seats: FloatArray | None = None
    seat_of: IntArray | None = None
    walk_s: float = 0.0


def _assign_seats(ready: FloatArray, seats: FloatArray) -> IntArray:
    """FIFO: index of the seat each guest takes (len(seats) when none is left).

    Guest i (in arrival order, ready at ``ready[i]``) takes the first seat that is not earlier
    than ``ready[i]`` and later in order than guest i-1's seat: k_i = max(k_{i-1} + 1, s_i)
    with s_i the first seat at or after ready[i], which unrolls to i + cummax(s_j - j).
    """
    if len(ready) == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.searchsorted(seats, ready, side="left").astype(np.int64)
    idx = np.arange(len(ready), dtype=np.int64)
    k = idx + np.maximum.accumulate(first - idx)
    return np.minimum(k, len(seats))


def _simulate_queue(
    flow: QueueFlow, duration_s: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, _ZoneTruth]:
    arrive = poisson_times(flow.arrivals, duration_s, rng)
    cum = flow.service.on(duration_s)
    if flow.random_service:
        n = int(rng.poisson(cum.total / flow.batch))
        dispatch_y = np.sort(rng.uniform(0.0, cum.total, n))
    else:
        # A dispatch each time another `batch` seats of capacity have accrued; the random phase
        # keeps dispatches from lining up with t = 0 in every run.
        k = np.arange(int(np.floor(cum.total / flow.batch + 1.0)), dtype=np.float64)
        dispatch_y = (k + rng.uniform()) * flow.batch
        dispatch_y = dispatch_y[dispatch_y < cum.total]
    seats = np.repeat(cum.inverse(dispatch_y), flow.batch)
    seat_of = _assign_seats(arrive + flow.walk_s, seats)
    padded = np.concatenate([seats, [np.inf]])
    leave = padded[seat_of]
    leave[leave >= duration_s] = np.inf
    order = np.argsort(leave, kind="stable")
    truth = _ZoneTruth(
        arrive_sorted=arrive,
        leave_sorted=leave[order],
        wait_by_leave=(leave - arrive)[order],
        seats=seats,
        seat_of=seat_of,
        walk_s=flow.walk_s,
    )
    return arrive, leave, truth


def _peak_occupancy(arrive: FloatArray, leave: FloatArray) -> int:
    """Most guests ever inside at once if nobody were turned away."""
    if len(arrive) == 0:
        return 0
    ts = np.concatenate([arrive, leave])
    step = np.concatenate([np.ones(len(arrive)), -np.ones(len(leave))])
    # At equal times a leave (-1) sorts before an arrival (+1): the leaver frees the place.
    order = np.lexsort((step, ts))
    return int(np.cumsum(step[order]).max())


def _simulate_area(
    flow: AreaFlow, capacity: int, duration_s: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, _ZoneTruth, int]:
    walk_in = poisson_times(flow.arrivals, duration_s, rng)
    dwell = rng.lognormal(np.log(flow.dwell_median_s), flow.dwell_sigma, len(walk_in))
    admitted = np.ones(len(walk_in), dtype=bool)
    if _peak_occupancy(walk_in, walk_in + dwell) >= capacity:
        # Admission depends on who is inside, so it is sequential; a heap of leave times
        # keeps it O(n log n). Only needed when the zone can ever be full.
        present: list[float] = []
        for i, (t, d) in enumerate(zip(walk_in.tolist(), dwell.tolist(), strict=True)):
            while present and present[0] <= t:
                heapq.heappop(present)
            if len(present) >= capacity:
                admitted[i] = False
            else:
                heapq.heappush(present, t + d)
    arrive = walk_in[admitted]
    leave = arrive + dwell[admitted]
    leave[leave >= duration_s] = np.inf
    order = np.argsort(leave, kind="stable")
    truth = _ZoneTruth(arrive, leave[order], (leave - arrive)[order])
    return arrive, leave, truth, int((~admitted).sum())


# --------------------------------------------------------------------------------------------
# Reads


def _read_events(
    reader: SimReader,
    arrive: FloatArray,
    leave: FloatArray,
    presence_period_s: float,
    duration_s: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, IntArray]:
    """Times and visit indices (within the zone) of one reader's successful reads."""
    n = len(arrive)
    visit = np.arange(n, dtype=np.int64)
    if reader.role == "entry":
        ts = arrive.copy()
    elif reader.role == "exit":
        ok = np.isfinite(leave)
        ts, visit = leave[ok], visit[ok]
    else:
        # A chance to read each present guest every period, starting at a random phase.
        end = np.minimum(leave, duration_s)
        start = arrive + rng.uniform(0.0, presence_period_s, n)
        counts = np.maximum(np.ceil((end - start) / presence_period_s), 0).astype(np.int64)
        visit = np.repeat(visit, counts)
        first = np.cumsum(counts) - counts
        k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
        ts = start[visit] + k * presence_period_s
    hit = rng.random(len(ts)) < reader.read_prob
    ts, visit = ts[hit], visit[hit]
    if reader.jitter_s > 0:
        ts = ts + rng.uniform(0.0, reader.jitter_s, len(ts))
    if reader.dup_prob > 0:
        extra = rng.geometric(1.0 - reader.dup_prob, len(ts)) - 1
        base = np.repeat(np.arange(len(ts)), extra + 1)
        first = np.cumsum(extra + 1) - (extra + 1)
        nth = np.arange(len(base)) - np.repeat(first, extra + 1)
        ts = ts[base] + nth * reader.dup_gap_s
        visit = visit[base]
    keep = ts < duration_s
    return ts[keep], visit[keep]


def unique_tags(n: int, rng: np.random.Generator) -> npt.NDArray[np.uint64]:
    """``n`` distinct random 40-bit EM4100 tags (version byte in the top 8 bits)."""
    out = np.zeros(0, dtype=np.uint64)
    while len(out) < n:
        draw = rng.integers(0, 1 << _TAG_BITS, size=int((n - len(out)) * 1.05) + 8,
                            dtype=np.uint64)
        both = np.concatenate([out, draw])
        _, first = np.unique(both, return_index=True)
        out = both[np.sort(first)]
    return out[:n]


def tag_bytes(tag: int | np.integer) -> bytes:
    """The 5 EM4100 data bytes (version byte, then 4-byte id, big-endian) of a tag integer."""
    return int(tag).to_bytes(5, "big")


# --------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True, slots=True)
class Simulation:
    """A simulated run: the reads readers produce and the ground truth behind them.

    reads: ``READ_DTYPE`` records sorted by ``ts`` (ties by reader index).
    visits: ``VISIT_DTYPE`` records, one per admitted guest visit.
    refused: per area zone, walk-ins turned away at capacity.
    """

    layout: Layout
    duration_s: float
    reads: np.ndarray
    visits: np.ndarray
    refused: dict[str, int]
    _truth: dict[str, _ZoneTruth]

    # -- reads ---------------------------------------------------------------------------

    def reads_for(self, reader_id: str) -> np.ndarray:
        """The reads of one reader (``READ_DTYPE``), in time order."""
        return self.reads[self.reads["reader"] == self.layout.reader_index(reader_id)]

    def read_schedule(self, reader_id: str) -> list[tuple[float, bytes]]:
        """``(ts, 5 tag bytes)`` of one reader in time order: what a virtual reader sends."""
        r = self.reads_for(reader_id)
        return [(float(t), tag_bytes(g)) for t, g in zip(r["ts"], r["tag"], strict=True)]

    def visits_in(self, zone_id: str) -> np.ndarray:
        """The visits (``VISIT_DTYPE``) of one zone, in arrival order."""
        return self.visits[self.visits["zone"] == self.layout.zone_index(zone_id)]

    # -- ground truth (t: simulated s, scalar or array; results have t's shape) -----------

    def true_count(self, zone_id: str, t: npt.ArrayLike) -> IntArray:
        """Guests in the zone at ``t``: arrived at or before ``t`` and not yet left."""
        z = self._zone_truth(zone_id)
        tt = np.asarray(t, dtype=np.float64)
        inside = np.searchsorted(z.arrive_sorted, tt, side="right") - np.searchsorted(
            z.leave_sorted, tt, side="right")
        return np.asarray(inside, dtype=np.int64)

    def true_queue_length(self, zone_id: str, t: npt.ArrayLike) -> IntArray:
        """Guests between the entry and the exit reader of a queue zone at ``t``."""
        return self.true_count(zone_id, t)

    def true_occupancy(self, zone_id: str, t: npt.ArrayLike) -> IntArray:
        """Guests inside an area zone at ``t`` (same count as ``true_queue_length``)."""
        return self.true_count(zone_id, t)

    def true_wait_s(
        self, zone_id: str, t: npt.ArrayLike, *, window_s: float = 60.0
    ) -> FloatArray:
        """Median wait (s) of the guests who left the queue in ``(t - window_s, t]``.

        This is the *experienced* wait, which is what entry/exit re-identification measures.
        NaN where nobody left in the window. For an area zone this is the median dwell.
        """
        return self.true_dwell_s(zone_id, t, q=0.5, window_s=window_s)

    def true_dwell_s(
        self, zone_id: str, t: npt.ArrayLike, *, q: float = 0.5, window_s: float = 300.0
    ) -> FloatArray:
        """Quantile ``q`` of (leave - arrive) in s over visits that ended in
        ``(t - window_s, t]``; NaN where none did."""
        z = self._zone_truth(zone_id)
        tt = np.asarray(t, dtype=np.float64)
        hi = np.searchsorted(z.leave_sorted, tt, side="right")
        lo = np.searchsorted(z.leave_sorted, tt - window_s, side="right")
        out = np.full(tt.shape, np.nan)
        flat_lo, flat_hi, flat_out = lo.reshape(-1), hi.reshape(-1), out.reshape(-1)
        for i in range(flat_out.size):
            if flat_hi[i] > flat_lo[i]:
                flat_out[i] = np.quantile(z.wait_by_leave[flat_lo[i]:flat_hi[i]], q)
        return out

    def true_wait_joining_s(self, zone_id: str, t: npt.ArrayLike) -> FloatArray:
        """The wait (s) a guest joining the queue at ``t`` would have (the *prospective* wait).

        Exact for this model: a virtual guest who joins at ``t`` behind everyone who joined
        at or before ``t`` and takes the next free seat. NaN when that seat would come after
        the end of the simulation. Queue zones only.
        """
        z = self._zone_truth(zone_id)
        if z.seats is None or z.seat_of is None:
            raise ValueError(f"zone {zone_id!r} is not a queue zone")
        tt = np.asarray(t, dtype=np.float64)
        ahead = np.searchsorted(z.arrive_sorted, tt, side="right")
        prev_seat = np.where(ahead > 0, z.seat_of[np.maximum(ahead - 1, 0)], -1)
        own = np.maximum(prev_seat + 1, np.searchsorted(z.seats, tt + z.walk_s, side="left"))
        padded = np.concatenate([z.seats, [np.nan]])
        return np.asarray(padded[np.minimum(own, len(z.seats))] - tt, dtype=np.float64)

    def true_arrivals_per_min(
        self, zone_id: str, t: npt.ArrayLike, *, window_s: float = 60.0
    ) -> FloatArray:
        """Guests who arrived in ``(t - window_s, t]``, per minute."""
        z = self._zone_truth(zone_id)
        return _rate_per_min(z.arrive_sorted, np.asarray(t, dtype=np.float64), window_s)

    def true_throughput_per_min(
        self, zone_id: str, t: npt.ArrayLike, *, window_s: float = 60.0
    ) -> FloatArray:
        """Guests who left in ``(t - window_s, t]``, per minute."""
        z = self._zone_truth(zone_id)
        return _rate_per_min(z.leave_sorted, np.asarray(t, dtype=np.float64), window_s)

    def truth_grid(self, zone_id: str, t: npt.ArrayLike) -> dict[str, np.ndarray]:
        """All truth series of a zone at times ``t``, keyed by the agent's metric names."""
        out: dict[str, np.ndarray] = {
            "occupancy" if self.layout.zone(zone_id).kind == "area" else "queue_length":
                self.true_count(zone_id, t),
            "arrivals_per_min": self.true_arrivals_per_min(zone_id, t),
            "throughput_per_min": self.true_throughput_per_min(zone_id, t),
        }
        if self.layout.zone(zone_id).kind == "queue":
            out["wait_s"] = self.true_wait_s(zone_id, t)
            out["wait_joining_s"] = self.true_wait_joining_s(zone_id, t)
        else:
            out["dwell_p50_s"] = self.true_dwell_s(zone_id, t, q=0.5)
            out["dwell_p90_s"] = self.true_dwell_s(zone_id, t, q=0.9)
        return out

    def _zone_truth(self, zone_id: str) -> _ZoneTruth:
        try:
            return self._truth[zone_id]
        except KeyError:
            raise KeyError(f"no simulated zone {zone_id!r}") from None


def _rate_per_min(sorted_ts: FloatArray, t: FloatArray, window_s: float) -> FloatArray:
    n = np.searchsorted(sorted_ts, t, side="right") - np.searchsorted(
        sorted_ts, t - window_s, side="right")
    return np.asarray(n * (60.0 / window_s), dtype=np.float64)


def simulate(
    layout: Layout,
    flows: Mapping[str, Flow],
    duration_s: float,
    *,
    seed: int,
) -> Simulation:
    """Run the crowd model for ``duration_s`` simulated seconds.

    ``flows`` maps each zone id to its :class:`QueueFlow` (queue zones) or :class:`AreaFlow`
    (area zones); a zone without a flow stays empty.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    root = np.random.SeedSequence(seed)
    zone_seeds = root.spawn(len(layout.zones))
    reader_seeds = root.spawn(len(layout.readers))
    tag_rng = np.random.default_rng(root.spawn(1)[0])

    visits_parts: list[tuple[int, FloatArray, FloatArray]] = []
    truth: dict[str, _ZoneTruth] = {}
    refused: dict[str, int] = {}
    for zi, zone in enumerate(layout.zones):
        rng = np.random.default_rng(zone_seeds[zi])
        flow = flows.get(zone.id)
        empty = np.zeros(0, dtype=np.float64)
        if flow is None:
            arrive, leave, zt = empty, empty, _ZoneTruth(empty, empty, empty)
        elif isinstance(flow, QueueFlow):
            if zone.kind != "queue":
                raise ValueError(f"zone {zone.id!r} is an area zone but has a QueueFlow")
            arrive, leave, zt = _simulate_queue(flow, duration_s, rng)
        else:
            if zone.kind != "area":
                raise ValueError(f"zone {zone.id!r} is a queue zone but has an AreaFlow")
            arrive, leave, zt, refused[zone.id] = _simulate_area(
                flow, zone.capacity, duration_s, rng)
        truth[zone.id] = zt
        visits_parts.append((zi, arrive, leave))

    n_visits = sum(len(a) for _, a, _ in visits_parts)
    visits = np.zeros(n_visits, dtype=VISIT_DTYPE)
    offsets: dict[int, int] = {}
    pos = 0
    for zi, arrive, leave in visits_parts:
        offsets[zi] = pos
        sl = slice(pos, pos + len(arrive))
        visits["zone"][sl] = zi
        visits["arrive_ts"][sl] = arrive
        visits["leave_ts"][sl] = leave
        pos += len(arrive)

    # Strays are drawn first so that all tags can be drawn at once, distinct across the run.
    reader_rngs = [np.random.default_rng(s) for s in reader_seeds]
    stray_counts = [
        int(rng.poisson(r.stray_rate_hz * duration_s))
        for rng, r in zip(reader_rngs, layout.readers, strict=True)
    ]
    tags = unique_tags(n_visits + sum(stray_counts), tag_rng)
    visits["tag"] = tags[:n_visits]
    stray_tags = tags[n_visits:]

    parts: list[np.ndarray] = []
    stray_pos = 0
    for ri, reader in enumerate(layout.readers):
        rng = reader_rngs[ri]
        n_stray = stray_counts[ri]
        zi = layout.zone_index(reader.zone)
        _, arrive, leave = visits_parts[zi]
        flow = flows.get(reader.zone)
        period = flow.presence_period_s if isinstance(flow, AreaFlow) else _QUEUE_PRESENCE_S
        ts, local = _read_events(reader, arrive, leave, period, duration_s, rng)
        stray_ts = rng.uniform(0.0, duration_s, n_stray)
        rec = np.zeros(len(ts) + n_stray, dtype=READ_DTYPE)
        rec["reader"] = ri
        rec["ts"][: len(ts)] = ts
        rec["visit"][: len(ts)] = local + offsets[zi]
        rec["tag"][: len(ts)] = visits["tag"][local + offsets[zi]]
        rec["ts"][len(ts):] = stray_ts
        rec["visit"][len(ts):] = -1
        rec["tag"][len(ts):] = stray_tags[stray_pos: stray_pos + n_stray]
        stray_pos += n_stray
        parts.append(rec)
    reads = np.concatenate(parts) if parts else np.zeros(0, dtype=READ_DTYPE)
    reads = reads[np.lexsort((reads["reader"], reads["ts"]))]
    return Simulation(layout, float(duration_s), reads, visits, refused, truth)

