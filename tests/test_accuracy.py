"""Accuracy regression guard: the quick run of bench/accuracy.py against the simulator's truth.

Quick mode runs seed 1 of morning_rush (first 1.5 h), ride_breakdown (first 2 h) and
noisy_radio (first 1.5 h) through ZoneEngine in 1 s ticks, a few seconds in all. The bounds are
the issue's targets (wait_mae_pct <= 10, queue_length_mae_pct <= 5, moment precision and recall
>= 0.95, moment_delay_s <= 60, forecast_lead_min >= 5 on the rush), relaxed where stated,
plus tighter guards near what the estimators achieve today, so that a regression shows long
before a target is missed. noisy_radio (60 % read rates, stray reads of passers-by) is held to
the wait target only: its stray entry reads inflate queue_length (see the bench's report).
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


def test_quick_run_covers_the_rush_the_breakdown_and_bad_radio(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert set(report["scenarios"]) == {"morning_rush", "ride_breakdown", "noisy_radio"}
    for s in report["scenarios"].values():
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
    assert s["wait_mae_pct"] <= 8.0  # target 10; ~3 today
    assert s["moment_recall"] >= 0.95
    assert s["queue_length_mae_pct"] <= 35.0  # a known miss (~25): stray entry reads


def test_plots_are_drawn(tmp_path: Path) -> None:
    run = accuracy.run_one("morning_rush", 1, duration_s=1200.0)
    accuracy.plot_run(run, tmp_path / "rush.png")
    assert (tmp_path / "rush.png").read_bytes()[:4] == b"\x89PNG"
