"""Accuracy of the zone kernels against the simulator's ground truth.

    python bench/accuracy.py [--quick] [--seeds 1,2,3] [--out bench/out/accuracy.json]
                             [--plots bench/out/]

Each offline scenario of ``simulators.scenarios`` is simulated (fixed seeds) and its reads
drive the gateway core itself (``agent.gateway.GatewayCore``, built from a gateway config of
the scenario's readers and zones with every other setting at its default): every read stamped
in ``(k - 1, k]`` s is handed over as one batch, then ``step(k)``, once per simulated second.
The figures are therefore the gateway's own: its engine, its values and its moment rules. The
same rules over the true series (through the core's ``rule_values``) give the true moments.

What is compared with what (per tick, per queue zone unless said otherwise):

``wait_mae_pct``
    mean |wait_s - truth| / mean truth, in %. The truth is what ``wait_s`` claims to be: the
    wait of the guests boarding now, i.e. the median wait (exit - entry) of the guests who left
    the queue in the last ``TRUE_WAIT_WINDOW_S`` s (``Simulation.true_wait_s``). Ticks where
    nobody left in that window (a breakdown) have no truth and are skipped.
``wait_joining_mae_pct``
    ``wait_joining_s`` against the wait of a guest joining now (``true_wait_joining_s``), the
    wait a sign at the entrance promises.
``queue_length_mae_pct``
    mean |queue_length - true guests between the readers| / mean true length, in %.
``occupancy_mae_pct`` (area zones)
    the same for area occupancy.
``queue_occupancy_mae_pct``
    queue zones' uncorrected ``occupancy`` against the true queue length: the read-rate
    correction must never make ``queue_length`` worse than this by more than 2 % of the mean.
``moment_precision``, ``moment_recall``
    over ``queue_long`` (queue zones) and ``zone_crowded`` (zones with a capacity) moments. A
    moment is its interval from "opened" to "resolved" (or the end of the run); an estimated
    moment is right when it overlaps a true moment of the same kind and zone, a true moment is
    found when an estimated one overlaps it.
``moment_delay_s``
    median of (estimated opening - true opening) of found ``queue_long`` moments (both include
    the rules' hold time, so it cancels).
``departure_delay_s`` (area zones a Setup lists in ``departure_zones``)
    median, over the guests' visits to such a zone that ended during the run (the guest left
    the venue or moved to another zone), of the time from the visit's last read (the last
    advert any adapter heard while the guest was there; ``Simulation.departures``) to the
    first tick at which the engine no longer counted the guest's tag in that zone. The
    engine's per-tag state is read after every tick (``tags_in_zones``: tags whose row is
    ``TAG_IN``, with their zone). Visits the engine never counted in the zone while they
    lasted (``unseen``: missed, or counted in the other zone) are left out; so are visits no
    reader ever heard. A departure still not reflected when the guest came back to the zone
    or the run ended (``unreflected``) counts with the time waited so far (a lower bound).
    ``departure_delay_p90_s`` is the 90th percentile of the same.
``settled``
    ``wait_mae_pct``, ``wait_joining_mae_pct`` and ``queue_length_mae_pct`` over the ticks the
    gateway did not mark ``warming_up`` (it started on a line whose guests it never saw enter:
    until the first guests it saw enter board, nothing in the reads tells how many are ahead
    of them, and it publishes lower bounds), and ``warming_share``, the share of queue-zone
    ticks that were marked.
``forecast_lead_min``
    for each true ``queue_long`` moment, how long before its opening the estimated
    ``queue_rising`` moment (the forecast crossing the same level) opened, in minutes; a true
    moment with no rising moment in the ``LEAD_SEARCH_S`` before it (and still open when
    the wait crossed) counts as a lead of 0. Median per scenario. ``rising_false_alarms``
    counts rising moments followed by no true queue_long within the horizon plus 15 min.

Overall figures pool every (scenario, seed, zone, tick) sample (MAE %: sum of absolute errors
over sum of truths) and every moment.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import (
    BrokerConfig,
    Config,
    EstimationConfig,
    GatewayConfig,
    MomentsConfig,
    ReaderConfig,
    StorageConfig,
    VenueConfig,
    ZoneConfig,
)
from agent.gateway import GatewayCore, MomentDecider
from agent.moments import MomentEvent
from kernels import METHOD_AT_LEAST, METHOD_LITTLE, METHOD_MEASURED, METHOD_NONE, QL_WARMING
from simulators.scenarios import Scenario, get_scenario

TRUE_WAIT_WINDOW_S = 60.0
LEAD_SEARCH_S = 3600.0
MIN = 60.0

# The targets (issue "one gateway core"). A dotted name is a figure inside a group
# (``settled.queue_length_mae_pct``). The queue figures are judged ``settled``: leaving out
# the ticks the gateway marked ``warming_up`` (it started on a line whose guests it never saw
# enter, so their number is not in the reads; it publishes lower bounds and says so), which
# only ``queue_at_start`` has; that those lower bounds are honest is judged there
# (``settled.warming_over_truth_share``). The raw figures are reported beside them.
TARGETS = {
    "settled.wait_mae_pct": ("<=", 5.0),
    "settled.wait_joining_mae_pct": ("<=", 10.0),
    "settled.queue_length_mae_pct": ("<=", 5.0),
    "moment_precision": (">=", 0.97),
    "moment_recall": (">=", 0.97),
    "moment_delay_s": ("<=", 60.0),
    "forecast_lead_min": (">=", 5.0),  # on morning_rush
}
# What every scenario with queue zones must reach: the joining wait within 15 %, the queue
# length within 8 %, and the read-rate correction never more than 2 % of the true mean
# worse than the count as read (``correction_cost_pct``).
QUEUE_SCENARIO_TARGETS = {
    "settled.wait_joining_mae_pct": ("<=", 15.0),
    "settled.queue_length_mae_pct": ("<=", 8.0),
    "correction_cost_pct": ("<=", 2.0),
}
# What a scenario's own figures must reach besides (reported as ``met`` per scenario).
SCENARIO_TARGETS = {
    "ble_areas": {"occupancy_mae_pct": ("<=", 8.0), "departure_delay_s": ("<=", 20.0)},
    # Warming up, the published queue length is a lower bound: above the truth by more than
    # 5 % on at most 5 % of those ticks.
    "queue_at_start": {"settled.warming_over_truth_share": ("<=", 0.05)},
}


def figure(summary: dict[str, Any], name: str) -> Any:
    """``summary[name]``, following a dotted name into groups (None when absent)."""
    v: Any = summary
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def scenario_targets(name: str, summary: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The targets scenario ``name`` is judged by (queue targets where it has queues)."""
    out = dict(QUEUE_SCENARIO_TARGETS) if summary.get("queue_length_mae_pct") is not None else {}
    out.update(SCENARIO_TARGETS.get(name, {}))
    return out


@dataclass(frozen=True)
class Setup:
    """How a scenario is judged: queue_long levels per queue zone (s) and which zones count."""

    queue_long_s: dict[str, float]
    note: str
    departure_zones: tuple[str, ...] = ()  # area zones scored for departure_delay_s


# queue_long levels that the scenario's true wait crosses clearly (or, for parade, never),
# so that the moment scores mean something. Clear levels are the agent's default (80 %).
SETUPS: dict[str, Setup] = {
    "steady_day": Setup(
        {"dino-queue": 15 * MIN, "jungle-queue": 5 * MIN},
        "Dino's wait passes 15 min late morning; Jungle's passes 5 min at lunch",
    ),
    "morning_rush": Setup(
        {"dino-queue": 20 * MIN, "jungle-queue": 30 * MIN},
        "rope drop: Dino's wait passes 20 min ~25 min in; Jungle never queues",
    ),
    "ride_breakdown": Setup(
        {"dino-queue": 10 * MIN, "jungle-queue": 30 * MIN},
        "Dino restarts with a ~15 min wait (no one boards, so no boarding wait, while it is "
        "down); Jungle never queues",
    ),
    "parade": Setup(
        {"dino-queue": 10 * MIN, "jungle-queue": 10 * MIN},
        "no queue_long should fire; the plaza (1500) is crowded during the parade",
    ),
    "noisy_radio": Setup(
        {"dino-queue": 10 * MIN, "jungle-queue": 30 * MIN},
        "Dino's wait passes 10 min through 60 % readers",
    ),
    "area_near_capacity": Setup(
        {"dino-queue": 8 * MIN, "jungle-queue": 30 * MIN},
        "the plaza (300) fills after ~15 min; Dino's wait passes 8 min near the end",
    ),
    "queue_at_start": Setup(
        {"dino-queue": 20 * MIN, "jungle-queue": 30 * MIN},
        "Dino's boarding wait is ~20 min at t = 0 (true queue_long opens after the hold), "
        "peaks at 30-34 min after 30 min and falls below 16 min at 1 h 05-1 h 20; the agent "
        "has no entry reads of the ~900-1050 guests in line at t = 0; Jungle never queues",
    ),
    "glitchy_lines": Setup(
        {"dino-queue": 10 * MIN, "jungle-queue": 30 * MIN},
        "Dino's wait passes 10 min through line outages, held bands and late bursts",
    ),
    "ble_areas": Setup(
        {},
        "BLE only: the lounge (30) passes 90 % for 10-15 min after the show at 60-65 min; "
        "departures scored in both areas",
        departure_zones=("lounge", "arcade"),
    ),
}

QUICK = {"morning_rush": 5400.0, "ride_breakdown": 7200.0, "noisy_radio": 5400.0,  # s
         "glitchy_lines": 3600.0, "ble_areas": 4500.0, "queue_at_start": 7200.0}
DEFAULT_SEEDS = (1, 2, 3)
MAX_TAGS = 1 << 14  # the agent defaults to 2^17; no evictions happen below 2^14 here (checked)


# --------------------------------------------------------------------------------------------
# Running one simulation through the engine


@dataclass
class Run:
    """Per-tick series of one (scenario, seed): estimates and truths per zone."""

    scenario: str
    seed: int
    t: np.ndarray
    zones: list[str]
    kinds: list[str]
    est: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    truth: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    est_moments: list[Moment] = field(default_factory=list)
    true_moments: list[Moment] = field(default_factory=list)
    # (kind, zone) -> (the true series the rule watches, its open level), for diagnostics
    watched: dict[tuple[str, str], tuple[np.ndarray, float]] = field(default_factory=dict)
    # per departure scored (see departure_delay_s): delay (s) and its kind
    departure_delays: list[float] = field(default_factory=list)
    departure_counts: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    seconds: float = 0.0


@dataclass
class Moment:
    kind: str
    zone: str
    opened: float
    resolved: float  # the end of the run when still open


def agent_config(sc: Scenario, setup: Setup) -> Config:
    """A gateway config for the scenario: its readers, zones, capacities and queue_long levels
    (every other setting at the agent's default)."""
    zones = tuple(
        ZoneConfig(
            z.id,
            z.kind,
            capacity=z.capacity,
            queue_long_wait_s=setup.queue_long_s.get(z.id, 1800.0),
            wait_short_s=0.0,
        )
        for z in sc.layout.zones
    )
    readers = tuple(
        ReaderConfig(r.id, r.protocol, r.zone, role=r.role, port="sim://" + r.id)
        for r in sc.layout.readers
    )
    return Config(
        venue=VenueConfig("bench"),
        gateway=GatewayConfig("bench"),
        broker=BrokerConfig(),
        storage=StorageConfig(),
        moments=MomentsConfig(),
        estimation=EstimationConfig(),
        readers=readers,
        zones=zones,
    )


EST_FIELDS = (
    "queue_length",
    "occupancy",
    "wait_s",
    "wait_joining_s",
    "wait_forecast_s",
    "arrivals_per_min",
    "throughput_per_min",
    "dwell_p90_s",
)
BENCH_KEY = bytes(range(32))  # the pseudonym key of the simulated gateway


def run_one(name: str, seed: int, duration_s: float | None = None) -> Run:
    """Simulate one scenario and drive the gateway core with it, one tick per second."""
    t0 = time.perf_counter()
    sc = get_scenario(name)
    if duration_s is not None:
        sc = replace(sc, duration_s=min(sc.duration_s, duration_s))
    setup = SETUPS[name]
    sim = sc.run(seed=seed)
    cfg = agent_config(sc, setup)
    core = GatewayCore(cfg, key=BENCH_KEY, max_tags=MAX_TAGS)
    for rid in core.readers:
        core.reader_state(rid, True, None, 0.0)  # simulated readers are always up
    zones = [z.id for z in sc.layout.zones]
    kinds: list[str] = [z.kind for z in sc.layout.zones]
    n_ticks = int(math.floor(sc.duration_s))
    t = np.arange(1, n_ticks + 1, dtype=np.float64)
    run = Run(name, seed, t, zones, kinds)

    est = {z: {f: np.full(n_ticks, np.nan) for f in EST_FIELDS} for z in zones}
    method = {z: np.zeros(n_ticks, np.int8) for z in zones}
    ql_method = {z: np.zeros(n_ticks, np.int8) for z in zones}
    reads = sim.reads
    ts = reads["ts"]
    tag = reads["tag"].astype(np.uint64)
    reader = reads["reader"].astype(np.int32)
    rssi = reads["rssi"].astype(np.float32)  # NaN for RFID readers
    tracker = DepartureTracker(sim, setup.departure_zones) if setup.departure_zones else None
    # reads stamped in (k - 1, k] form the batch of tick k
    cut = np.searchsorted(ts, t, side="right")
    lo = 0
    open_at: dict[tuple[str, str], float] = {}
    for i in range(n_ticks):
        hi = int(cut[i])
        if hi > lo:
            core.accept_columns(ts[lo:hi], tag[lo:hi], reader[lo:hi], rssi[lo:hi])
        lo = hi
        res = core.step(float(t[i]))
        if tracker is not None:
            tracker.observe(float(t[i]), core.engine)
        for zi, z in enumerate(zones):
            row, v = est[z], res.values[z]
            for f in EST_FIELDS:
                row[f][i] = v.get(f, math.nan)
            method[z][i] = res.metrics.wait_method[zi]
            ql_method[z][i] = res.metrics.queue_length_method[zi]
        collect_moments(res.events, open_at, run.est_moments)
    close_moments(open_at, float(t[-1]), run.est_moments)
    for z in zones:
        est[z]["wait_method"] = method[z].astype(np.float64)
        est[z]["queue_length_method"] = ql_method[z].astype(np.float64)
    run.est = est
    run.evictions = core.engine.evictions
    if tracker is not None:
        run.departure_delays, run.departure_counts = tracker.finish(float(t[-1]))

    for z, kind in zip(zones, kinds, strict=True):
        if kind == "queue":
            run.truth[z] = {
                "queue_length": sim.true_queue_length(z, t).astype(np.float64),
                "wait_s": sim.true_wait_s(z, t, window_s=TRUE_WAIT_WINDOW_S),
                "wait_joining_s": sim.true_wait_joining_s(z, t),
            }
        else:
            run.truth[z] = {"occupancy": sim.true_occupancy(z, t).astype(np.float64)}

    true_series = truth_values(run)
    run.true_moments = moments_over(cfg, t, true_series)
    for zc in cfg.zones:
        s = true_series[zc.id]
        if zc.kind == "queue":
            run.watched[("queue_long", zc.id)] = (s["wait_s"], zc.queue_long_wait_s)
        if zc.capacity:
            count = s["queue_length"] if zc.kind == "queue" else s["occupancy"]
            run.watched[("zone_crowded", zc.id)] = (100.0 * count / zc.capacity, zc.crowded_pct)
    run.seconds = time.perf_counter() - t0
    return run


def tags_in_zones(engine: Any) -> tuple[np.ndarray, np.ndarray]:
    """(tag, zone index) of every tag the engine counts in a zone now.

    The engine's per-tag rows, the arrays its ``snapshot()`` names ``row_key``, ``row_zone``
    and ``row_state``, where state ``TAG_IN`` means in the zone. Read in place when the
    engine can (``tag_fields``; a snapshot copies every table, ~1 ms a tick)."""
    from kernels.codes import TAG_IN

    fields = engine.tag_fields() if hasattr(engine, "tag_fields") else engine.snapshot()
    key, zone, state = fields["row_key"], fields["row_zone"], fields["row_state"]
    inside = state == TAG_IN
    return key[inside], zone[inside]


class DepartureTracker:
    """Follows the guests' departures from some area zones through the engine's per-tag state
    (``departure_delay_s`` in the module docstring)."""

    def __init__(self, sim: Any, zone_ids: Sequence[str]) -> None:
        parts = []
        for zid in zone_ids:
            d = sim.departures(zid)
            zone = np.full(len(d), sim.layout.zone_index(zid), np.int32)
            parts.append((d, zone))
        d = np.concatenate([p[0] for p in parts])
        self.zone = np.concatenate([p[1] for p in parts])
        self.never_read = int(np.isnan(d["last_read_ts"]).sum())
        keep = np.isfinite(d["last_read_ts"])
        d, self.zone = d[keep], self.zone[keep]
        self.tag = d["tag"].astype(np.uint64)
        self.arrive = d["arrive_ts"]
        self.last = d["last_read_ts"]
        # The same guest's next visit to the same zone ends the wait for this departure.
        self.back = np.full(len(d), np.inf)
        v = sim.visits
        for j in range(len(d)):
            same = (v["guest"] == d["guest"][j]) & (v["zone"] == self.zone[j]) & (
                v["arrive_ts"] >= d["leave_ts"][j])
            if same.any():
                self.back[j] = float(v["arrive_ts"][same].min())
        self.seen = np.zeros(len(d), bool)
        self.done = np.zeros(len(d), bool)
        self.delay = np.full(len(d), np.nan)
        self.kind = np.zeros(len(d), np.int8)  # 1 reflected, 2 unreflected

    def observe(self, now: float, engine: Any) -> None:
        active = ~self.done & (self.arrive <= now)
        if not active.any():
            return
        tags, zones = tags_in_zones(engine)
        counted = np.zeros(len(self.tag), bool)
        for z in np.unique(self.zone[active]):
            mine = active & (self.zone == z)
            counted[mine] = np.isin(self.tag[mine], tags[zones == z])
        self.seen |= active & counted & (self.last >= now - 1.0)
        due = active & (self.last <= now)
        gone = due & ~counted
        back = due & counted & (self.back <= now)
        for mask, kind in ((gone, 1), (back, 2)):
            self.done |= mask
            self.delay[mask] = now - self.last[mask]
            self.kind[mask] = kind

    def finish(self, end: float) -> tuple[list[float], dict[str, int]]:
        """The delays of the departures scored, and how many of each kind there were."""
        open_ = ~self.done & (self.last <= end)
        self.delay[open_] = end - self.last[open_]
        self.kind[open_] = 2
        scored = self.seen & (self.kind > 0)
        counts = {
            "reflected": int((scored & (self.kind == 1)).sum()),
            "unreflected": int((scored & (self.kind == 2)).sum()),
            "unseen": int((~self.seen & (self.kind > 0)).sum()),
            "never_read": self.never_read,
        }
        return [float(x) for x in self.delay[scored]], counts


def collect_moments(events: Iterable[MomentEvent], open_at: dict[tuple[str, str], float],
                    out: list[Moment]) -> None:
    """Turn moment events into intervals: opened .. resolved."""
    for ev in events:
        key = (ev.kind, ev.zone)
        if ev.status == "opened":
            open_at[key] = ev.at
        elif ev.status == "resolved" and key in open_at:
            out.append(Moment(ev.kind, ev.zone, open_at.pop(key), ev.at))


def close_moments(open_at: dict[tuple[str, str], float], end: float,
                  out: list[Moment]) -> None:
    """Moments still open at the end of the run last until then."""
    for (kind, zone), opened in open_at.items():
        out.append(Moment(kind, zone, opened, end))
    open_at.clear()
    out.sort(key=lambda m: m.opened)


def truth_values(run: Run) -> dict[str, dict[str, np.ndarray]]:
    """The true series under the names the moment rules read."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for z, kind in zip(run.zones, run.kinds, strict=True):
        tr = run.truth[z]
        if kind == "queue":
            out[z] = {"queue_length": tr["queue_length"], "wait_s": tr["wait_s"]}
        else:
            out[z] = {"occupancy": tr["occupancy"]}
    return out


def moments_over(cfg: Config, t: np.ndarray, series: dict[str, dict[str, np.ndarray]]) -> list[
    Moment
]:
    """The moments the gateway's own :class:`agent.gateway.MomentDecider` opens over per-tick
    true series."""
    decider = MomentDecider(cfg)
    open_at: dict[tuple[str, str], float] = {}
    out: list[Moment] = []
    for i in range(t.size):
        metrics = {z: {k: float(v[i]) for k, v in s.items()} for z, s in series.items()}
        collect_moments(decider.decide(float(t[i]), metrics, {})[1], open_at, out)
    close_moments(open_at, float(t[-1]), out)
    return out


# --------------------------------------------------------------------------------------------
# Scoring


SCORED_KINDS = ("queue_long", "zone_crowded")


@dataclass
class Tally:
    """Sums that pool into MAE percentages and moment scores."""

    abs_err: dict[str, float] = field(default_factory=dict)
    truth_sum: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # truth defined, estimate NaN
    methods: dict[str, int] = field(default_factory=dict)
    est_moments: int = 0
    est_right: int = 0
    true_moments: int = 0
    true_found: int = 0
    delays: list[float] = field(default_factory=list)
    leads: list[float] = field(default_factory=list)
    departure_delays: list[float] = field(default_factory=list)
    departure_counts: dict[str, int] = field(default_factory=dict)
    rising_false: int = 0
    warming: int = 0  # queue-zone ticks marked warming_up
    warming_scored: int = 0  # ... with a finite estimate and truth
    warming_over: int = 0  # ... whose lower bound was over the truth by more than 5 %
    queue_ticks: int = 0
    marginal_missed: int = 0  # missed true moments whose truth peaked < 5 % over the level
    marginal_false: int = 0  # wrong estimated moments whose truth came within 5 % of it
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [est, right, true, found]

    def add_err(self, name: str, est: np.ndarray, truth: np.ndarray) -> None:
        has = np.isfinite(truth)
        ok = has & np.isfinite(est)
        self.abs_err[name] = self.abs_err.get(name, 0.0) + float(np.abs(est - truth)[ok].sum())
        self.truth_sum[name] = self.truth_sum.get(name, 0.0) + float(truth[ok].sum())
        self.n[name] = self.n.get(name, 0) + int(ok.sum())
        self.missing[name] = self.missing.get(name, 0) + int((has & ~ok).sum())

    def merge(self, other: Tally) -> None:
        for name in other.abs_err:
            self.abs_err[name] = self.abs_err.get(name, 0.0) + other.abs_err[name]
            self.truth_sum[name] = self.truth_sum.get(name, 0.0) + other.truth_sum[name]
            self.n[name] = self.n.get(name, 0) + other.n[name]
            self.missing[name] = self.missing.get(name, 0) + other.missing[name]
        for k, v in other.methods.items():
            self.methods[k] = self.methods.get(k, 0) + v
        self.est_moments += other.est_moments
        self.est_right += other.est_right
        self.true_moments += other.true_moments
        self.true_found += other.true_found
        self.delays += other.delays
        self.leads += other.leads
        self.departure_delays += other.departure_delays
        for k, n in other.departure_counts.items():
            self.departure_counts[k] = self.departure_counts.get(k, 0) + n
        self.rising_false += other.rising_false
        self.warming += other.warming
        self.warming_scored += other.warming_scored
        self.warming_over += other.warming_over
        self.queue_ticks += other.queue_ticks
        self.marginal_missed += other.marginal_missed
        self.marginal_false += other.marginal_false
        for kind, counts in other.by_kind.items():
            mine = self.by_kind.setdefault(kind, [0, 0, 0, 0])
            for j in range(4):
                mine[j] += counts[j]

    def pct(self, name: str) -> float | None:
        s = self.truth_sum.get(name, 0.0)
        return None if s <= 0 else 100.0 * self.abs_err[name] / s

    def summary(self) -> dict[str, Any]:
        total = sum(self.methods.values())
        return {
            "wait_mae_pct": rnd(self.pct("wait_s")),
            "wait_joining_mae_pct": rnd(self.pct("wait_joining_s")),
            # ... leaving out the ticks marked warming_up (see score)
            "settled": {
                "warming_share": rnd(ratio(self.warming, self.queue_ticks), 4),
                "wait_mae_pct": rnd(self.pct("wait_s_settled")),
                "wait_joining_mae_pct": rnd(self.pct("wait_joining_s_settled")),
                "queue_length_mae_pct": rnd(self.pct("queue_length_settled")),
                "warming_over_truth_share": rnd(ratio(self.warming_over, self.warming_scored),
                                                4),
            },
            "queue_length_mae_pct": rnd(self.pct("queue_length")),
            "occupancy_mae_pct": rnd(self.pct("occupancy")),
            "queue_occupancy_mae_pct": rnd(self.pct("queue_occupancy")),
            # What the read-rate correction costs where it makes the number worse than the
            # count as read (negative: it helps), in % of the true mean, settled ticks.
            "correction_cost_pct": rnd(diff(self.pct("queue_length_settled"),
                                            self.pct("queue_occupancy_settled"))),
            "moment_precision": rnd(ratio(self.est_right, self.est_moments), 3),
            "moment_recall": rnd(ratio(self.true_found, self.true_moments), 3),
            "moment_delay_s": rnd(median(self.delays), 0),
            "forecast_lead_min": rnd(median(self.leads), 1),
            "departure_delay_s": rnd(median(self.departure_delays), 1),
            "departure_delay_p90_s": rnd(quantile(self.departure_delays, 0.9), 1),
            "departures": dict(sorted(self.departure_counts.items())),
            "moments": {
                "estimated": self.est_moments,
                "estimated_right": self.est_right,
                "true": self.true_moments,
                "true_found": self.true_found,
                "by_kind": {
                    k: dict(zip(("estimated", "right", "true", "found"), v, strict=True))
                    for k, v in sorted(self.by_kind.items())
                },
                "delays_s": [round(d) for d in sorted(self.delays)],
                "leads_min": [round(x, 1) for x in sorted(self.leads)],
                "rising_false_alarms": self.rising_false,
                "missed_marginal": self.marginal_missed,
                "wrong_marginal": self.marginal_false,
            },
            "wait_coverage": rnd(
                ratio(self.n.get("wait_s", 0), self.n.get("wait_s", 0) + self.missing.get(
                    "wait_s", 0)), 4),
            "wait_method_share": {
                k: round(v / total, 4) for k, v in sorted(self.methods.items())
            } if total else {},
            "ticks_compared": dict(sorted(self.n.items())),
        }


def rnd(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def median(xs: Sequence[float]) -> float | None:
    return None if not xs else float(np.median(xs))


def quantile(xs: Sequence[float], q: float) -> float | None:
    return None if not xs else float(np.quantile(xs, q))


METHOD_NAMES = {METHOD_MEASURED: "measured", METHOD_LITTLE: "little", METHOD_NONE: "none",
                METHOD_AT_LEAST: "at_least"}


def overlaps(a: Moment, b: Moment) -> bool:
    return a.opened <= b.resolved and b.opened <= a.resolved


def score(run: Run, horizon_s: float) -> Tally:
    """Errors and moment matches of one run."""
    tl = Tally()
    tl.departure_delays = list(run.departure_delays)
    tl.departure_counts = dict(run.departure_counts)
    for z, kind in zip(run.zones, run.kinds, strict=True):
        e, tr = run.est[z], run.truth[z]
        if kind == "queue":
            tl.add_err("wait_s", e["wait_s"], tr["wait_s"])
            joining = e["wait_joining_s"]
            if not np.isfinite(joining).any():  # kernels without wait_joining_s
                joining = e["wait_s"]
            tl.add_err("wait_joining_s", joining, tr["wait_joining_s"])
            tl.add_err("queue_length", e["queue_length"], tr["queue_length"])
            # The same once warmed up: ticks the gateway marked warming_up (it started on a
            # line whose guests it never saw enter; their number is not in the reads) left out.
            warm = e["queue_length_method"] == QL_WARMING
            tl.warming += int(warm.sum())
            tl.queue_ticks += int(warm.size)
            for name, series in (("wait_s", e["wait_s"]), ("wait_joining_s", joining),
                                 ("queue_length", e["queue_length"])):
                tl.add_err(name + "_settled", np.where(warm, np.nan, series), tr[name])
            ql, tq = e["queue_length"], tr["queue_length"]
            scored = warm & np.isfinite(ql) & np.isfinite(tq)
            tl.warming_scored += int(scored.sum())
            tl.warming_over += int((scored & (ql > 1.05 * tq)).sum())
            # What the read-rate correction is judged against: the count as read.
            tl.add_err("queue_occupancy", e["occupancy"], tr["queue_length"])
            tl.add_err("queue_occupancy_settled", np.where(warm, np.nan, e["occupancy"]),
                       tr["queue_length"])
            codes, counts = np.unique(e["wait_method"].astype(np.int8), return_counts=True)
            for c, n in zip(codes, counts, strict=True):
                name = METHOD_NAMES.get(int(c), str(int(c)))
                tl.methods[name] = tl.methods.get(name, 0) + int(n)
        else:
            tl.add_err("occupancy", e["occupancy"], tr["occupancy"])

    for kind in SCORED_KINDS:
        est = [m for m in run.est_moments if m.kind == kind]
        true = [m for m in run.true_moments if m.kind == kind]
        right = [m for m in est if any(m.zone == t.zone and overlaps(m, t) for t in true)]
        for m in est:
            if m not in right and peak(run, m) >= 0.95:
                tl.marginal_false += 1
        found = 0
        for tm in true:
            hits = [m for m in est if m.zone == tm.zone and overlaps(m, tm)]
            if not hits and peak(run, tm) < 1.05:
                tl.marginal_missed += 1
            if hits:
                found += 1
                if kind == "queue_long":
                    tl.delays.append(min(h.opened for h in hits) - tm.opened)
        tl.est_moments += len(est)
        tl.est_right += len(right)
        tl.true_moments += len(true)
        tl.true_found += found
        acc = tl.by_kind.setdefault(kind, [0, 0, 0, 0])
        for j, v in enumerate((len(est), len(right), len(true), found)):
            acc[j] += v

    rising = [m for m in run.est_moments if m.kind == "queue_rising"]
    true_long = [m for m in run.true_moments if m.kind == "queue_long"]
    for tm in true_long:
        cands = [
            r.opened
            for r in rising
            if r.zone == tm.zone
            and tm.opened - LEAD_SEARCH_S <= r.opened <= tm.opened
            and r.resolved >= tm.opened
        ]
        tl.leads.append((tm.opened - min(cands)) / MIN if cands else 0.0)
    for r in rising:
        if not any(
            tm.zone == r.zone and r.opened <= tm.opened <= r.opened + horizon_s + 15 * MIN
            or tm.zone == r.zone and overlaps(r, tm)
            for tm in true_long
        ):
            tl.rising_false += 1
    return tl


def peak(run: Run, m: Moment) -> float:
    """Highest true value the moment's rule watched during the moment, over its open level."""
    series, level = run.watched[(m.kind, m.zone)]
    sel = (run.t >= m.opened) & (run.t <= m.resolved) & np.isfinite(series)
    return float(series[sel].max()) / level if sel.any() else math.nan


# --------------------------------------------------------------------------------------------
# Plots


def plot_run(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queues = [z for z, k in zip(run.zones, run.kinds, strict=True) if k == "queue"]
    areas = [z for z, k in zip(run.zones, run.kinds, strict=True) if k == "area"]
    rows = 2 * len(queues) + len(areas)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.6 * rows), sharex=True)
    hours = run.t / 3600.0
    ax_i = 0
    for z in queues:
        e, tr = run.est[z], run.truth[z]
        ax = axes[ax_i]
        ax.plot(hours, tr["wait_s"] / MIN, color="0.6", lw=0.8, label="true wait (boarding now)")
        ax.plot(hours, tr["wait_joining_s"] / MIN, color="tab:green", lw=0.8, ls="--",
                label="true wait (joining now)")
        ax.plot(hours, e["wait_s"] / MIN, color="tab:blue", lw=1.2, label="wait_s")
        ax.plot(hours, e["wait_forecast_s"] / MIN, color="tab:orange", lw=0.8, alpha=0.7,
                label="wait_forecast_s")
        level = SETUPS[run.scenario].queue_long_s.get(z)
        if level:
            ax.axhline(level / MIN, color="tab:red", lw=0.6, ls=":")
        shade(ax, run, z)
        ax.set_ylabel("min")
        ax.set_title(f"{z}: wait", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax = axes[ax_i + 1]
        ax.plot(hours, tr["queue_length"], color="0.6", lw=0.8, label="true queue length")
        ax.plot(hours, e["queue_length"], color="tab:blue", lw=1.0, label="queue_length")
        ax.set_ylabel("guests")
        ax.set_title(f"{z}: queue length", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax_i += 2
    for z in areas:
        ax = axes[ax_i]
        ax.plot(hours, run.truth[z]["occupancy"], color="0.6", lw=0.8, label="true occupancy")
        ax.plot(hours, run.est[z]["occupancy"], color="tab:blue", lw=1.0, label="occupancy")
        shade(ax, run, z)
        ax.set_ylabel("guests")
        ax.set_title(f"{z}: occupancy", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax_i += 1
    axes[-1].set_xlabel("hours (shaded: true moments grey, estimated red)")
    fig.suptitle(f"{run.scenario} (seed {run.seed})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def shade(ax: Any, run: Run, zone: str) -> None:
    for ms, color, y in ((run.true_moments, "0.5", (0.0, 0.5)),
                         (run.est_moments, "tab:red", (0.5, 1.0))):
        for m in ms:
            if m.zone == zone and m.kind in SCORED_KINDS:
                ax.axvspan(m.opened / 3600, m.resolved / 3600, ymin=y[0], ymax=y[1],
                           color=color, alpha=0.15)


# --------------------------------------------------------------------------------------------
# Driver


def evaluate(
    names: Iterable[str],
    seeds: Sequence[int],
    durations: dict[str, float] | None = None,
    plots: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run every scenario and seed; return the report (see the module docstring)."""
    from agent.progress import progress

    horizon = MomentsConfig().forecast_horizon_s
    overall = Tally()
    report: dict[str, Any] = {"scenarios": {}}
    names = tuple(names)
    # One step per scenario run (a scenario and seed): on stderr, only on a terminal.
    with progress("accuracy: scenario runs", total=len(names) * len(seeds)) as advance:
        for name in names:
            tally = Tally()
            secs = 0.0
            for seed in seeds:
                run = run_one(name, seed, (durations or {}).get(name))
                if run.evictions:
                    raise RuntimeError(f"{name}: {run.evictions} evictions: raise MAX_TAGS")
                tally.merge(score(run, horizon))
                advance(1)
                secs += run.seconds
                if plots is not None and seed == seeds[0]:
                    plot_run(run, plots / f"accuracy_{name}.png")
            summary = tally.summary()
            summary["simulated_h"] = round(float(run.t[-1]) / 3600.0, 2)
            summary["seconds"] = round(secs, 1)
            summary["queue_long_min"] = {
                z: v / MIN for z, v in SETUPS[name].queue_long_s.items()}
            summary["setup"] = SETUPS[name].note
            targets = scenario_targets(name, summary)
            if targets:
                summary["targets"] = {k: f"{op} {v}" for k, (op, v) in targets.items()}
                summary["met"] = {k: meets(figure(summary, k), op, v)
                                  for k, (op, v) in targets.items()}
            report["scenarios"][name] = summary
            overall.merge(tally)
            if log:
                log(line(name, summary))
    report["overall"] = overall.summary()
    rush = report["scenarios"].get("morning_rush", {})
    report["overall"]["forecast_lead_min_all"] = report["overall"]["forecast_lead_min"]
    report["overall"]["forecast_lead_min"] = rush.get("forecast_lead_min")
    report["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    report["met"] = {k: meets(figure(report["overall"], k), op, v)
                     for k, (op, v) in TARGETS.items()}
    report["settings"] = {
        "seeds": list(seeds),
        "durations_s": durations or {},
        "tick_s": 1.0,
        "true_wait": f"median wait of guests who left in the last {TRUE_WAIT_WINDOW_S:g} s",
        "engine": {"max_tags": MAX_TAGS, **{
            k: getattr(EstimationConfig(), k)
            for k in ("window_s", "rate_window_s", "fifo_slack_s", "min_measured_waits")
        }, "horizon_s": horizon},
        "moments": {k: getattr(MomentsConfig(), k) for k in ("hold_s", "cooldown_s")},
        "forecast_lead_min": "morning_rush (the median over all scenarios is "
                             "forecast_lead_min_all)",
    }
    if log:
        log(line("OVERALL", report["overall"]))
        log("targets: " + ", ".join(
            f"{k} {op} {v}: {'met' if report['met'][k] else 'MISSED'}"
            for k, (op, v) in TARGETS.items()))
        for name, met in ((n, s["met"]) for n, s in report["scenarios"].items() if "met" in s):
            log(f"{name} targets: " + ", ".join(
                f"{k} {report['scenarios'][name]['targets'][k]}: {'met' if ok else 'MISSED'}"
                for k, ok in met.items()))
    return report


def meets(x: float | None, op: str, v: float) -> bool:
    if x is None:
        return False
    return x <= v if op == "<=" else x >= v


def line(name: str, s: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:g}"

    mo = s["moments"]
    return (
        f"{name:<19} wait {f(s['wait_mae_pct']):>6}% (joining {f(s['wait_joining_mae_pct'])}%)"
        f"  qlen {f(s['queue_length_mae_pct']):>6}%  occ {f(s['occupancy_mae_pct']):>5}%"
        f"  P {f(s['moment_precision'])} R {f(s['moment_recall'])}"
        f" ({mo['estimated_right']}/{mo['estimated']}, {mo['true_found']}/{mo['true']})"
        f"  delay {f(s['moment_delay_s'])} s  lead {f(s['forecast_lead_min'])} min"
        f"  rising-false {mo['rising_false_alarms']}"
        + (f"  departure {f(s['departure_delay_s'])} s (p90 {f(s['departure_delay_p90_s'])})"
           if s["departures"] else "")
    )


ALL = ("steady_day", "morning_rush", "ride_breakdown", "parade", "noisy_radio",
       "area_near_capacity", "queue_at_start", "glitchy_lines", "ble_areas")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="bounded run for CI: " + ", ".join(
                        f"{k} (first {v / 3600:g} h)" for k, v in QUICK.items()) + ", one seed")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3)")
    ap.add_argument("--scenarios", default=None, help="comma-separated subset")
    ap.add_argument("--out", type=Path, default=Path("bench/out/accuracy.json"))
    ap.add_argument("--plots", type=Path, default=None, help="directory for one PNG a scenario")
    a = ap.parse_args(argv)
    seeds = tuple(int(s) for s in a.seeds.split(",")) if a.seeds else (
        (1,) if a.quick else DEFAULT_SEEDS)
    names: Sequence[str] = tuple(QUICK) if a.quick else ALL
    if a.scenarios:
        names = tuple(a.scenarios.split(","))
    report = evaluate(names, seeds, QUICK if a.quick else None, a.plots,
                      log=lambda s: print(s, flush=True))
    report["quick"] = a.quick
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
