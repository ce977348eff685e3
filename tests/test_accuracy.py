"""Accuracy regression guard: the quick run of bench/accuracy.py against the simulator's truth.

Quick mode runs seed 1 of morning_rush (first 1.5 h), ride_breakdown (first 2 h), noisy_radio
(first 1.5 h), glitchy_lines (first 1 h), ble_areas (first 75 min) and queue_at_start (2 h)
through the gateway core in 1 s ticks, about 30 s in all. The bounds are
the issue's targets (wait_mae_pct <= 5, wait_joining_mae_pct <= 10 overall and 15 a scenario,
queue_length_mae_pct <= 5 overall and 8 a scenario, moment precision and recall >= 0.97,
moment_delay_s <= 60, forecast_lead_min >= 5 on the rush), relaxed where stated,
plus tighter guards near what the estimators achieve today, so that a regression shows long
before a target is missed. noisy_radio (60 % read rates, stray reads of passers-by) is held to
the wait target only: its stray entry reads inflate queue_length (see the bench's report).
ble_areas is held to its acceptance (occupancy_mae_pct <= 8, departure_delay_s <= 20).
queue_at_start (2 h: the agent starts on a ~1,000-guest line it never saw enter) is held to
the targets once warmed up: until the first guest it saw enter boards (~34 min) the
unseen part of the line is not in the reads, and the gateway marks its figures warming_up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import accuracy


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("accuracy") / "accuracy.json"
    assert accuracy.main(["--quick", "--out", str(out)]) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


QUEUES = ("morning_rush", "ride_breakdown", "noisy_radio", "glitchy_lines")


def test_quick_run_covers_the_rush_the_breakdown_bad_radio_bad_lines_and_ble(
        report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert set(report["scenarios"]) == {*QUEUES, "ble_areas", "queue_at_start"}
    for name in QUEUES:
        s = report["scenarios"][name]
        assert s["wait_coverage"] > 0.99  # a wait whenever the truth has one
        assert s["ticks_compared"]["wait_s"] > 3000


@pytest.mark.parametrize("name", ["morning_rush", "ride_breakdown"])
def test_queue_estimates_meet_the_targets(report: dict[str, Any], name: str) -> None:
    s = report["scenarios"][name]
    assert s["wait_mae_pct"] <= 5.0  # target 10; ~1-3 today
    assert s["queue_length_mae_pct"] <= 6.0  # target 5, relaxed for one seed; ~1-3 today


@pytest.mark.parametrize("name", ["morning_rush", "ride_breakdown"])
def test_moments_match_the_true_moments(report: dict[str, Any], name: str) -> None:
    s = report["scenarios"][name]
    mo = s["moments"]
    assert mo["true"] >= 1
    # with 1-2 moments a scenario, >= 0.95 means every one
    assert s["moment_precision"] >= 0.95 and s["moment_recall"] >= 0.95
    assert abs(s["moment_delay_s"]) <= 90.0  # target 60, relaxed for one seed; ~0 today
    assert mo["rising_false_alarms"] == 0


def test_forecast_warns_well_before_the_rush_crosses(report: dict[str, Any]) -> None:
    assert report["scenarios"]["morning_rush"]["forecast_lead_min"] >= 10.0  # target 5; ~15
    assert report["scenarios"]["ride_breakdown"]["forecast_lead_min"] >= 10.0  # ~18 today


def test_bad_radio_still_measures_the_wait(report: dict[str, Any]) -> None:
    s = report["scenarios"]["noisy_radio"]
    assert s["wait_mae_pct"] <= 5.0  # target 5; ~3 today
    assert s["moment_recall"] >= 0.95
    # target 8 over the full 3 h and 3 seeds (~6 there); the first 1.5 h of seed 1, ~9.6
    assert s["queue_length_mae_pct"] <= 12.0
    assert s["wait_joining_mae_pct"] <= 15.0  # target 15; ~12 today


@pytest.mark.parametrize("name", QUEUES)
def test_the_read_rate_correction_never_makes_the_count_worse(report: dict[str, Any],
                                                            name: str) -> None:
    # corrected queue_length no further from the truth than the count as read (occupancy)
    # by more than 2 % of the true mean
    s = report["scenarios"][name]
    assert s["queue_length_mae_pct"] <= s["queue_occupancy_mae_pct"] + 2.0


@pytest.mark.parametrize(("name", "bound"), [("morning_rush", 10.0), ("glitchy_lines", 20.0),
                                             ("ride_breakdown", 25.0)])
def test_the_posted_wait_is_close_to_the_wait_of_a_guest_joining_now(
        report: dict[str, Any], name: str, bound: float) -> None:
    # targets: 10 overall, 15 per scenario over the full runs. The quick run's slices are
    # held near today's figures (~6, ~16 and ~18: glitchy_lines' first hour and
    # ride_breakdown's first 2 h, whose stop makes a joining guest's wait jump to the restart
    # while the exits still flow, are the hardest parts of those runs)
    assert report["scenarios"][name]["wait_joining_mae_pct"] <= bound


def test_bad_lines_and_held_bands_do_not_disturb_the_estimates(report: dict[str, Any]) -> None:
    s = report["scenarios"]["glitchy_lines"]
    assert s["wait_mae_pct"] <= 6.0  # ~3 today
    assert s["queue_length_mae_pct"] <= 7.0  # ~4 today
    assert s["occupancy_mae_pct"] <= 8.0  # the plaza through its outages; ~5 today


def test_ble_areas_meet_the_acceptance(report: dict[str, Any]) -> None:
    s = report["scenarios"]["ble_areas"]
    assert s["met"] == {"occupancy_mae_pct": True, "departure_delay_s": True}
    assert s["occupancy_mae_pct"] <= 6.0  # target 8; ~3.5 today
    assert s["departure_delay_s"] <= 12.0  # target 20; ~7 today
    assert s["departure_delay_p90_s"] <= 25.0  # ~17 today
    dep = s["departures"]
    assert dep["reflected"] > 300 and dep["unreflected"] <= 5 and dep["unseen"] <= 5
    assert s["moment_recall"] == 1.0 and s["moment_precision"] == 1.0  # the lounge's show


def test_per_tag_state_adds_up_to_the_zone_counts() -> None:
    """``tags_in_zones`` (what departure_delay_s reads) agrees with the engine's own counts."""
    from agent.gateway import GatewayCore
    from simulators.scenarios import get_scenario

    sc = get_scenario("ble_areas")
    sim = sc.run(seed=1)
    core = GatewayCore(accuracy.agent_config(sc, accuracy.SETUPS["ble_areas"]),
                       key=accuracy.BENCH_KEY, max_tags=accuracy.MAX_TAGS)
    r = sim.reads[sim.reads["ts"] < 600.0]
    core.accept_columns(r["ts"], r["tag"].astype("u8"), r["reader"].astype("i4"),
                        r["rssi"].astype("f4"))
    res = core.step(600.0)
    tags, zones = accuracy.tags_in_zones(core.engine)
    assert len(tags) > 20
    for zi, z in enumerate(sc.layout.zones):
        assert (zones == zi).sum() == res.metrics.live_tags[zi] == res.values[z.id]["occupancy"]
    assert set(tags.tolist()) <= set(sim.visits["tag"].tolist())


def test_plots_are_drawn(tmp_path: Path) -> None:
    run = accuracy.run_one("morning_rush", 1, duration_s=1200.0)
    accuracy.plot_run(run, tmp_path / "rush.png")
    assert (tmp_path / "rush.png").read_bytes()[:4] == b"\x89PNG"


def test_a_gateway_started_on_a_long_line_marks_warming_up_then_meets_the_targets(
        report: dict[str, Any]) -> None:
    s = report["scenarios"]["queue_at_start"]
    settled = s["settled"]
    # Dino warms up for ~34 of the 120 min (its ~1,000 guests board first); Jungle briefly
    assert 0.08 < settled["warming_share"] < 0.25, settled
    assert s["wait_method_share"].get("at_least", 0) > 0.08  # wait_s: at least since start
    assert settled["queue_length_mae_pct"] <= 8.0  # ~3 today
    assert settled["wait_joining_mae_pct"] <= 15.0  # ~6-8 today
    assert settled["wait_mae_pct"] <= 5.0  # ~1 today


def test_every_queue_scenario_is_judged_by_the_issue_targets(report: dict[str, Any]) -> None:
    """The report judges each scenario with queues by the per-scenario targets (joining wait,
    queue length, what the read-rate correction costs), and queue_at_start also by the
    honesty of its warming-up lower bounds."""
    for name in (*QUEUES, "queue_at_start"):
        s = report["scenarios"][name]
        assert set(accuracy.QUEUE_SCENARIO_TARGETS) <= set(s["met"]), name
        assert s["met"]["correction_cost_pct"] is True, (name, s["correction_cost_pct"])
    start = report["scenarios"]["queue_at_start"]
    assert start["met"]["settled.warming_over_truth_share"] is True
    assert 0.05 < start["settled"]["warming_share"] < 0.5  # it did warm up, and finished
    assert set(report["met"]) == set(accuracy.TARGETS)
