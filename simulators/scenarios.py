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

``demo_rush`` is short enough to play in real time. The others run for hours of simulated
time and are meant for offline accuracy measurement (``simulate(...)`` then compare the
agent's kernels with the truth on a time grid). Rates are in guests/s, times in s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from simulators.crowd import (
    AreaFlow,
    Flow,
    Layout,
    QueueFlow,
    RateSchedule,
    ReaderRole,
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

    def run(self, *, seed: int) -> Simulation:
        return simulate(self.layout, self.flows, self.duration_s, seed=seed)


def standard_layout(
    *,
    read_prob: float = 0.9,
    presence_read_prob: float = 0.8,
    jitter_s: float = 0.0,
    dup_prob: float = 0.0,
    stray_rate_hz: float = 0.0,
    dino_capacity: int = 400,
    jungle_capacity: int = 300,
    plaza_capacity: int = 800,
) -> Layout:
    """The three zones and five readers every scenario uses."""

    def reader(rid: str, zone: str, role: ReaderRole, prob: float) -> SimReader:
        return SimReader(rid, zone, role, read_prob=prob, jitter_s=jitter_s,
                         dup_prob=dup_prob, stray_rate_hz=stray_rate_hz)

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


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    f.__name__: f
    for f in (demo_rush, steady_day, morning_rush, ride_breakdown, parade, noisy_radio,
              area_near_capacity)
}


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name`` (see ``SCENARIOS``)."""
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
