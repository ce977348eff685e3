"""Named scenarios: a venue layout, what happens in each zone, and for how long.

Every scenario uses the same three zones and five readers (:func:`standard_layout`), so one
gateway config serves them all:

==============  =====  ==============================  ==========================
zone            kind   readers (role)                  stands for
==============  =====  ==============================  ==========================
dino-queue      queue  dino-entry, dino-exit           a coaster, 1 seat/dispatch
jungle-queue    queue  jungle-entry, jungle-exit       a boat ride
plaza           area   plaza-gate (presence)           a plaza, food court
==============  =====  ==============================  ==========================

``ble_areas`` is the exception: two area zones with a BLE adapter each (:func:`ble_layout`).

``demo_rush`` is short enough to play in real time. The others run for hours of simulated
time and are meant for offline accuracy measurement (``simulate(...)`` then compare the
agent's kernels with the truth on a time grid). Rates are in guests/s, times in s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from simulators.crowd import (
    AreaFlow,
    BleRadio,
    Flow,
    Layout,
    QueueFlow,
    RateSchedule,
    ReaderRole,
    RoamingFlow,
    SimReader,
    Simulation,
    SimZone,
    simulate,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A layout, a flow per zone and a duration (simulated s)."""

    name: str
    description: str
    layout: Layout
    flows: Mapping[str, Flow]
    duration_s: float
    realtime: bool = False  # short enough to replay at wall-clock speed
    warmup_s: float = 0.0  # the crowd was moving this long before the agent started

    def run(self, *, seed: int) -> Simulation:
        return simulate(self.layout, self.flows, self.duration_s, seed=seed,
                        warmup_s=self.warmup_s)


def standard_layout(
    *,
    read_prob: float = 0.9,
    presence_read_prob: float = 0.8,
    jitter_s: float = 0.0,
    dup_prob: float = 0.0,
    stray_rate_hz: float = 0.0,
    hold_prob: float = 0.0,
    outage_every_s: float = 0.0,
    outage_buffer_prob: float = 0.0,
    dino_capacity: int = 400,
    jungle_capacity: int = 300,
    plaza_capacity: int = 800,
) -> Layout:
    """The three zones and five readers every scenario uses (reader faults: see
    :class:`simulators.crowd.SimReader`; holds apply to the entry and exit readers)."""

    def reader(rid: str, zone: str, role: ReaderRole, prob: float) -> SimReader:
        return SimReader(rid, zone, role, read_prob=prob, jitter_s=jitter_s,
                         dup_prob=dup_prob, stray_rate_hz=stray_rate_hz,
                         hold_prob=0.0 if role == "presence" else hold_prob,
                         outage_every_s=outage_every_s, outage_buffer_prob=outage_buffer_prob)

    return Layout(
        zones=(
            SimZone("dino-queue", "queue", dino_capacity),
            SimZone("jungle-queue", "queue", jungle_capacity),
            SimZone("plaza", "area", plaza_capacity),
        ),
        readers=(
            reader("dino-entry", "dino-queue", "entry", read_prob),
            reader("dino-exit", "dino-queue", "exit", read_prob),
            reader("jungle-entry", "jungle-queue", "entry", read_prob),
            reader("jungle-exit", "jungle-queue", "exit", read_prob),
            reader("plaza-gate", "plaza", "presence", presence_read_prob),
        ),
    )


def _pw(*points: tuple[float, float]) -> RateSchedule:
    return RateSchedule(tuple(points))


def _const(rate: float) -> RateSchedule:
    return RateSchedule.constant(rate)


# --------------------------------------------------------------------------------------------
# Real-time demo


def demo_rush() -> Scenario:
    """180 s: calm, a rush at Dino Ride, a second load station, the queue drains.

    dino-queue (walk 5 s, one guest every 2 s while service is 0.5/s):
      0-15 s    arrivals 0.4/s against 0.5/s: 0-5 guests in line, waits ~6 s.
      17-60 s   arrivals 1.5/s: the line grows ~1 guest/s to ~50-60 guests at t = 61 s.
                The wait of a guest joining passes 30 s at t ≈ 25 s and reaches ~55 s;
                the wait of the latest guest to board passes 30 s at t ≈ 55-60 s (about 45 s
                into the rush).
      62 s on   arrivals 0.1/s.
      70-72 s   a second load station opens: service 0.5 -> 1.2/s. The line is down to 0-2
                guests by t ≈ 110-125 s.
      The median wait of guests who boarded in the last 60 s (the ``wait_s`` truth) lags:
      it passes 30 s at t ≈ 80 s, peaks at ~45-50 s around t = 120-165 s, and is back to
      ~5 s at t = 180 s.
    jungle-queue: steady 0.3/s against 0.6/s, walk 8 s: waits ~10 s (a nudge target).
    plaza: 0.3/s walk-ins, 0.8/s from 20 s to 70 s, dwell median 30 s, capacity 32:
      occupancy ~10, up to ~20-32 (near capacity) late in the rush.
    """
    layout = standard_layout(
        read_prob=0.95, presence_read_prob=0.8, jitter_s=0.2, dup_prob=0.2,
        dino_capacity=60, jungle_capacity=40, plaza_capacity=32,
    )
    flows: dict[str, Flow] = {
        "dino-queue": QueueFlow(
            arrivals=_pw((0, 0.4), (15, 0.4), (17, 1.5), (60, 1.5), (62, 0.1)),
            service=_pw((0, 0.5), (70, 0.5), (72, 1.2)),
            walk_s=5.0,
        ),
        "jungle-queue": QueueFlow(arrivals=_const(0.3), service=_const(0.6), walk_s=8.0),
        "plaza": AreaFlow(
            arrivals=_pw((0, 0.3), (15, 0.3), (20, 0.8), (70, 0.8), (75, 0.3)),
            dwell_median_s=30.0, dwell_sigma=0.5, presence_period_s=3.0,
        ),
    }
    return Scenario("demo_rush", demo_rush.__doc__ or "", layout, flows, 180.0, realtime=True)


# --------------------------------------------------------------------------------------------
# Offline scenarios (simulated time only)

_H = 3600.0


def _day_flows() -> dict[str, Flow]:
    """A 10-hour park day (09:00-19:00 as t = 0-36000 s)."""
    return {
        # Coaster: 1800 guests/h in trains of 20, 60 s walk. Demand above capacity from
        # 09:00 to 11:30 builds ~400 guests (~15 min); just under capacity all day, so the
        # line wanders between ~10 and ~18 min; drains at dusk.
        "dino-queue": QueueFlow(
            arrivals=_pw((0, 0.3), (0.5 * _H, 0.6), (1.5 * _H, 0.55), (2.5 * _H, 0.49),
                         (8 * _H, 0.49), (9 * _H, 0.3), (10 * _H, 0.1)),
            service=_const(0.5), batch=20, walk_s=60.0,
        ),
        # Boat ride: boats of 10, a queue only around lunch.
        "jungle-queue": QueueFlow(
            arrivals=_pw((0, 0.15), (3 * _H, 0.3), (5 * _H, 0.34), (6 * _H, 0.25),
                         (10 * _H, 0.1)),
            service=_const(0.3), batch=10, walk_s=45.0,
        ),
        "plaza": AreaFlow(
            arrivals=_pw((0, 0.1), (2 * _H, 0.3), (8 * _H, 0.3), (10 * _H, 0.1)),
            dwell_median_s=1200.0, dwell_sigma=0.6, presence_period_s=60.0,
        ),
    }


def steady_day() -> Scenario:
    """10 h: Dino's line builds to a ~15 min wait by 11:00 and holds at ~10-18 min until it
    drains at dusk; Jungle queues only at lunch (up to ~13 min); plaza ~400-470 of 800."""
    return Scenario("steady_day", steady_day.__doc__ or "", standard_layout(), _day_flows(),
                    10 * _H)


def morning_rush() -> Scenario:
    """2 h: rope drop. 2.0/s head for Dino for the first 10 min (capacity 0.5/s), then
    0.25/s: the line jumps to ~1100 guests (a ~35-38 min wait at 12 min) and drains to walk
    time by ~1 h 40 min."""
    flows = _day_flows()
    flows["dino-queue"] = QueueFlow(
        arrivals=_pw((0, 2.0), (600, 2.0), (900, 0.25)),
        service=_const(0.5), batch=20, walk_s=60.0,
    )
    return Scenario("morning_rush", morning_rush.__doc__ or "", standard_layout(), flows,
                    2 * _H)


def ride_breakdown() -> Scenario:
    """3 h: Dino (0.4/s against 0.5/s) stops from t = 1 h to 1 h 20 min; while it is down
    arrivals fall to 0.25/s (guests see the sign). The queue gains ~300 guests, then drains
    at ~0.1/s."""
    flows = _day_flows()
    flows["dino-queue"] = QueueFlow(
        arrivals=_pw((0, 0.4), (_H, 0.4), (_H + 60, 0.25), (_H + 1200, 0.25),
                     (_H + 1260, 0.4)),
        service=_pw((0, 0.5), (_H, 0.5), (_H + 1, 0.0), (_H + 1200, 0.0), (_H + 1201, 0.5)),
        batch=20, walk_s=60.0,
    )
    return Scenario("ride_breakdown", ride_breakdown.__doc__ or "", standard_layout(), flows,
                    3 * _H)


def parade() -> Scenario:
    """2 h: a parade from t = 1 h to 1 h 30 min draws everyone to the plaza (2/s walk-ins,
    30 min dwell): both queues empty to walk time, the plaza fills toward 1500."""
    flows: dict[str, Flow] = {
        "dino-queue": QueueFlow(
            arrivals=_pw((0, 0.5), (_H - 300, 0.5), (_H, 0.05), (1.5 * _H, 0.05),
                         (1.5 * _H + 300, 0.5)),
            service=_const(0.5), batch=20, walk_s=60.0,
        ),
        "jungle-queue": QueueFlow(
            arrivals=_pw((0, 0.3), (_H - 300, 0.3), (_H, 0.03), (1.5 * _H, 0.03),
                         (1.5 * _H + 300, 0.3)),
            service=_const(0.3), batch=10, walk_s=45.0,
        ),
        "plaza": AreaFlow(
            arrivals=_pw((0, 0.2), (_H - 600, 0.2), (_H - 300, 2.0), (1.25 * _H, 2.0),
                         (1.25 * _H + 300, 0.2)),
            dwell_median_s=1800.0, dwell_sigma=0.4, presence_period_s=60.0,
        ),
    }
    return Scenario("parade", parade.__doc__ or "", standard_layout(plaza_capacity=1500),
                    flows, 2 * _H)


def noisy_radio() -> Scenario:
    """The first 3 h of the steady day (Dino's line builds to ~15 min) through bad readers:
    60 % read rate at the queues, 50 % presence, reads late by up to 1.5 s, half of them
    repeated, and stray reads of passers-by at 0.02/s per reader."""
    layout = standard_layout(read_prob=0.6, presence_read_prob=0.5, jitter_s=1.5,
                             dup_prob=0.5, stray_rate_hz=0.02)
    return Scenario("noisy_radio", noisy_radio.__doc__ or "", layout, _day_flows(), 3 * _H)


def area_near_capacity() -> Scenario:
    """90 min: the plaza (capacity 300) gets 0.5/s walk-ins with a 15 min median dwell, so
    demand (~500) exceeds capacity after ~15 min and walk-ins are turned away."""
    flows = _day_flows()
    flows["plaza"] = AreaFlow(
        arrivals=_pw((0, 0.1), (600, 0.5)),
        dwell_median_s=900.0, dwell_sigma=0.5, presence_period_s=30.0,
    )
    return Scenario("area_near_capacity", area_near_capacity.__doc__ or "",
                    standard_layout(plaza_capacity=300), flows, 1.5 * _H)


def queue_at_start() -> Scenario:
    """2 h: the gateway comes up on a long line. For the hour before t = 0 (the warm-up) 0.75/s
    joined Dino (capacity 0.5/s, trains of 20): ~900-1050 guests are in line at t = 0, all
    read at the entry before the agent was running, so the agent sees only their exits. A
    guest joining at t = 0 waits 30-34 min; the guests boarding then joined when the line was
    shorter (~20 min), and the boarding wait peaks at 30-34 min half an hour in. From t = 0 on
    0.35/s join: the line drains at ~0.15/s, to a few dozen guests by the end. Jungle and the
    plaza run their morning (their guests, too, came before the agent)."""
    flows = _day_flows()
    flows["dino-queue"] = QueueFlow(
        arrivals=_pw((-_H, 0.75), (0, 0.75), (60, 0.35)),
        service=_const(0.5), batch=20, walk_s=60.0,
    )
    return Scenario("queue_at_start", queue_at_start.__doc__ or "", standard_layout(), flows,
                    2 * _H, warmup_s=_H)


def glitchy_lines() -> Scenario:
    """The first 3 h of the steady day (Dino's line builds to ~15 min) through readers with
    bad lines: every reader's line drops out for 10-60 s every ~15 min on average; half of the
    reads stamped during an outage are lost, the other half arrive in a burst within 1 s of the
    line coming back (late, out of their time). 10 % of guests hold their band at the entry or
    exit reader for 2-20 s (a read every 0.3 s), and a fifth of reads are repeated."""
    layout = standard_layout(read_prob=0.9, presence_read_prob=0.8, dup_prob=0.2,
                             hold_prob=0.1, outage_every_s=900.0, outage_buffer_prob=0.5)
    return Scenario("glitchy_lines", glitchy_lines.__doc__ or "", layout, _day_flows(), 3 * _H)


# --------------------------------------------------------------------------------------------
# BLE areas


def ble_layout(*, read_prob: float = 0.6, sigma_db: float = 5.0) -> Layout:
    """Two neighbouring area zones sharing a wall, with a BLE adapter on the ceiling (3 m) at
    the centre of each; each adapter also hears the other zone's wristbands, weaker.

    ==============  =====  ========  ===============  ========================================
    zone            kind   capacity  floor (m)        adapter (protocol ble, role presence)
    ==============  =====  ========  ===============  ========================================
    lounge          area   30        x 0-20, y 0-15   lounge-ble at (10, 7.5)
    arcade          area   40        x 20-44, y 0-15  arcade-ble at (32, 7.5)
    ==============  =====  ========  ===============  ========================================

    RSSI at 1 m -59 dBm, path loss exponent 2.5, noise ``sigma_db``, sensitivity -98 dBm: a
    guest in the middle of the lounge is heard at ~-66 dBm by its adapter and ~-93 dBm by the
    arcade's; one by the shared wall at ~-84 and ~-86 dBm. ``read_prob`` of the adverts reach
    each adapter (a Pi's scanner misses many).
    """
    def adapter(rid: str, zone: str) -> SimReader:
        return SimReader(rid, zone, "presence", protocol="ble", read_prob=read_prob,
                         ble=BleRadio(sigma_db=sigma_db))

    return Layout(
        zones=(SimZone("lounge", "area", 30, area_m=(0.0, 0.0, 20.0, 15.0)),
               SimZone("arcade", "area", 40, area_m=(20.0, 0.0, 44.0, 15.0))),
        readers=(adapter("lounge-ble", "lounge"), adapter("arcade-ble", "arcade")),
    )


def ble_areas() -> Scenario:
    """2 h of iBeacon wristbands in two neighbouring areas (:func:`ble_layout`), each band
    advertising every 0.3-1 s (its own interval), 40 % of adverts lost, RSSI noise 5 dB.

    Guests come in at 0.04/s (0.06/s in the first 10 min), 60 % to the lounge first, and stand
    at a new spot of their area every minute; each stay is lognormal (median 6 min), after
    which half move on to the other area and half leave (their band is not heard again):
    ~30-40 bands are about, 15-20 in the lounge. From 60 to 65 min a show lets out (0.15/s):
    65-80 bands, and the lounge passes 90 % of its 30 for 10-15 min. From 100 min on few come
    (0.005/s) and both areas empty toward the end.
    """
    flow = RoamingFlow(
        zones=("lounge", "arcade"),
        arrivals=_pw((0, 0.06), (600, 0.06), (660, 0.04), (3600, 0.04), (3660, 0.15),
                     (3900, 0.15), (3960, 0.04), (6000, 0.04), (6060, 0.005)),
        dwell_median_s=360.0, dwell_sigma=0.6, move_prob=0.5, first_zone=(0.6, 0.4),
        advert_interval_s=(0.3, 1.0),
    )
    return Scenario("ble_areas", ble_areas.__doc__ or "", ble_layout(), {"guests": flow},
                    2 * _H)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    f.__name__: f
    for f in (demo_rush, steady_day, morning_rush, ride_breakdown, parade, noisy_radio,
              area_near_capacity, queue_at_start, glitchy_lines, ble_areas)
}


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name`` (see ``SCENARIOS``)."""
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
