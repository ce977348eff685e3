"""The crowd model's roaming guests, BLE adapters, late start, held bands and line outages:
truth consistent with the visits, reads consistent with the truth, determinism by seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.crowd import (
    BleRadio,
    Layout,
    QueueFlow,
    RateSchedule,
    RoamingFlow,
    SimReader,
    Simulation,
    SimZone,
    simulate,
)
from simulators.scenarios import ble_areas, ble_layout
from tests.test_sim_crowd import same_records


@pytest.fixture(scope="module")
def ble() -> Simulation:
    return ble_areas().run(seed=5)


# -- roaming guests: the truth ----------------------------------------------------------------


def test_occupancy_is_the_visits_present(ble: Simulation) -> None:
    v = ble.visits
    for zid in ("lounge", "arcade"):
        zi = ble.layout.zone_index(zid)
        for t in np.linspace(0.0, ble.duration_s - 1, 37):
            inside = ((v["zone"] == zi) & (v["arrive_ts"] <= t) & (v["leave_ts"] > t)).sum()
            assert int(ble.true_occupancy(zid, t)) == inside
    t = np.arange(0.0, ble.duration_s, 10.0)
    both = ble.true_occupancy("lounge", t) + ble.true_occupancy("arcade", t)
    assert 25 <= np.median(both[360:]) <= 45  # ~30-40 bands about after the opening


def test_a_guest_is_in_one_area_at_a_time_and_keeps_the_band(ble: Simulation) -> None:
    v = ble.visits
    order = np.lexsort((v["arrive_ts"], v["guest"]))
    g, z = v["guest"][order], v["zone"][order]
    a, lv = v["arrive_ts"][order], v["leave_ts"][order]
    same = g[1:] == g[:-1]
    assert np.all(a[1:][same] == lv[:-1][same])  # moves on with no gap, no overlap
    assert np.all(z[1:][same] != z[:-1][same])  # to the other area
    assert np.all(v["tag"][order][1:][same] == v["tag"][order][:-1][same])
    first = np.unique(g, return_index=True)[1]
    assert len(np.unique(v["tag"][order][first])) == len(first)  # one band per guest
    assert same.sum() > 0.3 * len(first)  # many move at least once


def test_departures_say_when_and_where_each_guest_went(ble: Simulation) -> None:
    for zid in ("lounge", "arcade"):
        d = ble.departures(zid)
        v = ble.visits
        zi = ble.layout.zone_index(zid)
        assert np.all(np.diff(d["leave_ts"]) >= 0)
        assert len(d) == int(((v["zone"] == zi) & np.isfinite(v["leave_ts"])).sum())
        assert np.array_equal(d["tag"], v["tag"][d["visit"]])
        moved = d["next_zone"] >= 0
        assert 0.3 < moved.mean() < 0.7  # half move on
        assert np.all(d["next_zone"][moved] != zi)
        # The last advert heard: before the guest went, and within a few advert intervals.
        gap = d["leave_ts"] - d["last_read_ts"]
        assert np.all(gap > 0) and np.nanmax(gap) < 15.0 and np.nanmedian(gap) < 1.0
        # Count per zone = arrivals - departures.
        t = ble.duration_s - 1
        arrived = int(((v["zone"] == zi) & (v["arrive_ts"] <= t)).sum())
        left = int((d["leave_ts"] <= t).sum())
        assert int(ble.true_occupancy(zid, t)) == arrived - left


# -- BLE adapters -----------------------------------------------------------------------------


def test_adverts_carry_rssi_and_fall_inside_their_visit(ble: Simulation) -> None:
    r = ble.reads
    assert np.all(r["visit"] >= 0)  # no strays configured
    assert np.all(r["rssi"] == np.round(r["rssi"]))  # whole dB
    assert r["rssi"].min() >= -98 and r["rssi"].max() < -40
    vis = ble.visits[r["visit"]]
    assert np.all(r["ts"] >= vis["arrive_ts"]) and np.all(r["ts"] < vis["leave_ts"])
    assert np.array_equal(r["tag"], vis["tag"])


def test_an_adapter_hears_its_own_area_louder_and_more_often(ble: Simulation) -> None:
    for rid, zid in (("lounge-ble", "lounge"), ("arcade-ble", "arcade")):
        r = ble.reads_for(rid)
        own = ble.visits["zone"][r["visit"]] == ble.layout.zone_index(zid)
        assert np.median(r["rssi"][own]) > np.median(r["rssi"][~own]) + 6
        assert 0.2 < (~own).mean() < 0.6  # the other area's bands are heard too


def test_bands_advertise_at_their_own_interval_with_losses(ble: Simulation) -> None:
    r = ble.reads_for("lounge-ble")
    own = r[ble.visits["zone"][r["visit"]] == ble.layout.zone_index("lounge")]
    v = ble.visits_in("lounge")
    stay = (np.minimum(v["leave_ts"], ble.duration_s) - v["arrive_ts"]).sum()
    per_s = len(own) / stay
    # mean 1/interval over U(0.3, 1) is ln(1/0.3)/0.7 = 1.72 adverts/s; 60 % heard, a few
    # below the sensitivity
    assert 0.85 < per_s < 1.1
    # Gaps between adverts heard of one band are whole multiples of its interval.
    tag = own["tag"][0]
    ts = own["ts"][own["tag"] == tag]
    gaps = np.diff(ts)
    ivl = gaps.min()
    assert 0.3 - 1e-9 <= ivl <= 1.0 + 1e-9
    assert np.allclose(gaps / ivl, np.round(gaps / ivl), atol=1e-6)


def test_rssi_follows_the_path_loss_model() -> None:
    radio = BleRadio(sigma_db=4.0)
    rng = np.random.default_rng(0)
    got = radio.rssi(np.full(20000, 10.0), rng)
    assert np.mean(got) == pytest.approx(-59.0 - 25.0, abs=0.1)
    assert np.std(got) == pytest.approx(math.hypot(4.0, 1 / math.sqrt(12)), rel=0.05)


def test_ble_runs_are_deterministic_by_seed() -> None:
    a, b, c = ble_areas().run(seed=9), ble_areas().run(seed=9), ble_areas().run(seed=10)
    assert same_records(a.reads, b.reads) and same_records(a.visits, b.visits)
    assert not np.array_equal(a.visits["arrive_ts"][:50], c.visits["arrive_ts"][:50])


def test_noise_and_losses_are_settings_of_the_layout() -> None:
    flows = ble_areas().flows
    quiet = simulate(ble_layout(read_prob=1.0, sigma_db=0.0), flows, 1800.0, seed=1)
    noisy = simulate(ble_layout(read_prob=0.5, sigma_db=8.0), flows, 1800.0, seed=1)
    assert np.array_equal(quiet.visits["arrive_ts"], noisy.visits["arrive_ts"])  # same guests
    assert len(noisy.reads) < 0.6 * len(quiet.reads)


# -- validation ---------------------------------------------------------------------------------


def test_ble_readers_need_a_place_and_roaming_guests() -> None:
    with pytest.raises(ValueError, match="presence reader"):
        SimReader("x", "a", "entry", protocol="ble")
    with pytest.raises(ValueError, match="do not apply"):
        SimReader("x", "a", "presence", protocol="ble", dup_prob=0.5)
    assert SimReader("x", "a", "presence", protocol="ble").ble == BleRadio()
    with pytest.raises(ValueError, match="area_m"):
        Layout((SimZone("a", "area", 10),), (SimReader("x", "a", "presence", protocol="ble"),))
    plan = (SimZone("a", "area", 10, area_m=(0, 0, 10, 10)),)
    layout = Layout(plan, (SimReader("x", "a", "presence", protocol="ble"),))
    with pytest.raises(ValueError, match="RoamingFlow"):
        simulate(layout, {}, 60.0, seed=0)
    roam = RoamingFlow(("a",), RateSchedule.constant(0.1), dwell_median_s=60.0)
    with pytest.raises(ValueError, match="more than one flow"):
        simulate(layout, {"g": roam, "h": roam}, 60.0, seed=0)
    with pytest.raises(ValueError, match="move_prob"):
        RoamingFlow(("a", "b"), RateSchedule.constant(0.1), dwell_median_s=60.0, move_prob=1.0)


# -- late start (warm-up) -----------------------------------------------------------------------


QUEUE = Layout((SimZone("q", "queue", 5000),),
               (SimReader("in", "q", "entry", read_prob=1.0),
                SimReader("out", "q", "exit", read_prob=1.0)))
BUILDING = {"q": QueueFlow(RateSchedule(((-1800.0, 1.0), (0.0, 1.0), (1.0, 0.3))),
                           RateSchedule.constant(0.5))}


def test_a_late_start_loses_the_reads_before_it_and_keeps_the_truth() -> None:
    sim = simulate(QUEUE, BUILDING, 1800.0, seed=4, warmup_s=1800.0)
    v = sim.visits
    assert v["arrive_ts"].min() < -1700 and sim.warmup_s == 1800.0
    assert sim.reads["ts"].min() >= 0
    q0 = int(sim.true_queue_length("q", 0.0))
    assert q0 == int(((v["arrive_ts"] <= 0) & (v["leave_ts"] > 0)).sum())
    assert 800 <= q0 <= 1000  # (1.0 - 0.5)/s for 30 min
    entry = sim.reads_for("in")
    assert np.all(v["arrive_ts"][entry["visit"]] >= 0)  # only guests who came after the start
    assert len(entry) == int((v["arrive_ts"] >= 0).sum())
    out = sim.reads_for("out")
    assert np.allclose(out["ts"], v["leave_ts"][out["visit"]])
    # The wait of guests who joined before 0 and boarded after it is their whole wait.
    w = float(sim.true_wait_s("q", 600.0, window_s=600.0))
    ended = (v["leave_ts"] > 0) & (v["leave_ts"] <= 600.0)
    assert (v["arrive_ts"][ended] < 0).all()
    assert w == pytest.approx(np.median((v["leave_ts"] - v["arrive_ts"])[ended]))


def test_no_warmup_is_the_plain_run() -> None:
    a = simulate(QUEUE, BUILDING, 600.0, seed=2)
    b = simulate(QUEUE, BUILDING, 600.0, seed=2, warmup_s=0.0)
    assert same_records(a.reads, b.reads) and same_records(a.visits, b.visits)


# -- held bands and outages ---------------------------------------------------------------------


def test_a_held_band_repeats_for_seconds() -> None:
    layout = Layout((SimZone("q", "queue", 5000),),
                    (SimReader("in", "q", "entry", read_prob=1.0, hold_prob=0.2,
                               hold_s=(5.0, 10.0), dup_gap_s=0.25),))
    flows = {"q": QueueFlow(RateSchedule.constant(0.5), RateSchedule.constant(1.0))}
    sim = simulate(layout, flows, 3600.0, seed=1)
    r = sim.reads_for("in")
    n = np.bincount(r["visit"], minlength=len(sim.visits))
    held = n > 1
    assert 0.15 < held.mean() < 0.25
    assert n[held].min() >= 5.0 / 0.25 and n[held].max() <= 10.0 / 0.25 + 1
    span = np.zeros(len(sim.visits))
    np.maximum.at(span, r["visit"], r["ts"] - sim.visits["arrive_ts"][r["visit"]])
    assert span.max() <= 10.0 + 1e-9


def test_outages_lose_or_delay_reads() -> None:
    reader = SimReader("in", "q", "entry", read_prob=1.0, outage_every_s=300.0,
                       outage_s=(20.0, 40.0), outage_buffer_prob=0.5, outage_burst_s=1.0)
    layout = Layout((SimZone("q", "queue", 5000),), (reader,))
    flows = {"q": QueueFlow(RateSchedule.constant(1.0), RateSchedule.constant(2.0))}
    sim = simulate(layout, flows, 7200.0, seed=3)
    windows = sim.outages["in"]
    assert 15 <= len(windows) <= 35
    assert np.all(np.diff(windows, axis=1) >= 20.0 - 1e-9) and np.all(windows[1:, 0] > windows[:-1, 1])
    r = sim.reads_for("in")
    arrive = sim.visits["arrive_ts"]
    during = np.zeros(len(arrive), dtype=bool)
    for start, end in windows:
        during |= (arrive >= start) & (arrive < end)
        assert not ((r["ts"] >= start) & (r["ts"] < end)).any()
    got = np.isin(np.arange(len(arrive)), r["visit"])
    assert got[~during].all()  # outside an outage every passage is read
    assert 0.35 < got[during].mean() < 0.65  # half of the others are delivered
    late = r[during[r["visit"]]]
    end_of = windows[np.searchsorted(windows[:, 0], arrive[late["visit"]], side="right") - 1, 1]
    assert np.all((late["ts"] >= end_of) & (late["ts"] < end_of + 1.0))
