"""Venue-wide nudges decided in the pure planner (agent/nudges.py): which alternative, the
margin with the walk, the wait on arrival, staleness, an offline gateway, withdrawal, the
holdout, and the measurement of arrivals at the alternative."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from agent.nudges import NudgePlanner, project_wait
from agent.timefmt import rfc3339
from agent.topics import SCHEMA_ZONE_STATE, Topics

T0 = 1_750_000_000.0


def _cfg(holdout: float = 0.0, extra_zone: str = "", alternatives: str | None = None) -> Any:
    alts = alternatives or ('[{zone = "jungle-queue", walk_s = 240}, '
                            '{zone = "pirate-queue", walk_s = 600}]')
    return parse_config(f"""
[venue]
id = "park"
[gateway]
id = "gw-a"
[moments]
nudge_holdout = {holdout}
nudge_window_s = 900
remote_stale_s = 30
forecast_horizon_s = 900
[estimation]
rate_window_s = 300
[[readers]]
id = "dino-entry"
protocol = "em4100"
port = "/dev/ttyUSB0"
zone = "dino-queue"
role = "entry"
[[zones]]
id = "dino-queue"
name = "Dino Ride"
kind = "queue"
nudge_margin_s = 600
alternatives = {alts}
{extra_zone}
""")


def _state(zone: str, at: float, *, gateway: str = "gw-b", joining: float | None = 480.0,
           forecast: float | None = 480.0, apm: float = 6.0, tput: float = 5.0,
           readers: int = 2, name: str = "Jungle Cruise") -> dict[str, Any]:
    t = Topics("park", gateway)
    return t.envelope(SCHEMA_ZONE_STATE, at, seq=1, zone=zone, zone_name=name, kind="queue",
                      capacity=300, wait_joining_s=joining, wait_forecast_s=forecast,
                      arrivals_per_min=apm, throughput_per_min=tput, readers_online=readers)


def _values(wait: float) -> dict[str, dict[str, float]]:
    return {"dino-queue": {"wait_s_flowing": wait, "arrivals_per_min": 20.0}}


def _planner(**kw: Any) -> NudgePlanner:
    cfg = _cfg(**kw)
    return NudgePlanner(cfg, Topics("park", "gw-a"), seed=1)


def test_a_long_line_is_nudged_to_a_shorter_alternative_with_both_waits_and_the_walk() -> None:
    p = _planner()
    assert p.remote_state(_state("jungle-queue", T0))
    out = p.step(T0 + 1, _values(2700.0))
    assert len(out.opened) == 1 and out.opened[0].arm == "sent"
    (topic, nudge, expiry), = out.nudges
    assert topic == "venue/park/nudge/dino-queue" and expiry == 300
    assert nudge["status"] == "active" and nudge["kind"] == "alternative"
    assert nudge["alternative"] == {"zone": "jungle-queue", "zone_name": "Jungle Cruise",
                                    "gateway": "gw-b", "wait_s": 480, "walk_s": 240}
    assert nudge["wait_s"] == 2700 and nudge["valid_for_s"] == 300
    assert nudge["message"] == "Dino Ride is 45 min. Jungle Cruise: 8 min wait, 4 min walk."


def test_the_margin_counts_the_walk() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0, joining=480.0, forecast=480.0))
    # 480 wait + 240 walk + 600 margin = 1320: a 1300 s line saves too little.
    assert not p.step(T0 + 1, _values(1300.0)).nudges
    assert p.step(T0 + 2, _values(1330.0)).nudges


def test_the_best_alternative_is_chosen() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0, joining=1500.0, forecast=1500.0))
    p.remote_state(_state("pirate-queue", T0, joining=60.0, forecast=60.0, name="Pirates"))
    (_t, nudge, _e), = p.step(T0 + 1, _values(2700.0)).nudges
    assert nudge["alternative"]["zone"] == "pirate-queue"


def test_the_wait_on_arrival_follows_the_alternatives_forecast() -> None:
    assert project_wait(480.0, 1380.0, 300.0, 900.0) == pytest.approx(780.0)
    assert project_wait(480.0, math.nan, 300.0, 900.0) == 480.0
    assert project_wait(480.0, 0.0, 1800.0, 900.0) == 0.0
    p = _planner()
    # A rising alternative: 480 now, 2280 a horizon ahead -> 960 after a 240 s walk.
    p.remote_state(_state("jungle-queue", T0, joining=480.0, forecast=2280.0))
    # 960 + 240 + 600 = 1800 > 1790 (with the posted wait alone, 1320 would have nudged).
    assert not p.step(T0 + 1, _values(1790.0)).nudges
    p2 = _planner()
    p2.remote_state(_state("jungle-queue", T0, joining=480.0, forecast=2280.0))
    (_t, nudge, _e), = p2.step(T0 + 1, _values(2700.0)).nudges
    assert nudge["alternative"]["wait_s"] == 960


def test_a_stale_alternative_is_never_nudged_to_and_a_standing_nudge_is_withdrawn() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0 - 31))
    assert not p.step(T0, _values(2700.0)).nudges  # older than remote_stale_s
    p.remote_state(_state("jungle-queue", T0))
    assert p.step(T0 + 1, _values(2700.0)).nudges
    out = p.step(T0 + 40, _values(2700.0))  # nothing new for 40 s
    (_t, withdrawn, _e), = out.nudges
    assert withdrawn["status"] == "withdrawn" and withdrawn["reason"] == "alternative_stale"
    assert withdrawn["alternative"]["zone"] == "jungle-queue"


def test_an_offline_gateway_withdraws_its_zones() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    assert p.step(T0 + 1, _values(2700.0)).nudges
    p.gateway_status("gw-b", False)
    (_t, withdrawn, _e), = p.step(T0 + 2, _values(2700.0)).nudges
    assert withdrawn["reason"] == "alternative_offline"
    assert not p.step(T0 + 3, _values(2700.0)).nudges  # withdrawn once


def test_a_stopped_alternative_or_no_readers_is_no_alternative() -> None:
    for kw in ({"joining": None}, {"tput": 0.0}, {"readers": 0}):
        p = _planner()
        p.remote_state(_state("jungle-queue", T0, **kw))
        assert not p.step(T0 + 1, _values(2700.0)).nudges, kw


def test_the_nudge_is_withdrawn_when_the_line_shortens_with_hysteresis() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    assert p.step(T0 + 1, _values(2700.0)).nudges
    p.remote_state(_state("jungle-queue", T0 + 2))
    assert not p.step(T0 + 2, _values(1100.0)).nudges  # saving 380 >= 300: stands
    p.remote_state(_state("jungle-queue", T0 + 3))
    (_t, w, _e), = p.step(T0 + 3, _values(1000.0)).nudges  # saving 280 < 300
    assert w["status"] == "withdrawn" and w["reason"] == "no_longer_shorter"


def test_an_old_state_does_not_replace_a_newer_one_and_others_are_ignored() -> None:
    p = _planner()
    assert p.remote_state(_state("jungle-queue", T0))
    assert not p.remote_state(_state("jungle-queue", T0 - 5))
    assert not p.remote_state(_state("other-queue", T0))
    assert not p.remote_state({"schema": "venue-agent/moment@1"})
    assert not p.remote_state({"schema": SCHEMA_ZONE_STATE, "zone": 3})


def test_held_out_opportunities_publish_nothing_and_the_rate_matches_the_holdout() -> None:
    p = _planner(holdout=0.5)
    arms = []
    t = T0
    for _ in range(200):
        p.remote_state(_state("jungle-queue", t))
        out = p.step(t, _values(2700.0))
        for o in out.opened:
            arms.append(o.arm)
            active = [n for _t, n, _e in out.nudges if n["status"] == "active"]
            assert bool(active) == (o.arm == "sent")
        t += 900.0  # one window each
    assert len(arms) == 200
    assert 70 <= arms.count("held_out") <= 130


def test_the_same_seed_makes_the_same_assignments() -> None:
    def arms(seed: int) -> list[str]:
        p = NudgePlanner(_cfg(holdout=0.3), Topics("park", "gw-a"), seed=seed)
        got = []
        for i in range(30):
            p.remote_state(_state("jungle-queue", T0 + i * 900))
            got += [o.arm for o in p.step(T0 + i * 900, _values(2700.0)).opened]
        return got
    assert arms(5) == arms(5) and arms(5) != arms(6)


def test_arrivals_at_the_alternative_are_measured_over_the_walk_shifted_window() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0, apm=3.0))
    out = p.step(T0, _values(2700.0))
    (opp,) = out.opened
    assert opp.covariate == pytest.approx(15.0)  # 3/min over the 300 s before
    assert p.window_s == 900.0
    # Samples are due at T0 + 240 + 300 k, k = 1..3; each state reports its last 300 s.
    measured = []
    for k, apm in ((1, 6.0), (2, 8.0), (3, 4.0)):
        t = T0 + 240 + 300 * k
        p.remote_state(_state("jungle-queue", t - 1, apm=99.0))  # a second early: not used
        assert not p.step(t - 0.5, _values(2700.0)).measured
        p.remote_state(_state("jungle-queue", t + 0.5, apm=apm))
        measured += p.step(t + 0.6, _values(2700.0)).measured
    assert measured == [(opp.id, pytest.approx(30.0 + 40.0 + 20.0))]
    assert p.history[-1].arrivals == pytest.approx(90.0)


def test_a_sample_that_never_comes_makes_the_opportunity_incomplete() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    (opp,) = p.step(T0, _values(2700.0)).opened
    out = p.step(T0 + 240 + 300 + 31, _values(2700.0))
    assert (opp.id, None) in out.measured
    assert not p.history


def test_a_local_alternative_uses_this_gateways_own_values() -> None:
    extra = """
[[zones]]
id = "jungle-queue"
name = "Jungle Cruise"
kind = "queue"
"""
    cfg = _cfg(extra_zone=extra, alternatives='[{zone = "jungle-queue", walk_s = 240}]')
    p = NudgePlanner(cfg, Topics("park", "gw-a"), seed=1)
    assert p.remote_zones == set()
    vals = _values(2700.0)
    vals["jungle-queue"] = {"wait_joining_s": 300.0, "wait_forecast_s": 300.0,
                            "throughput_per_min": 4.0, "arrivals_per_min": 5.0}
    (_t, nudge, _e), = p.step(T0, vals).nudges
    assert nudge["alternative"]["gateway"] == "gw-a"
    assert nudge["alternative"]["zone_name"] == "Jungle Cruise"


def test_the_summary_follows_measured_outcomes() -> None:
    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    p.step(T0, _values(2700.0))
    for k in (1, 2, 3):
        t = T0 + 240 + 300 * k + 0.5
        p.remote_state(_state("jungle-queue", t, apm=6.0))
        out = p.step(t, _values(2700.0))
    assert out.summary is not None
    s = out.summary
    assert s["schema"] == "venue-agent/experiment@1" and s["sent"] == 1 and s["held_out"] == 0
    assert s["uplift_arrivals"] is None  # not before two of each arm
    assert s["by_alternative"][0]["alternative"] == "jungle-queue"
    assert rfc3339(T0) == s["since"]


@pytest.mark.parametrize("line, key", [
    ('alternatives = [{zone = "dino-queue", walk_s = 60}]', "zones[0].alternatives"),
    ('alternatives = [{zone = "x", walk_s = 0}]', "zones[0].alternatives[0].walk_s"),
    ('alternatives = [{zone = "x"}]', "zones[0].alternatives[0].walk_s"),
    ('alternatives = [{zone = "X Y", walk_s = 60}]', "zones[0].alternatives[0].zone"),
    ('alternatives = [{zone = "x", walk_s = 60, wlak = 1}]', "zones[0].alternatives[0].wlak"),
    ('alternatives = [{zone = "x", walk_s = 6}, {zone = "x", walk_s = 9}]',
     "zones[0].alternatives"),
    ('alternatives = "x"', "zones[0].alternatives"),
    ("nudge_margin_s = -1", "zones[0].nudge_margin_s"),
])
def test_bad_alternatives_name_the_key(line: str, key: str) -> None:
    text = ('[venue]\nid = "p"\n[gateway]\nid = "g"\n[[zones]]\nid = "dino-queue"\n'
            f'kind = "queue"\n{line}\n')
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    assert e.value.key == key, str(e.value)


@pytest.mark.parametrize("line", ["nudge_holdout = 1", "nudge_holdout = -0.1",
                                  "nudge_window_s = 0", "remote_stale_s = 0"])
def test_bad_experiment_settings_name_the_key(line: str) -> None:
    text = ('[venue]\nid = "p"\n[gateway]\nid = "g"\n[moments]\n' + line +
            '\n[[zones]]\nid = "z"\nkind = "queue"\n')
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    assert e.value.key == "moments." + line.split(" ")[0]


def test_nudges_withdrawals_and_the_summary_follow_the_contract() -> None:
    from tests.contract_check import assert_valid

    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    (topic, active, _e), = p.step(T0, _values(2700.0)).nudges
    assert_valid(topic, dict(active, seq=1))  # the outbox adds seq
    p.gateway_status("gw-b", False)
    (topic, withdrawn, _e), = p.step(T0 + 1, _values(2700.0)).nudges
    assert_valid(topic, dict(withdrawn, seq=2))
    p.gateway_status("gw-b", True)
    for k in (1, 2, 3):
        t = T0 + 240 + 300 * k + 0.5
        p.remote_state(_state("jungle-queue", t, apm=6.0))
        out = p.step(t, _values(2700.0))
    assert out.summary is not None
    assert_valid(p.topics.experiment(), dict(out.summary, seq=3))


def test_the_staff_console_drops_a_withdrawn_offer() -> None:
    from agent.console import ConsoleState

    p = _planner()
    p.remote_state(_state("jungle-queue", T0))
    (topic, active, _e), = p.step(T0, _values(2700.0)).nudges
    console = ConsoleState()
    console.apply(topic, active)
    assert [n["moment_id"] for n in console.current_nudges(T0 + 1)] == [active["moment_id"]]
    p.gateway_status("gw-b", False)
    (topic, withdrawn, _e), = p.step(T0 + 1, _values(2700.0)).nudges
    console.apply(topic, withdrawn)
    assert console.current_nudges(T0 + 2) == []
