"""Moment rules: hysteresis, hold time, cooldown, updates, NaN, clock steps."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.moments import MomentRules, ThresholdRule

CFG = """
[venue]
id = "v"
[gateway]
id = "g"
[moments]
hold_s = 10
cooldown_s = 60
update_interval_s = 30
[[zones]]
id = "q"
kind = "queue"
queue_long_wait_s = 600
wait_short_s = 0
[[readers]]
id = "r1"
protocol = "em4100"
port = "/dev/null"
zone = "q"
role = "entry"
"""


def rule(**kw: float) -> ThresholdRule:
    args = dict(hold_s=10.0, cooldown_s=60.0, update_interval_s=30.0, update_change_pct=10.0)
    args.update(kw)
    return ThresholdRule("queue_long", "q", 600.0, 480.0, True, "s", **args)  # type: ignore[arg-type]


def run(r: ThresholdRule, values: list[tuple[float, float]]) -> list[tuple[float, str]]:
    out = []
    for t, v in values:
        ev = r.step(t, v)
        if ev:
            out.append((t, ev.status))
    return out


def test_opens_only_after_hold_and_resolves_below_clear_level() -> None:
    r = rule()
    seq = [(t, 700.0) for t in range(0, 15)] + [(t, 550.0) for t in range(15, 40)] + \
          [(t, 400.0) for t in range(40, 60)]
    events = run(r, [(float(t), v) for t, v in seq])
    # opens at t=10 (held 10 s); 550 is between the levels: stays open; resolves at 50
    assert events == [(10.0, "opened"), (50.0, "resolved")]


def test_short_spike_does_not_open() -> None:
    r = rule()
    seq = [(float(t), 700.0 if t % 8 < 5 else 500.0) for t in range(100)]
    assert run(r, seq) == []


def test_cooldown_blocks_reopen() -> None:
    r = rule(hold_s=0.0)
    events = run(r, [(0.0, 700.0), (1.0, 100.0), (2.0, 700.0), (30.0, 700.0), (62.0, 700.0)])
    assert events == [(0.0, "opened"), (1.0, "resolved"), (62.0, "opened")]


def test_updates_are_rate_limited_and_need_a_real_change() -> None:
    r = rule(hold_s=0.0)
    # 10 s: too soon; 31 s: moved < 10 %; 62 s: +29 %; 70 s: too soon; 95 s: +22 %
    events = run(r, [(0.0, 700.0), (10.0, 900.0), (31.0, 720.0), (62.0, 900.0),
                     (70.0, 1200.0), (95.0, 1100.0)])
    assert events == [(0.0, "opened"), (62.0, "updated"), (95.0, "updated")]


def test_nan_is_no_evidence() -> None:
    r = rule()
    events = run(r, [(0.0, 700.0), (5.0, math.nan), (9.0, 700.0), (12.0, 700.0),
                     (19.0, 700.0)])
    assert events == [(19.0, "opened")]


def test_backwards_clock_step_restarts_hold() -> None:
    r = rule()
    events = run(r, [(1000.0, 700.0), (1005.0, 700.0), (100.0, 700.0), (105.0, 700.0),
                     (110.0, 700.0)])
    assert events == [(110.0, "opened")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1500), st.just(math.nan)), min_size=1, max_size=300))
def test_lifecycle_always_alternates(values: list[float]) -> None:
    r = rule(hold_s=3.0, cooldown_s=5.0)
    statuses = [s for _, s in run(r, [(float(i), v) for i, v in enumerate(values)])]
    state = "closed"
    for s in statuses:
        if s == "opened":
            assert state == "closed"
            state = "open"
        else:
            assert state == "open"
            if s == "resolved":
                state = "closed"


def test_rules_from_config_and_reader_down() -> None:
    cfg = parse_config(CFG)
    rules = MomentRules(cfg)
    zone = {"q": {"wait_s": 700.0, "wait_forecast_s": 700.0}}
    kinds = []
    for t in range(0, 40):
        for ev in rules.step(float(t), zone, {"r1": float(max(0, t - 5))}):
            kinds.append((t, ev.kind, ev.status))
    assert (10, "queue_long", "opened") in kinds
    assert (10, "queue_rising", "opened") in kinds
    assert (35, "reader_down", "opened") in kinds  # offline 30 s
    evs = rules.step(41.0, zone, {"r1": 0.0})
    assert [(e.kind, e.status, e.reader) for e in evs] == [("reader_down", "resolved", "r1")]
