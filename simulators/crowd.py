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
* **Roaming guests.** A :class:`RoamingFlow` lets guests wander a group of area zones: each
  stays a lognormal dwell in one zone, then moves on to another zone of the group (instantly)
  or leaves. Every stay is one visit; the visits of one guest share the guest's tag.
* **Readers.** An ``entry`` reader reads each guest when they arrive, an ``exit`` reader when
  they leave, a ``presence`` reader every ``presence_period_s`` while they are there. Each
  read succeeds independently with the reader's ``read_prob``; successful reads may be late
  by up to ``jitter_s``, repeated (a band lingering on the antenna, or held there for
  seconds), lost or delivered late in a burst while the reader's line is down (outages), and
  a reader may pick up stray tags of passers-by that belong to no visit.
* **BLE adapters.** Zones may have a floor plan (``SimZone.area_m``, a rectangle in m); a
  roaming guest stands at a uniform random spot of their zone and picks a new one every
  ``wander_s``. A presence reader with a :class:`BleRadio` (an adapter at a point of the
  plan) hears each advert of every roaming guest's band, in its own zone or any other, with
  probability ``read_prob``, at an RSSI from log-distance path loss over the real distance
  plus Gaussian noise; an advert weaker than the adapter's sensitivity is not heard. A band
  advertises every ``advert_interval_s`` (its own, drawn per guest) while its guest is in
  the group.
* **Started late.** With ``warmup_s`` the crowd has been moving for that long when the agent
  (and the reads) start at t = 0: guests already queueing were read at the entry before the
  agent was there, which the agent never sees; the truth counts them.

Every guest has a distinct tag (an EM4100 tag for serial readers: 5 bytes, version byte
first), kept as the 40-bit big-endian integer in a ``uint64``. All times are simulated seconds
from the start of the agent (t = 0). One ``seed`` fixes everything; each zone and reader draws
from its own child stream, so adding a reader does not change the guests of another zone.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

ZoneKind = Literal["queue", "area"]
ReaderRole = Literal["entry", "exit", "presence"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: One tag read: time (simulated s), reader index into ``Layout.readers``, tag (40-bit EM4100
#: data as an integer), the index of the visit it belongs to in ``Simulation.visits`` (-1 for a
#: stray read of a passer-by; for a BLE adapter, the visit of the zone the guest is in, which
#: may be a neighbouring zone) and the RSSI in dBm (float32; NaN for RFID readers).
READ_DTYPE = np.dtype([("ts", "f8"), ("reader", "i4"), ("tag", "u8"), ("visit", "i8"),
                       ("rssi", "f4")])

#: One guest's visit to one zone: zone index into ``Layout.zones``, tag, arrival and leave
#: time (simulated s; ``inf`` when the guest is still there when the simulation ends; arrival
#: before 0 when the guest came during the warm-up) and the guest (index; a roaming guest's
#: visits share it and the tag).
VISIT_DTYPE = np.dtype([("zone", "i4"), ("tag", "u8"), ("arrive_ts", "f8"), ("leave_ts", "f8"),
                        ("guest", "i8")])

#: One visit that ended within the run (``Simulation.departures``): the visit's index, guest,
#: tag, arrival and leave time (s), the latest read of the visit stamped before it ended
#: (``last_read_ts``; NaN when no reader ever picked the visit up) and the zone the guest
#: went on to (``next_zone``, index into ``Layout.zones``; -1 when they left the venue).
DEPARTURE_DTYPE = np.dtype([("visit", "i8"), ("guest", "i8"), ("tag", "u8"),
                            ("arrive_ts", "f8"), ("leave_ts", "f8"), ("last_read_ts", "f8"),
                            ("next_zone", "i4")])

_TAG_BITS = 40

# Presence readers belong in area zones; one in a queue zone (a BLE scanner over the line)
# gets a chance to read each queued guest this often, in s.
_QUEUE_PRESENCE_S = 5.0


# --------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class SimZone:
    """A zone of the simulated venue. ``capacity`` is in guests (enforced for area zones).
    ``area_m``: the zone's floor, ``(x0, y0, x1, y1)`` in m, where BLE adapters hear guests."""

    id: str
    kind: ZoneKind
    capacity: int
    area_m: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.area_m is not None and not (
                self.area_m[0] < self.area_m[2] and self.area_m[1] < self.area_m[3]):
            raise ValueError(f"zone {self.id}: area_m must be (x0, y0, x1, y1), x0 < x1, y0 < y1")


@dataclass(frozen=True, slots=True)
class BleRadio:
    """How a BLE adapter (a presence reader) hears wristbands.

    RSSI (dBm, rounded to whole dB as BlueZ reports it) = ``tx_power_dbm`` (the RSSI at 1 m)
    - 10 · ``path_loss_exp`` · log10(distance in m) + Gaussian noise of ``sigma_db``, the
    distance from the adapter at ``position_m`` (x, y, height; default: the centre of its
    zone's ``area_m``, 3 m up) to the band (1 m up); adverts below ``sensitivity_dbm`` are not
    heard.
    """

    tx_power_dbm: float = -59.0
    path_loss_exp: float = 2.5
    sigma_db: float = 5.0
    sensitivity_dbm: float = -98.0
    position_m: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.sigma_db < 0 or self.path_loss_exp <= 0:
            raise ValueError("BleRadio: sigma_db >= 0 and path_loss_exp > 0 required")

    def rssi(self, distance_m: FloatArray, rng: np.random.Generator) -> FloatArray:
        """One RSSI reading (dBm, whole dB) per distance."""
        mean = self.tx_power_dbm - 10.0 * self.path_loss_exp * np.log10(
            np.maximum(distance_m, 0.1))
        return np.asarray(np.round(mean + rng.normal(0.0, self.sigma_db, len(distance_m))),
                          dtype=np.float64)


_BAND_HEIGHT_M = 1.0
_ADAPTER_HEIGHT_M = 3.0


@dataclass(frozen=True, slots=True)
class SimReader:
    """A simulated wristband reader.

    read_prob: probability that one passage (or one presence period, or one BLE advert)
        yields a read.
    jitter_s: each successful read is late by a uniform 0..jitter_s seconds.
    dup_prob: after each read, probability of one more read of the same band (repeatedly, so
        the number of extra reads is geometric with mean dup_prob / (1 - dup_prob)).
    dup_gap_s: seconds between such repeated reads (RDM6300-class readers repeat a lingering
        card every few hundred ms).
    hold_prob: probability that a guest holds the band at the reader after a read: the reader
        then repeats it every ``dup_gap_s`` for a uniform ``hold_s`` seconds.
    stray_rate_hz: reads per second of tags that belong to no visit (bands of passers-by).
    outage_every_s: mean up-time (exponential) between line outages; 0: no outages. An outage
        lasts a uniform ``outage_s`` seconds (``Simulation.outages``); each read falling in
        one is kept in the reader's buffer with probability ``outage_buffer_prob`` and
        delivered in a burst within ``outage_burst_s`` after the line is back, else lost.
    ble: the adapter's radio (protocol ``ble``, presence readers only; given by default for
        protocol ``ble``). Jitter, repeats and holds do not apply to adverts.
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
    hold_prob: float = 0.0
    hold_s: tuple[float, float] = (2.0, 20.0)
    outage_every_s: float = 0.0
    outage_s: tuple[float, float] = (10.0, 60.0)
    outage_buffer_prob: float = 0.0
    outage_burst_s: float = 1.0
    ble: BleRadio | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.read_prob <= 1.0:
            raise ValueError(f"reader {self.id}: read_prob must be in [0, 1]")
        if not 0.0 <= self.dup_prob < 1.0:
            raise ValueError(f"reader {self.id}: dup_prob must be in [0, 1)")
        if self.jitter_s < 0 or self.dup_gap_s <= 0 or self.stray_rate_hz < 0:
            raise ValueError(f"reader {self.id}: jitter_s, stray_rate_hz >= 0, dup_gap_s > 0")
        if not 0.0 <= self.hold_prob <= 1.0 or not 0.0 <= self.outage_buffer_prob <= 1.0:
            raise ValueError(f"reader {self.id}: hold_prob, outage_buffer_prob in [0, 1]")
        for name in ("hold_s", "outage_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"reader {self.id}: {name} must be (lo, hi), 0 < lo <= hi")
        if self.outage_every_s < 0 or self.outage_burst_s < 0:
            raise ValueError(f"reader {self.id}: outage_every_s, outage_burst_s >= 0")
        if self.protocol == "ble" and self.ble is None:
            object.__setattr__(self, "ble", BleRadio())
        if self.ble is not None:
            if self.protocol != "ble" or self.role != "presence":
                raise ValueError(f"reader {self.id}: a BLE radio is a presence reader with "
                                 "protocol 'ble'")
            if self.jitter_s or self.dup_prob or self.hold_prob:
                raise ValueError(f"reader {self.id}: jitter, repeats and holds do not apply "
                                 "to BLE adverts")


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
            if r.ble is not None and r.ble.position_m is None and (
                    self.zones[zone_ids.index(r.zone)].area_m is None):
                raise ValueError(f"reader {r.id}: a BLE adapter needs position_m or its "
                                 "zone's area_m")

    def adapter_position(self, reader: SimReader) -> tuple[float, float, float]:
        """Where a BLE adapter is (x, y, height in m)."""
        assert reader.ble is not None
        if reader.ble.position_m is not None:
            return reader.ble.position_m
        area = self.zone(reader.zone).area_m
        assert area is not None
        return ((area[0] + area[2]) / 2, (area[1] + area[3]) / 2, _ADAPTER_HEIGHT_M)

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

    def shifted(self, dt_s: float) -> RateSchedule:
        """The same rate ``dt_s`` seconds later (knots moved by ``dt_s``)."""
        return RateSchedule(tuple((float(t) + dt_s, float(r)) for t, r in self.points))

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


@dataclass(frozen=True, slots=True)
class RoamingFlow:
    """Guests who wander a group of area zones (keyed in ``flows`` by any name).

    zones: the area zones of the group (no other flow may cover them; capacity not enforced).
    arrivals: guests/s coming into the group.
    first_zone: weights of the zone a guest goes to first (empty: equal weights).
    dwell_median_s, dwell_sigma: each stay in a zone is lognormal, as in :class:`AreaFlow`.
    move_prob: after each stay, the probability that the guest moves on to another zone of the
        group (uniformly among the others, with no time in between) rather than leaving.
    presence_period_s: how often an RFID presence reader gets a chance to read a guest.
    advert_interval_s: each guest's BLE band advertises every ``u`` s, ``u`` drawn uniformly
        in this range per guest (at a random phase), while the guest is in the group.
    wander_s: a guest moves to a new uniform random spot of the zone's ``area_m`` this often.
    """

    zones: tuple[str, ...]
    arrivals: RateSchedule
    dwell_median_s: float
    dwell_sigma: float = 0.6
    move_prob: float = 0.5
    first_zone: tuple[float, ...] = ()
    presence_period_s: float = 5.0
    advert_interval_s: tuple[float, float] = (0.3, 1.0)
    wander_s: float = 60.0

    def __post_init__(self) -> None:
        if self.wander_s <= 0:
            raise ValueError("RoamingFlow: wander_s must be > 0")
        if not self.zones or len(set(self.zones)) != len(self.zones):
            raise ValueError("RoamingFlow: zones must be distinct and not empty")
        if self.dwell_median_s <= 0 or self.dwell_sigma < 0 or self.presence_period_s <= 0:
            raise ValueError("RoamingFlow: dwell_median_s > 0, dwell_sigma >= 0, period > 0")
        if not 0.0 <= self.move_prob < 1.0:
            raise ValueError("RoamingFlow: move_prob must be in [0, 1)")
        if self.first_zone and (len(self.first_zone) != len(self.zones)
                                or min(self.first_zone) < 0 or sum(self.first_zone) <= 0):
            raise ValueError("RoamingFlow: first_zone needs one weight >= 0 per zone")
        lo, hi = self.advert_interval_s
        if not 0 < lo <= hi:
            raise ValueError("RoamingFlow: advert_interval_s must be (lo, hi), 0 < lo <= hi")


Flow = QueueFlow | AreaFlow | RoamingFlow


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


@dataclass(frozen=True, slots=True)
class _Roamers:
    """The stays of one roaming group (one row per stay, in guest then stay order)."""

    zone: IntArray  # index into the group's zones
    guest: IntArray  # index of the guest within the group
    arrive: FloatArray
    leave: FloatArray  # inf: still there at the end
    advert_ivl: FloatArray  # per guest (s)
    advert_phase: FloatArray  # per guest (s, in [0, ivl))


_MAX_STAYS = 64


def _simulate_roaming(flow: RoamingFlow, duration_s: float, rng: np.random.Generator) -> _Roamers:
    walk_in = poisson_times(flow.arrivals, duration_s, rng)
    n, m = len(walk_in), len(flow.zones)
    if m > 1 and flow.move_prob > 0:
        stays = np.minimum(rng.geometric(1.0 - flow.move_prob, n), _MAX_STAYS).astype(np.int64)
    else:
        stays = np.ones(n, dtype=np.int64)
    total = int(stays.sum())
    dwell = rng.lognormal(np.log(flow.dwell_median_s), flow.dwell_sigma, total)
    weights = np.asarray(flow.first_zone or (1.0,) * m, dtype=np.float64)
    first = rng.choice(m, size=n, p=weights / weights.sum())
    hop = rng.integers(1, m, size=total) if m > 1 else np.zeros(total, dtype=np.int64)
    guest = np.repeat(np.arange(n, dtype=np.int64), stays)
    start_of = np.cumsum(stays) - stays  # index of each guest's first stay
    is_first = np.zeros(total, dtype=bool)
    is_first[start_of] = True
    hop[is_first] = 0
    # Zone of stay j: the first zone plus the hops so far (mod m), so never the same twice.
    hops = np.cumsum(hop)
    zone = (first[guest] + hops - hops[start_of][guest]) % m
    # Stay boundaries: each stay ends where the next begins (exactly: one is the other).
    ends_cum = np.cumsum(dwell)
    base = (ends_cum - dwell)[start_of][guest]
    leave = walk_in[guest] + (ends_cum - base)
    arrive = np.empty(total, dtype=np.float64)
    arrive[1:] = leave[:-1]
    arrive[is_first] = walk_in
    keep = arrive < duration_s
    leave[leave >= duration_s] = np.inf
    lo, hi = flow.advert_interval_s
    ivl = rng.uniform(lo, hi, n)
    phase = rng.uniform(0.0, 1.0, n) * ivl
    return _Roamers(zone[keep].astype(np.int64), guest[keep], arrive[keep], leave[keep], ivl,
                    phase)


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
    """Times and visit indices (within the zone) of one RFID reader's successful reads."""
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
    if reader.hold_prob > 0:
        held = rng.random(len(ts)) < reader.hold_prob
        hold_s = rng.uniform(reader.hold_s[0], reader.hold_s[1], len(ts))
        extra = np.where(held, np.floor(hold_s / reader.dup_gap_s), 0).astype(np.int64)
        ts, visit = _repeat_reads(ts, visit, extra, reader.dup_gap_s)
    if reader.dup_prob > 0:
        extra = rng.geometric(1.0 - reader.dup_prob, len(ts)) - 1
        ts, visit = _repeat_reads(ts, visit, extra, reader.dup_gap_s)
    keep = ts < duration_s
    return ts[keep], visit[keep]


def _repeat_reads(
    ts: FloatArray, visit: IntArray, extra: IntArray, gap_s: float
) -> tuple[FloatArray, IntArray]:
    """Each read followed by ``extra`` more of the same band, ``gap_s`` apart."""
    base = np.repeat(np.arange(len(ts)), extra + 1)
    first = np.cumsum(extra + 1) - (extra + 1)
    nth = np.arange(len(base)) - np.repeat(first, extra + 1)
    return ts[base] + nth * gap_s, visit[base]


@dataclass(frozen=True, slots=True)
class _Spots:
    """Where roaming guests stand: visit ``i`` spends ``[arrive + k·wander, ...)`` at spot
    ``first[i] + k`` (x, y in m); visits outside a floor plan have none (count 0)."""

    wander_s: FloatArray  # per visit
    first: IntArray  # per visit
    count: IntArray  # per visit
    xy: FloatArray  # (n, 2)


def _draw_spots(visits: np.ndarray, layout: Layout, wander_s: FloatArray, duration_s: float,
                rng: np.random.Generator) -> _Spots:
    area = np.array([z.area_m if z.area_m is not None else (0.0, 0.0, 0.0, 0.0)
                     for z in layout.zones], dtype=np.float64).reshape(-1, 4)
    has = np.array([z.area_m is not None for z in layout.zones], dtype=bool)
    end = np.minimum(visits["leave_ts"], duration_s)
    stay = np.maximum(end - visits["arrive_ts"], 0.0)
    count = np.where(has[visits["zone"]] & np.isfinite(wander_s),
                     np.floor(stay / np.where(np.isfinite(wander_s), wander_s, 1.0)) + 1, 0
                     ).astype(np.int64)
    first = np.cumsum(count) - count
    zone = np.repeat(visits["zone"], count)
    u = rng.random((len(zone), 2))
    xy = area[zone, :2] + u * (area[zone, 2:] - area[zone, :2])
    return _Spots(wander_s, first, count, xy)


def _ble_events(
    reader: SimReader,
    radio: BleRadio,
    where: tuple[float, float, float],
    visits: np.ndarray,
    spots: _Spots,
    ivl: FloatArray,
    phase: FloatArray,
    duration_s: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, IntArray, FloatArray]:
    """Times, visit indices and RSSI (dBm) of the adverts one BLE adapter at ``where`` hears,
    of the visits with spots. ``ivl``, ``phase``: each visit's band's advert interval and
    phase (s)."""
    arrive = visits["arrive_ts"]
    end = np.minimum(visits["leave_ts"], duration_s)
    # The band's adverts are at phase + k * ivl; those within [arrive, end) belong to the visit.
    safe_ivl = np.where(spots.count > 0, ivl, 1.0)
    k0 = np.ceil((arrive - phase) / safe_ivl).astype(np.int64)
    k1 = np.ceil((end - phase) / safe_ivl).astype(np.int64)
    counts = np.where(spots.count > 0, np.maximum(k1 - k0, 0), 0)
    idx = np.repeat(np.arange(len(visits), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    k = k0[idx] + np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
    ts = phase[idx] + k * ivl[idx]
    heard = rng.random(len(ts)) < reader.read_prob
    seg = np.minimum(np.floor((ts - arrive[idx]) / spots.wander_s[idx]).astype(np.int64),
                     spots.count[idx] - 1)
    xy = spots.xy[spots.first[idx] + np.maximum(seg, 0)]
    dist = np.sqrt((xy[:, 0] - where[0]) ** 2 + (xy[:, 1] - where[1]) ** 2
                   + (where[2] - _BAND_HEIGHT_M) ** 2)
    rssi = radio.rssi(dist, rng)
    ok = heard & (rssi >= radio.sensitivity_dbm) & (ts < duration_s)
    return ts[ok], idx[ok], rssi[ok]


def _outage_windows(reader: SimReader, duration_s: float, rng: np.random.Generator) -> FloatArray:
    """(start, end) of each line outage of a reader in ``[0, duration_s)``, shape (n, 2)."""
    out: list[tuple[float, float]] = []
    t = float(rng.exponential(reader.outage_every_s))
    while t < duration_s:
        d = float(rng.uniform(reader.outage_s[0], reader.outage_s[1]))
        out.append((t, min(t + d, duration_s)))
        t += d + float(rng.exponential(reader.outage_every_s))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _through_outages(
    rec: np.ndarray, windows: FloatArray, reader: SimReader, rng: np.random.Generator
) -> np.ndarray:
    """The reads (``READ_DTYPE``) that get through a reader's outages: a read stamped during
    one is lost, or (``outage_buffer_prob``) delivered within ``outage_burst_s`` after it."""
    if len(windows) == 0 or len(rec) == 0:
        return rec
    w = np.searchsorted(windows[:, 0], rec["ts"], side="right") - 1
    inside = (w >= 0) & (rec["ts"] < windows[np.maximum(w, 0), 1])
    kept = rng.random(len(rec)) < reader.outage_buffer_prob
    late = windows[np.maximum(w, 0), 1] + rng.uniform(0.0, reader.outage_burst_s, len(rec))
    out = rec.copy()
    out["ts"] = np.where(inside, late, rec["ts"])
    return out[~inside | kept]


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

    reads: ``READ_DTYPE`` records sorted by ``ts`` (ties by reader index), all in
        ``[0, duration_s)``.
    visits: ``VISIT_DTYPE`` records, one per admitted guest visit, by zone then arrival.
    refused: per area zone, walk-ins turned away at capacity.
    outages: per reader with outages, their (start, end) s, shape (n, 2).
    warmup_s: how long the crowd had been moving before t = 0 (see ``simulate``).
    """

    layout: Layout
    duration_s: float
    reads: np.ndarray
    visits: np.ndarray
    refused: dict[str, int]
    _truth: dict[str, _ZoneTruth]
    outages: dict[str, FloatArray] = field(default_factory=dict)
    warmup_s: float = 0.0

    # -- reads ---------------------------------------------------------------------------

    def reads_for(self, reader_id: str) -> np.ndarray:
        """The reads of one reader (``READ_DTYPE``), in time order."""
        return self.reads[self.reads["reader"] == self.layout.reader_index(reader_id)]

    def read_schedule(self, reader_id: str) -> list[tuple[float, bytes]]:
        """``(ts, 5 tag bytes)`` of one reader in time order: what a virtual serial reader
        sends (EM4100 readers; BLE adapters hear adverts, which this does not encode)."""
        r = self.reads_for(reader_id)
        return [(float(t), tag_bytes(g)) for t, g in zip(r["ts"], r["tag"], strict=True)]

    def visits_in(self, zone_id: str) -> np.ndarray:
        """The visits (``VISIT_DTYPE``) of one zone, in arrival order."""
        return self.visits[self.visits["zone"] == self.layout.zone_index(zone_id)]

    def departures(self, zone_id: str) -> np.ndarray:
        """The visits to one zone that ended within the run (``DEPARTURE_DTYPE``), in leave
        order: when each guest really left the zone, the latest read of the visit stamped
        before then (by any reader: a BLE adapter of a neighbouring zone too; NaN when never
        read), and where the guest went next (-1: out of the venue)."""
        zi = self.layout.zone_index(zone_id)
        v = self.visits
        ended = np.flatnonzero((v["zone"] == zi) & np.isfinite(v["leave_ts"]))
        ended = ended[np.argsort(v["leave_ts"][ended], kind="stable")]
        out = np.zeros(len(ended), dtype=DEPARTURE_DTYPE)
        out["visit"] = ended
        for name in ("guest", "tag", "arrive_ts", "leave_ts"):
            out[name] = v[name][ended]
        # Latest read of each visit stamped before its end.
        r = self.reads
        own = r["visit"] >= 0
        rv = r["visit"][own]
        before = r["ts"][own] < v["leave_ts"][rv]
        last = np.full(len(v), -np.inf)
        np.maximum.at(last, rv[before], r["ts"][own][before])
        out["last_read_ts"] = np.where(np.isfinite(last[ended]), last[ended], np.nan)
        # The guest's next visit starts exactly when this one ends.
        order = np.lexsort((v["arrive_ts"], v["guest"]))
        nxt = np.full(len(v), -1, dtype=np.int32)
        same = (v["guest"][order[1:]] == v["guest"][order[:-1]]) & (
            v["arrive_ts"][order[1:]] == v["leave_ts"][order[:-1]])
        nxt[order[:-1][same]] = v["zone"][order[1:][same]]
        out["next_zone"] = nxt[ended]
        return out

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


def _roaming_groups(layout: Layout, flows: Mapping[str, Flow]) -> list[RoamingFlow]:
    """The roaming flows of ``flows`` (in their order), checked against the layout."""
    groups = [f for f in flows.values() if isinstance(f, RoamingFlow)]
    covered: set[str] = set()
    for g in groups:
        for zid in g.zones:
            if layout.zone(zid).kind != "area":
                raise ValueError(f"RoamingFlow: zone {zid!r} is not an area zone")
            if zid in covered or not isinstance(flows.get(zid, g), RoamingFlow):
                raise ValueError(f"zone {zid!r} has more than one flow")
            covered.add(zid)
    for r in layout.readers:
        if r.ble is not None and r.zone not in covered:
            raise ValueError(f"reader {r.id}: BLE adapters hear roaming guests only; zone "
                             f"{r.zone!r} has no RoamingFlow")
    return groups


_F = TypeVar("_F", QueueFlow, AreaFlow, RoamingFlow)


def _shift_flow(flow: _F, dt_s: float) -> _F:
    """The flow with its schedules ``dt_s`` seconds later."""
    if dt_s == 0:
        return flow
    if isinstance(flow, QueueFlow):
        return replace(flow, arrivals=flow.arrivals.shifted(dt_s),
                       service=flow.service.shifted(dt_s))
    return replace(flow, arrivals=flow.arrivals.shifted(dt_s))


def _shift_truth(zt: _ZoneTruth, dt_s: float) -> _ZoneTruth:
    if dt_s == 0:
        return zt
    return replace(zt, arrive_sorted=zt.arrive_sorted - dt_s, leave_sorted=zt.leave_sorted - dt_s,
                   seats=None if zt.seats is None else zt.seats - dt_s)


def simulate(
    layout: Layout,
    flows: Mapping[str, Flow],
    duration_s: float,
    *,
    seed: int,
    warmup_s: float = 0.0,
) -> Simulation:
    """Run the crowd model for ``duration_s`` simulated seconds.

    ``flows`` maps each zone id to its :class:`QueueFlow` (queue zones) or :class:`AreaFlow`
    (area zones), and any other name to a :class:`RoamingFlow` (a group of area zones); a zone
    without a flow stays empty.

    ``warmup_s``: the crowd starts ``warmup_s`` seconds before t = 0 (schedules are in the
    agent's time: their values before 0 apply to the warm-up). Reads stamped before 0 are
    lost (nobody was listening); visits may arrive before 0, and the truth counts them.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    if not (np.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError("warmup_s must be finite and >= 0")
    groups = _roaming_groups(layout, flows)
    # Internally the run spans [0, horizon); times are shifted back by warmup_s at the end.
    horizon = float(duration_s) + warmup_s
    root = np.random.SeedSequence(seed)
    zone_seeds = root.spawn(len(layout.zones))
    reader_seeds = root.spawn(len(layout.readers))
    tag_rng = np.random.default_rng(root.spawn(1)[0])
    group_seeds = root.spawn(len(groups))  # after the others: their streams stay as they were
    spot_seed = root.spawn(1)[0] if groups else None

    # zone index -> (arrive, leave, provisional guest key) in arrival order
    empty = np.zeros(0, dtype=np.float64)
    per_zone: dict[int, tuple[FloatArray, FloatArray, IntArray]] = {}
    truth: dict[str, _ZoneTruth] = {}
    refused: dict[str, int] = {}
    roam_of: dict[int, RoamingFlow] = {}  # zone index -> its roaming flow
    band_ivl: list[FloatArray] = []
    band_phase: list[FloatArray] = []
    n_plain = 0  # provisional guest keys: plain visits first, then roaming guests
    for zi, zone in enumerate(layout.zones):
        rng = np.random.default_rng(zone_seeds[zi])
        flow = flows.get(zone.id)
        if isinstance(flow, RoamingFlow):
            continue
        zt: _ZoneTruth
        if flow is None:
            arrive, leave, zt = empty, empty, _ZoneTruth(empty, empty, empty)
        elif isinstance(flow, QueueFlow):
            if zone.kind != "queue":
                raise ValueError(f"zone {zone.id!r} is an area zone but has a QueueFlow")
            arrive, leave, zt = _simulate_queue(_shift_flow(flow, warmup_s), horizon, rng)
        else:
            if zone.kind != "area":
                raise ValueError(f"zone {zone.id!r} is a queue zone but has an AreaFlow")
            arrive, leave, zt, refused[zone.id] = _simulate_area(
                _shift_flow(flow, warmup_s), zone.capacity, horizon, rng)
        truth[zone.id] = zt
        per_zone[zi] = (arrive, leave, np.arange(n_plain, n_plain + len(arrive)))
        n_plain += len(arrive)
    key_base = n_plain
    for gi, g in enumerate(groups):
        ro = _simulate_roaming(_shift_flow(g, warmup_s), horizon,
                               np.random.default_rng(group_seeds[gi]))
        for k, zid in enumerate(g.zones):
            zi = layout.zone_index(zid)
            roam_of[zi] = g
            mine = np.flatnonzero(ro.zone == k)
            mine = mine[np.argsort(ro.arrive[mine], kind="stable")]
            arrive, leave = ro.arrive[mine], ro.leave[mine]
            order = np.argsort(leave, kind="stable")
            truth[zid] = _ZoneTruth(arrive, leave[order], (leave - arrive)[order])
            refused[zid] = 0
            per_zone[zi] = (arrive, leave, key_base + ro.guest[mine])
        band_ivl.append(ro.advert_ivl)
        band_phase.append(ro.advert_phase)
        key_base += len(ro.advert_ivl)

    n_visits = sum(len(a) for a, _, _ in per_zone.values())
    visits = np.zeros(n_visits, dtype=VISIT_DTYPE)
    offsets: dict[int, int] = {}
    keys = np.zeros(n_visits, dtype=np.int64)
    pos = 0
    for zi in range(len(layout.zones)):
        arrive, leave, key = per_zone[zi]
        offsets[zi] = pos
        sl = slice(pos, pos + len(arrive))
        visits["zone"][sl] = zi
        visits["arrive_ts"][sl] = arrive
        visits["leave_ts"][sl] = leave
        keys[sl] = key
        pos += len(arrive)
    # Guests are numbered in order of their first visit (for plain flows: visit order).
    uniq, first_at, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first_at, kind="stable")] = np.arange(len(uniq))
    visits["guest"] = rank[inverse]
    n_guests = len(uniq)
    # Band advert timing per visit, from its roaming guest (group-local guest key).
    all_ivl = np.concatenate([np.ones(n_plain), *band_ivl])
    all_phase = np.concatenate([np.zeros(n_plain), *band_phase])
    spots: _Spots | None = None
    if spot_seed is not None and any(r.ble is not None for r in layout.readers):
        wander = np.full(n_visits, np.inf)
        for zi, g in roam_of.items():
            wander[visits["zone"] == zi] = g.wander_s
        spots = _draw_spots(visits, layout, wander, horizon, np.random.default_rng(spot_seed))

    # Strays are drawn first so that all tags can be drawn at once, distinct across the run.
    reader_rngs = [np.random.default_rng(s) for s in reader_seeds]
    stray_counts = [
        int(rng.poisson(r.stray_rate_hz * duration_s))
        for rng, r in zip(reader_rngs, layout.readers, strict=True)
    ]
    tags = unique_tags(n_guests + sum(stray_counts), tag_rng)
    visits["tag"] = tags[visits["guest"]]
    stray_tags = tags[n_guests:]

    parts: list[np.ndarray] = []
    outages: dict[str, FloatArray] = {}
    stray_pos = 0
    for ri, reader in enumerate(layout.readers):
        rng = reader_rngs[ri]
        n_stray = stray_counts[ri]
        zi = layout.zone_index(reader.zone)
        rssi: FloatArray | None = None
        if reader.ble is not None:
            assert spots is not None
            ts, vidx, rssi = _ble_events(reader, reader.ble, layout.adapter_position(reader),
                                         visits, spots, all_ivl[keys], all_phase[keys],
                                         horizon, rng)
        else:
            arrive, leave, _ = per_zone[zi]
            flow = flows.get(reader.zone)
            if zi in roam_of:
                period = roam_of[zi].presence_period_s
            elif isinstance(flow, AreaFlow):
                period = flow.presence_period_s
            else:
                period = _QUEUE_PRESENCE_S
            ts, local = _read_events(reader, arrive, leave, period, horizon, rng)
            vidx = local + offsets[zi]
        stray_ts = rng.uniform(0.0, duration_s, n_stray)
        ts = ts - warmup_s
        ok = ts >= 0.0
        ts, vidx = ts[ok], vidx[ok]
        rec = np.zeros(len(ts) + n_stray, dtype=READ_DTYPE)
        rec["reader"] = ri
        rec["rssi"] = np.nan
        rec["ts"][: len(ts)] = ts
        rec["visit"][: len(ts)] = vidx
        rec["tag"][: len(ts)] = visits["tag"][vidx]
        rec["ts"][len(ts):] = stray_ts
        rec["visit"][len(ts):] = -1
        rec["tag"][len(ts):] = stray_tags[stray_pos: stray_pos + n_stray]
        if reader.ble is not None and rssi is not None:
            rec["rssi"][: len(ts)] = rssi[ok]
            # other bands passing by, 10-40 m away
            far = rng.uniform(10.0, 40.0, n_stray)
            rec["rssi"][len(ts):] = np.maximum(reader.ble.rssi(far, rng),
                                               reader.ble.sensitivity_dbm)
        stray_pos += n_stray
        if reader.outage_every_s > 0:
            windows = _outage_windows(reader, duration_s, rng)
            outages[reader.id] = windows
            rec = _through_outages(rec, windows, reader, rng)
            rec = rec[rec["ts"] < duration_s]
        parts.append(rec)
    visits["arrive_ts"] -= warmup_s
    visits["leave_ts"] -= warmup_s
    truth = {z: _shift_truth(zt, warmup_s) for z, zt in truth.items()}
    reads = np.concatenate(parts) if parts else np.zeros(0, dtype=READ_DTYPE)
    reads = reads[np.lexsort((reads["reader"], reads["ts"]))]
    return Simulation(layout, float(duration_s), reads, visits, refused, truth, outages,
                      float(warmup_s))
