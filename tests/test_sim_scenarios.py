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


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_runs_on_the_standard_layout(name: str) -> None:
    sc = get_scenario(name)
    assert isinstance(sc, Scenario) and sc.name == name
    assert {z.id: z.kind for z in sc.layout.zones} == ZONES
    assert {r.id: (r.zone, r.role) for r in sc.layout.readers} == READERS
    assert all(r.protocol == "em4100" for r in sc.layout.readers)
    sim = sc.run(seed=0)
    assert len(sim.reads) > 0
    assert sim.reads["ts"].max() < sc.duration_s


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
