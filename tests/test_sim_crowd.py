"""The crowd model: conservation, FIFO, rates, read probabilities, determinism, ground truth."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.crowd import (
    AreaFlow,
    Layout,
    QueueFlow,
    RateSchedule,
    SimReader,
    Simulation,
    SimZone,
    _assign_seats,
    poisson_times,
    simulate,
    tag_bytes,
)
from simulators.scenarios import steady_day


def queue_layout(**reader_kw: Any) -> Layout:
    return Layout(
        zones=(SimZone("q", "queue", 10_000), SimZone("a", "area", 10_000)),
        readers=(
            SimReader("q-in", "q", "entry", **reader_kw),
            SimReader("q-out", "q", "exit", **reader_kw),
            SimReader("a-pres", "a", "presence", **reader_kw),
        ),
    )


def run(
    arrivals: RateSchedule,
    service: RateSchedule,
    *,
    duration_s: float = 3600.0,
    seed: int = 1,
    batch: int = 1,
    walk_s: float = 10.0,
    area: AreaFlow | None = None,
    **reader_kw: float,
) -> Simulation:
    flows: dict[str, QueueFlow | AreaFlow] = {
        "q": QueueFlow(arrivals, service, batch=batch, walk_s=walk_s)}
    if area is not None:
        flows["a"] = area
    return simulate(queue_layout(**reader_kw), flows, duration_s, seed=seed)


# A queue that builds for 20 min (1.0/s against 0.5/s), then drains (0.2/s).
BUILD = RateSchedule(((0.0, 1.0), (1200.0, 1.0), (1260.0, 0.2)))
SERVICE = RateSchedule.constant(0.5)


@pytest.fixture(scope="module")
def building() -> Simulation:
    return run(BUILD, SERVICE, duration_s=3600.0, seed=7)


# -- rate schedules -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(1, 500), st.floats(0, 5)), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
)
def test_cumulative_inverse_round_trips(knots: list[tuple[float, float]], frac: float) -> None:
    ts = np.cumsum([k[0] for k in knots])
    sched = RateSchedule(tuple(zip(ts.tolist(), [k[1] for k in knots], strict=True)))
    cum = sched.on(float(ts[-1]) + 100.0)
    y = frac * cum.total
    t = float(cum.inverse(np.array([y]))[0])
    assert cum.value(t) == pytest.approx(y, abs=1e-6 * max(1.0, cum.total))


def test_cumulative_matches_numeric_integral() -> None:
    sched = RateSchedule(((0.0, 0.2), (100.0, 1.4), (160.0, 0.0), (200.0, 0.0), (260.0, 0.7)))
    cum = sched.on(400.0)
    grid = np.linspace(0.0, 400.0, 400_001)
    numeric = np.trapezoid(sched.rate(grid), grid)
    assert cum.total == pytest.approx(numeric, rel=1e-6)


def test_poisson_arrivals_follow_the_schedule() -> None:
    sched = RateSchedule(((0.0, 0.5), (3000.0, 3.0), (6000.0, 0.0), (7000.0, 0.0), (7001.0, 1.0)))
    t = poisson_times(sched, 9000.0, np.random.default_rng(3))
    cum = sched.on(9000.0)
    assert np.all(np.diff(t) >= 0)
    for lo, hi in [(0, 1500), (1500, 3000), (3000, 4500), (4500, 6000), (7000, 9000)]:
        expected = float(cum.value(hi) - cum.value(lo))
        got = int(((t >= lo) & (t < hi)).sum())
        assert abs(got - expected) < 5 * math.sqrt(expected), (lo, hi, got, expected)
    assert not ((t >= 6000) & (t < 7000)).any()  # a rate of 0 means nobody


# -- queue conservation and FIFO ----------------------------------------------------------------


def test_everyone_who_joined_left_or_is_still_queued(building: Simulation) -> None:
    v = building.visits_in("q")
    still = ~np.isfinite(v["leave_ts"])
    assert np.all(v["leave_ts"][~still] < building.duration_s)
    assert int(building.true_queue_length("q", building.duration_s)) == int(still.sum())
    assert len(v) == len(np.unique(v["tag"]))


def test_fifo_order_and_walk_time(building: Simulation) -> None:
    v = building.visits_in("q")
    assert np.all(np.diff(v["arrive_ts"]) >= 0)
    leave = v["leave_ts"]
    done = np.isfinite(leave)
    assert np.all(np.diff(leave[done]) >= 0)
    assert done[: done.sum()].all()  # those still queued are the last to have joined
    assert np.all(leave - v["arrive_ts"] >= 10.0 - 1e-9)  # nobody beats the empty-line walk


def test_queue_length_is_arrivals_minus_departures(building: Simulation) -> None:
    v = building.visits_in("q")
    grid = np.linspace(0.0, building.duration_s, 721)
    brute = np.array([((v["arrive_ts"] <= t) & (v["leave_ts"] > t)).sum() for t in grid])
    arrivals = np.array([(v["arrive_ts"] <= t).sum() for t in grid])
    departures = np.array([(v["leave_ts"] <= t).sum() for t in grid])
    assert np.array_equal(building.true_queue_length("q", grid), brute)
    assert np.array_equal(brute, arrivals - departures)
    assert brute.max() > 400  # the scenario really builds a queue


def test_service_rate_honoured_while_saturated(building: Simulation) -> None:
    v = building.visits_in("q")
    leave = v["leave_ts"][np.isfinite(v["leave_ts"])]
    # Saturated from ~1 min to well after the 20 min build-up: one boarding every 2 s.
    served = ((leave >= 300) & (leave < 1800)).sum()
    assert abs(served - 0.5 * 1500) <= 1
    gaps = np.diff(leave[(leave >= 300) & (leave < 1800)])
    assert np.allclose(gaps, 2.0)


def test_batches_board_together() -> None:
    sim = run(RateSchedule.constant(1.0), RateSchedule.constant(0.5), batch=20,
              duration_s=1800.0)
    leave = sim.visits_in("q")["leave_ts"]
    leave = leave[np.isfinite(leave)]
    _, per_dispatch = np.unique(leave, return_counts=True)
    assert per_dispatch.max() == 20
    assert (per_dispatch[5:-1] == 20).all()  # saturated: every train leaves full


def test_breakdown_stops_departures() -> None:
    service = RateSchedule(((0, 0.5), (1000, 0.5), (1001, 0.0), (2200, 0.0), (2201, 0.5)))
    sim = run(RateSchedule.constant(0.3), service, duration_s=4000.0)
    leave = sim.visits_in("q")["leave_ts"]
    assert not ((leave > 1001) & (leave < 2200)).any()
    q = sim.true_queue_length("q", np.array([1000.0, 2200.0]))
    assert q[1] - q[0] > 0.3 * 1200 * 0.7  # the line grows while the ride is down


def test_seat_assignment_matches_a_plain_fifo_loop() -> None:
    rng = np.random.default_rng(5)
    ready = np.sort(rng.uniform(0, 100, 300))
    seats = np.sort(np.repeat(rng.uniform(0, 120, 80), 3))
    expected = []
    k = 0
    for r in ready:
        while k < len(seats) and seats[k] < r:
            k += 1
        expected.append(min(k, len(seats)))
        k += 1
    assert _assign_seats(ready, seats).tolist() == expected


# -- reads --------------------------------------------------------------------------------------


def test_read_probability_honoured() -> None:
    sim = run(RateSchedule.constant(1.0), RateSchedule.constant(1.2), duration_s=3600.0,
              read_prob=0.7)
    v = sim.visits_in("q")
    n = len(v)
    for reader in ("q-in", "q-out"):
        reads = sim.reads_for(reader)
        assert len(np.unique(reads["visit"])) == len(reads)  # one chance per passage
        eligible = n if reader == "q-in" else int(np.isfinite(v["leave_ts"]).sum())
        sd = math.sqrt(eligible * 0.7 * 0.3)
        assert abs(len(reads) - 0.7 * eligible) < 5 * sd


def test_presence_reads_every_period_with_read_prob() -> None:
    area = AreaFlow(RateSchedule.constant(0.2), dwell_median_s=300.0, dwell_sigma=0.4,
                    presence_period_s=10.0)
    sim = run(RateSchedule.constant(0.1), RateSchedule.constant(0.5), duration_s=7200.0,
              area=area, read_prob=0.8)
    v = sim.visits_in("a")
    stay = np.minimum(v["leave_ts"], sim.duration_s) - v["arrive_ts"]
    chances = stay.sum() / 10.0
    reads = sim.reads_for("a-pres")
    assert abs(len(reads) - 0.8 * chances) < 0.02 * chances
    # Every read falls inside its visit.
    zone_visits = sim.visits[reads["visit"]]
    assert np.all(reads["ts"] >= zone_visits["arrive_ts"])
    assert np.all(reads["ts"] < zone_visits["leave_ts"])


def test_jitter_and_duplicates_stay_near_the_passage() -> None:
    sim = run(RateSchedule.constant(0.5), RateSchedule.constant(1.0), duration_s=1800.0,
              read_prob=1.0, jitter_s=0.5, dup_prob=0.5, dup_gap_s=0.25)
    reads = sim.reads_for("q-in")
    arrive = sim.visits["arrive_ts"][reads["visit"]]
    late = reads["ts"] - arrive
    assert late.min() >= 0
    per_visit = np.bincount(reads["visit"] - reads["visit"].min())
    per_visit = per_visit[per_visit > 0]
    assert per_visit.mean() == pytest.approx(2.0, rel=0.1)  # 1 + p/(1-p) reads per passage
    assert np.all(late <= 0.5 + 0.25 * (per_visit.max() - 1) + 1e-9)


def test_reads_sorted_and_strays_are_strangers() -> None:
    sim = run(RateSchedule.constant(0.5), RateSchedule.constant(1.0), duration_s=1800.0,
              stray_rate_hz=0.05)
    assert np.all(np.diff(sim.reads["ts"]) >= 0)
    strays = sim.reads[sim.reads["visit"] < 0]
    assert abs(len(strays) - 3 * 0.05 * 1800) < 5 * math.sqrt(3 * 0.05 * 1800)
    assert not np.isin(strays["tag"], sim.visits["tag"]).any()
    own = sim.reads[sim.reads["visit"] >= 0]
    assert np.array_equal(own["tag"], sim.visits["tag"][own["visit"]])


def test_tags_are_distinct_5_byte_em4100_ids() -> None:
    sim = steady_day().run(seed=11)
    tags = sim.visits["tag"]
    assert len(np.unique(tags)) == len(tags)
    assert tags.max() < 1 << 40
    schedule = sim.read_schedule("dino-entry")
    assert all(len(tag) == 5 for _, tag in schedule[:100])
    assert schedule[0][1] == tag_bytes(sim.reads_for("dino-entry")["tag"][0])


def same_records(a: np.ndarray, b: np.ndarray) -> bool:
    """Structured arrays equal field by field, NaN equal to NaN (RFID reads have NaN RSSI)."""
    return a.dtype == b.dtype and a.shape == b.shape and all(
        np.array_equal(a[f], b[f], equal_nan=a.dtype[f].kind == "f") for f in a.dtype.names or ())


def test_seeded_determinism() -> None:
    a = steady_day().run(seed=42)
    b = steady_day().run(seed=42)
    c = steady_day().run(seed=43)
    assert same_records(a.reads, b.reads)
    assert np.isnan(a.reads["rssi"]).all()  # RFID readers report no RSSI
    assert same_records(a.visits, b.visits)
    assert not np.array_equal(a.visits["arrive_ts"][:100], c.visits["arrive_ts"][:100])


def test_other_zones_keep_their_guests_when_a_reader_is_added() -> None:
    flows = {"q": QueueFlow(RateSchedule.constant(0.5), RateSchedule.constant(0.6))}
    base = Layout((SimZone("q", "queue", 100),), (SimReader("in", "q", "entry"),))
    more = Layout(base.zones, (*base.readers, SimReader("out", "q", "exit")))
    a = simulate(base, flows, 600.0, seed=3)
    b = simulate(more, flows, 600.0, seed=3)
    assert np.array_equal(a.visits["arrive_ts"], b.visits["arrive_ts"])


# -- ground truth -------------------------------------------------------------------------------


def test_exit_minus_entry_read_equals_true_wait(building: Simulation) -> None:
    entry = building.reads_for("q-in")
    exit_ = building.reads_for("q-out")
    both, ei, xi = np.intersect1d(entry["visit"], exit_["visit"], return_indices=True)
    visits = building.visits[both]
    assert len(both) > 500
    assert np.allclose(exit_["ts"][xi] - entry["ts"][ei], visits["leave_ts"] - visits["arrive_ts"])


def test_true_wait_is_the_median_of_recent_departures(building: Simulation) -> None:
    v = building.visits_in("q")
    grid = np.arange(0.0, building.duration_s, 97.0)
    got = building.true_wait_s("q", grid, window_s=60.0)
    for t, w in zip(grid, got, strict=True):
        left = (v["leave_ts"] > t - 60) & (v["leave_ts"] <= t)
        if left.any():
            assert w == pytest.approx(np.median(v["leave_ts"][left] - v["arrive_ts"][left]))
        else:
            assert math.isnan(w)
    # A window holding exactly one departure gives exactly that guest's leave - arrive.
    one = v[np.isfinite(v["leave_ts"])][100]
    w1 = building.true_wait_s("q", one["leave_ts"], window_s=1e-6)
    assert float(w1) == pytest.approx(one["leave_ts"] - one["arrive_ts"])


def test_wait_of_a_guest_joining_now_is_exact(building: Simulation) -> None:
    # Oracle: really add the guest to the line and let the FIFO assign seats again.
    z = building._truth["q"]
    assert z.seats is not None
    for t in np.linspace(5.0, 3000.0, 40):
        ready = np.sort(np.concatenate([z.arrive_sorted, [t]])) + z.walk_s
        idx = int(np.searchsorted(z.arrive_sorted, t, side="right"))
        seat = int(_assign_seats(ready, z.seats)[idx])
        expected = z.seats[seat] - t if seat < len(z.seats) else math.nan
        got = float(building.true_wait_joining_s("q", t))
        assert got == pytest.approx(expected, nan_ok=True)


def test_joining_wait_is_queue_over_service_when_saturated(building: Simulation) -> None:
    t = np.array([600.0, 900.0, 1200.0])
    q = building.true_queue_length("q", t)
    w = building.true_wait_joining_s("q", t)
    assert np.allclose(w, q / 0.5, atol=5.0)


def test_area_capacity_and_dwell() -> None:
    area = AreaFlow(RateSchedule.constant(1.0), dwell_median_s=600.0, dwell_sigma=0.5,
                    presence_period_s=60.0)
    layout = Layout((SimZone("a", "area", 300),), (SimReader("p", "a", "presence"),))
    sim = simulate(layout, {"a": area}, 7200.0, seed=2)
    occ = sim.true_occupancy("a", np.arange(0.0, 7200.0, 5.0))
    assert occ.max() == 300
    assert sim.refused["a"] > 0
    v = sim.visits
    done = np.isfinite(v["leave_ts"])
    assert np.median(v["leave_ts"][done] - v["arrive_ts"][done]) == pytest.approx(600, rel=0.1)


def test_whole_day_is_fast() -> None:
    start = time.perf_counter()
    sim = steady_day().run(seed=1)
    sim.truth_grid("dino-queue", np.arange(0.0, sim.duration_s, 60.0))
    assert time.perf_counter() - start < 2.0
