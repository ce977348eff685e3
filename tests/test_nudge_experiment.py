"""The nudge experiment recovers a known guest response.

Simulated guests (simulators/response.py) arrive at Dino Ride, whose line stays long, and at
Jungle Cruise, whose arrivals swing over the day; while a nudge is live, 15 % of the guests
arriving at Dino Ride walk to Jungle Cruise instead (240 s). The gateway's own planner
(agent/nudges.py) decides the nudges and the holdout and measures arrivals at Jungle Cruise
from nothing but the zone state it would receive (``arrivals_per_min`` over a trailing
rate window, rounded as published); the experiment's interval must cover the true number of
guests who followed each sent nudge, for each of three seeds, and cover zero when nobody
follows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.config import parse_config
from agent.experiment import estimate
from agent.nudges import NudgePlanner
from agent.topics import SCHEMA_ZONE_STATE, Topics
from simulators.crowd import RateSchedule
from simulators.response import GuestResponse, NudgedArrivals

T0 = 1_750_000_000.0
TICK_S = 10.0
DAYS = 1
WALK_S = 240.0
H = 3600.0


def _cfg() -> Any:
    return parse_config(f"""
[venue]
id = "park"
[gateway]
id = "gw-a"
[moments]
nudge_holdout = 0.2
nudge_window_s = 900
[estimation]
rate_window_s = 300
[[zones]]
id = "dino-queue"
name = "Dino Ride"
kind = "queue"
alternatives = [{{zone = "jungle-queue", walk_s = {WALK_S}}}]
""")


def _day(points: list[tuple[float, float]]) -> RateSchedule:
    """A daily rate profile (guests/s at hours), repeated for DAYS days."""
    return RateSchedule(tuple((d * 24 * H + h * H, r) for d in range(DAYS) for h, r in points))


def run(seed: int, share: float) -> tuple[Any, float, int]:
    """(the estimate, the true mean of guests who followed a sent nudge, sent windows)."""
    duration = DAYS * 24 * H
    crowd = NudgedArrivals(
        long_rate=_day([(0, 0.3), (10, 0.6), (16, 0.45), (23.9, 0.3)]),
        alt_rate=_day([(0, 0.02), (9, 0.05), (13, 0.12), (18, 0.06), (23.9, 0.02)]),
        duration_s=duration, response=GuestResponse(share, WALK_S), seed=seed)
    planner = NudgePlanner(_cfg(), Topics("park", "gw-a"), seed=seed)
    gw_b = Topics("park", "gw-b")
    live: str | None = None
    for t in np.arange(0.0, duration, TICK_S):
        crowd.advance(float(t), live)
        planner.remote_state(gw_b.envelope(
            SCHEMA_ZONE_STATE, T0 + t, seq=1, zone="jungle-queue", zone_name="Jungle Cruise",
            kind="queue", wait_joining_s=480.0, wait_forecast_s=480.0, throughput_per_min=6.0,
            readers_online=2, arrivals_per_min=round(crowd.arrivals_per_min(float(t), 300.0), 2)))
        own = 2700.0 if t >= 600 else float("nan")  # the line is long once the day runs
        out = planner.step(T0 + t, {"dino-queue": {"wait_s_flowing": own}})
        for _topic, nudge, _expiry in out.nudges:
            live = nudge["moment_id"] if nudge["status"] == "active" else None
    sent = [o for o in planner.history if o.arm == "sent"]
    truth = float(np.mean([crowd.followed.get(o.id, 0) for o in sent]))
    return estimate(planner.history), truth, len(sent)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_measured_uplift_recovers_the_simulated_response(seed: int) -> None:
    est, truth, n_sent = run(seed, share=0.15)
    print(f"seed {seed}: {est.opportunities} opportunities ({est.sent} sent, {est.held_out} "
          f"held out): uplift {est.uplift_arrivals:.1f} guests/window, 95 % "
          f"[{est.ci_low:.1f}, {est.ci_high:.1f}], true {truth:.1f} "
          f"({est.uplift_pct:.0f} % of held-out arrivals {est.held_out_mean:.1f})")
    assert est.opportunities >= 90 and n_sent == est.sent  # every window was measured
    assert 8 <= est.held_out <= 35  # ~20 % held out
    assert est.adjusted
    assert truth > 50  # the response is real: ~0.15 * 0.45/s * 900 s
    assert est.ci_low is not None and est.ci_high is not None
    assert est.ci_low <= truth <= est.ci_high
    assert est.ci_low > 0  # and the experiment sees it


def test_no_response_measures_no_uplift() -> None:
    est, truth, _n = run(4, share=0.0)
    assert truth == 0.0
    assert est.ci_low is not None and est.ci_high is not None
    assert est.ci_low <= 0.0 <= est.ci_high
