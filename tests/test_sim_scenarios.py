"""Named scenarios: the layout every scenario shares and the story each one tells."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.scenarios import SCENARIOS, Scenario, demo_rush, get_scenario

ZONES = {"dino-queue": "queue", "jungle-queue": "queue", "plaza": "area"}
READERS = {
    "dino-entry": ("dino-queue", "entry"),
    "dino-exit": ("dino-queue", "exit"),
    "jungle-entry": ("jungle-queue", "entry"),
    "jungle-exit": ("jungle-queue", "exit"),
    "plaza-gate": ("plaza", "presence"),
}
SEEDS = range(5)


BLE_SCENARIOS = {"ble_areas"}


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - BLE_SCENARIOS))
def test_every_scenario_runs_on_the_standard_layout(name: str) -> None:
    sc = get_scenario(name)
    assert isinstance(sc, Scenario) and sc.name == name
    assert {z.id: z.kind for z in sc.layout.zones} == ZONES
    assert {r.id: (r.zone, r.role) for r in sc.layout.readers} == READERS
    assert all(r.protocol == "em4100" for r in sc.layout.readers)
    sim = sc.run(seed=0)
    assert len(sim.reads) > 0
    assert sim.reads["ts"].min() >= 0 and sim.reads["ts"].max() < sc.duration_s
    assert np.isnan(sim.reads["rssi"]).all()


def test_the_ble_scenario_has_two_areas_with_an_adapter_each() -> None:
    sc = get_scenario("ble_areas")
    assert {z.id: z.kind for z in sc.layout.zones} == {"lounge": "area", "arcade": "area"}
    assert {r.id: (r.zone, r.role, r.protocol) for r in sc.layout.readers} == {
        "lounge-ble": ("lounge", "presence", "ble"), "arcade-ble": ("arcade", "presence", "ble")}
    sim = sc.run(seed=0)
    assert np.isfinite(sim.reads["rssi"]).all()
    assert sim.reads["ts"].min() >= 0 and sim.reads["ts"].max() < sc.duration_s


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="demo_rush"):
        get_scenario("nope")


@pytest.mark.parametrize("seed", SEEDS)
def test_demo_rush_tells_its_story(seed: int) -> None:
    sc = demo_rush()
    assert sc.realtime and 120 <= sc.duration_s <= 180
    sim = sc.run(seed=seed)
    q = sim.true_queue_length("dino-queue", np.arange(0.0, 181.0))
    assert q[:16].max() <= 8  # calm before the rush
    growth = (q[60] - q[20]) / 40.0
    assert 0.7 <= growth <= 1.3  # ~1 guest/s
    joining = sim.true_wait_joining_s("dino-queue", np.array([15.0, 60.0]))
    assert joining[0] < 15 and joining[1] > 30
    v = sim.visits_in("dino-queue")
    boarded = np.isfinite(v["leave_ts"])
    waits = (v["leave_ts"] - v["arrive_ts"])[boarded]
    first_long = v["leave_ts"][boarded][np.argmax(waits > 30)]
    assert 15 + 30 <= first_long <= 15 + 55  # the boarding wait passes 30 s ~45 s into the rush
    assert q[130] <= 5  # drained
    median = sim.true_wait_s("dino-queue", np.array([60.0, 100.0, 180.0]))
    assert median[0] < 30 < median[1] and median[2] < 20
    jungle = sim.true_wait_s("jungle-queue", np.arange(30.0, 181.0, 10.0))
    assert np.nanmax(jungle) < 20  # the short wait a nudge can offer


def test_ride_breakdown_stops_boarding_for_20_minutes() -> None:
    sim = get_scenario("ride_breakdown").run(seed=0)
    leave = sim.visits_in("dino-queue")["leave_ts"]
    assert not ((leave > 3601) & (leave < 4800)).any()
    q = sim.true_queue_length("dino-queue", np.array([3600.0, 4800.0]))
    assert q[1] - q[0] > 200


def test_parade_empties_the_queues_and_fills_the_plaza() -> None:
    sim = get_scenario("parade").run(seed=0)
    during = np.arange(4500.0, 5400.0, 60.0)
    assert sim.true_queue_length("dino-queue", during).max() <= 10
    assert np.nanmax(sim.true_wait_joining_s("dino-queue", during)) < 120  # walk + a train
    assert sim.true_occupancy("plaza", during).min() > 1000


def test_area_near_capacity_turns_guests_away() -> None:
    sc = get_scenario("area_near_capacity")
    sim = sc.run(seed=0)
    occ = sim.true_occupancy("plaza", np.arange(0.0, sc.duration_s, 10.0))
    assert occ.max() == sc.layout.zone("plaza").capacity
    assert sim.refused["plaza"] > 100


def test_noisy_radio_is_noisy() -> None:
    sim = get_scenario("noisy_radio").run(seed=0)
    assert (sim.reads["visit"] < 0).sum() > 500  # strays
    entry = sim.reads_for("dino-entry")
    own = entry[entry["visit"] >= 0]
    distinct = len(np.unique(own["visit"]))
    assert len(own) > 1.5 * distinct  # repeated reads of lingering bands
    assert distinct < 0.7 * len(sim.visits_in("dino-queue"))  # many bands never read


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_queue_at_start_begins_on_a_long_line_the_agent_never_saw_join(seed: int) -> None:
    sc = get_scenario("queue_at_start")
    assert sc.warmup_s == 3600.0
    sim = sc.run(seed=seed)
    q = sim.true_queue_length("dino-queue", np.array([0.0, 1800.0, 6900.0]))
    assert 850 <= q[0] <= 1100 and q[1] < q[0] and q[2] < 150  # drains
    assert 28 * 60 <= float(sim.true_wait_joining_s("dino-queue", 0.0)) <= 36 * 60
    v = sim.visits_in("dino-queue")
    early = v[v["arrive_ts"] < 0]
    assert len(early) > 2000  # came during the warm-up hour
    entry = sim.reads_for("dino-entry")
    assert not np.isin(entry["visit"], np.flatnonzero(sim.visits["arrive_ts"] < 0)).any()
    exit_ = sim.reads_for("dino-exit")
    in_line = sim.visits["leave_ts"] > 0
    pre = np.flatnonzero((sim.visits["arrive_ts"] < 0) & in_line
                         & (sim.visits["zone"] == sc.layout.zone_index("dino-queue")))
    assert np.isin(exit_["visit"], pre).sum() > 0.8 * q[0]  # their exits are read


def test_glitchy_lines_drop_out_and_deliver_bursts() -> None:
    sc = get_scenario("glitchy_lines")
    sim = sc.run(seed=0)
    assert set(sim.outages) == set(READERS)
    n_out = sum(len(w) for w in sim.outages.values())
    assert 5 * 10 <= n_out <= 5 * 20  # ~12 per reader in 3 h
    for rid, windows in sim.outages.items():
        r = sim.reads_for(rid)
        for start, end in windows:
            assert not ((r["ts"] >= start) & (r["ts"] < end)).any()  # nothing during one
        burst = [((r["ts"] >= end) & (r["ts"] < end + 1.0)).sum() for _, end in windows]
        if rid != "plaza-gate":
            assert max(burst) >= 3  # the buffered half arrives at once
    entry = sim.reads_for("dino-entry")
    per_visit = np.bincount(entry["visit"])
    assert per_visit.max() >= 2.0 / 0.3  # someone held a band there for seconds
