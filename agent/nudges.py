"""Venue-wide nudges: send guests of a long line to a shorter one, and measure whether it works.

Pure (no I/O, no clock): :class:`agent.gateway.GatewayCore` owns one :class:`NudgePlanner`
and feeds it, every tick, its own zones' values, plus what the runtime received over MQTT:
other gateways' retained zone state (:meth:`NudgePlanner.remote_state`) and gateway status
(:meth:`NudgePlanner.gateway_status`). The tests and the benchmarks drive it the same way.

**When.** A zone with ``alternatives`` (config ``zones[].alternatives``, each a zone id and a
walk in seconds; the zone may be on another gateway) has an *opportunity* when, for its best
alternative,

    saving = own_wait - (walk_s + alt_wait_on_arrival) >= nudge_margin_s

``own_wait`` is the zone's ``wait_s_flowing`` (the wait of a guest joining now, only while
the ride moves guests). ``alt_wait_on_arrival`` projects the alternative's posted wait to
the moment a guest who walks now arrives: linearly from its ``wait_joining_s`` now towards
its ``wait_forecast_s`` (the wait a horizon ahead, ``moments.forecast_horizon_s``):
``joining + (forecast - joining) * min(walk_s / horizon, 1)``, never below 0; without a
forecast, the posted wait as it is.

An alternative is never used when its state is older than ``moments.remote_stale_s``, its
gateway's status says it is offline (its clean stop or its Last Will), no reader of it is
online, or its ride is not moving guests (``wait_joining_s`` null).

**Experiment.** Each opportunity is a window of ``moments.nudge_window_s`` (rounded to whole
``estimation.rate_window_s``, at least one). When it begins it is assigned at random (a
seeded generator): ``held_out`` with probability ``moments.nudge_holdout``, else ``sent``.
A ``sent`` window publishes the nudge on ``nudge/{zone}`` (re-published every half expiry
while it stands) and withdraws it (a ``status: withdrawn`` message) as soon as the reason
ends: the saving falls below half the margin, the alternative goes stale or offline, the
line's own wait is unknown. A ``held_out`` window publishes nothing. A window runs its full
length whatever happens (the experiment compares assignments, not what came of them); when
it ends and the opportunity still holds, the next window begins with a fresh assignment.

**Measurement.** The outcome of a window that began at ``t0`` is the number of guests who
began a visit (``arrivals_per_min``) at the alternative from ``t0 + walk_s`` (the first
nudged guest can be there) to ``t0 + walk_s + window`` (the last one). Zone state publishes
``arrivals_per_min`` over a trailing ``rate_window_s`` (``w``), so ``arrivals_per_min * w /
60`` sampled at ``t0 + walk_s + k * w`` for ``k = 1..m`` adds up to exactly the arrivals of
that span; this is why windows are whole rate windows, and why the venue's gateways must
share ``estimation.rate_window_s``. Consecutive windows' spans do not overlap. A window
whose sample cannot be taken (the alternative went stale) is *incomplete* and left out. The
covariate is the alternative's arrivals in the rate window before ``t0``.
:func:`agent.experiment.estimate` turns the outcomes into the uplift.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import AlternativeConfig, Config, ZoneConfig
from agent.experiment import Opportunity, Outcome, by_alternative, estimate
from agent.ids import new_id
from agent.timefmt import parse_rfc3339, rfc3339
from agent.topics import SCHEMA_EXPERIMENT, SCHEMA_NUDGE, SCHEMA_ZONE_STATE, Topics

NUDGE_KIND = "alternative"  # the nudge payload's kind (wait_short nudges: "wait_short")
# Why a nudge was withdrawn (the payload's ``reason``).
WITHDRAW_REASONS = ("no_longer_shorter", "alternative_stale", "alternative_offline",
                    "alternative_unavailable", "wait_unknown", "held_out")
HYSTERESIS = 0.5  # a nudge stands while the saving is at least this share of the margin


def _num(x: Any) -> float:
    """A payload number as float (NaN for null or anything else)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


@dataclass
class ZoneView:
    """The latest zone state of a zone, from its owner's retained ``zone/{zone}/state`` (or
    this gateway's own values). ``at``: wall-clock epoch seconds of the state."""

    zone: str
    gateway: str
    at: float
    name: str
    wait_joining_s: float
    wait_forecast_s: float
    arrivals_per_min: float
    throughput_per_min: float
    readers_online: int

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ZoneView:
        """Raises ValueError for what is not a zone-state payload."""
        if p.get("schema") != SCHEMA_ZONE_STATE:
            raise ValueError(f"not a zone state: schema {p.get('schema')!r}")
        zone, gateway, at = p.get("zone"), p.get("gateway"), p.get("at")
        if not isinstance(zone, str) or not isinstance(gateway, str) or not isinstance(at, str):
            raise ValueError("a zone state needs zone, gateway and at")
        name = p.get("zone_name")
        ro = p.get("readers_online")
        return cls(zone, gateway, parse_rfc3339(at), name if isinstance(name, str) else zone,
                   _num(p.get("wait_joining_s")), _num(p.get("wait_forecast_s")),
                   _num(p.get("arrivals_per_min")), _num(p.get("throughput_per_min")),
                   ro if isinstance(ro, int) and not isinstance(ro, bool) else 0)


def project_wait(joining: float, forecast: float, walk_s: float, horizon_s: float) -> float:
    """The posted wait a guest who sets off now finds on arrival ``walk_s`` later (see the
    module): linear from ``joining`` now to ``forecast`` a horizon ahead."""
    if not math.isfinite(joining):
        return math.nan
    if not math.isfinite(forecast) or horizon_s <= 0:
        return max(0.0, joining)
    return max(0.0, joining + (forecast - joining) * min(walk_s / horizon_s, 1.0))


def span_text(s: float) -> str:
    """A duration for guests: ``45 s`` below 90 s, else whole minutes."""
    return f"{round(s)} s" if s < 90 else f"{round(s / 60.0)} min"


@dataclass
class _Window:
    """One opportunity: its assignment window and its measurement."""

    opp: Opportunity
    alt: AlternativeConfig
    end: float  # the assignment window ends (wall s)
    samples: list[float]  # when the next measurement samples are due (wall s)
    arrivals: float = 0.0
    ended: bool = False  # the reason ended within the window: no nudge until the next


@dataclass
class _Shown:
    """The nudge that stands at a zone (what a withdrawal repeats)."""

    payload: dict[str, Any]
    published_at: float


@dataclass
class NudgeStep:
    """What one tick decided: nudge messages ``(topic, payload, expiry_s)`` (guaranteed
    stream), the experiment summary (retained) when it changed, and the records to keep."""

    nudges: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    opened: list[Opportunity] = field(default_factory=list)
    measured: list[tuple[str, float | None]] = field(default_factory=list)


class NudgePlanner:
    """Venue-wide nudges and their experiment for one gateway (see the module)."""

    def __init__(self, cfg: Config, topics: Topics, *, seed: int | None = None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.rng = random.Random(seed)
        self.zones: dict[str, ZoneConfig] = {z.id: z for z in cfg.zones if z.alternatives}
        self.local = {z.id for z in cfg.zones}
        self.watched = {a.zone for z in self.zones.values() for a in z.alternatives}
        self.remote: dict[str, ZoneView] = {}
        self.offline: set[str] = set()  # gateways whose latest status says offline
        self.rate_window_s = cfg.estimation.rate_window_s
        m = max(1, round(cfg.moments.nudge_window_s / self.rate_window_s))
        self.window_s = m * self.rate_window_s
        self.samples_per_window = m
        self.expiry_s = int(cfg.broker.nudge_expiry_s)
        self.active: dict[str, _Window] = {}
        self.measuring: list[_Window] = []
        self.shown: dict[str, _Shown] = {}
        self.history: list[Outcome] = []
        self._summary_due = False

    @property
    def enabled(self) -> bool:
        return bool(self.zones)

    @property
    def remote_zones(self) -> set[str]:
        """The alternatives this gateway follows over MQTT (the ones it does not own)."""
        return self.watched - self.local

    # -- inputs -------------------------------------------------------------------------
    def remote_state(self, payload: Mapping[str, Any]) -> bool:
        """Another gateway's zone state. True when it was taken (a zone this gateway
        follows, newer than what it had)."""
        try:
            view = ZoneView.from_payload(payload)
        except (ValueError, TypeError):
            return False
        if view.zone not in self.remote_zones:
            return False
        old = self.remote.get(view.zone)
        if old is not None and old.at > view.at:
            return False
        self.remote[view.zone] = view
        return True

    def gateway_status(self, gateway: str, online: bool) -> None:
        """A gateway's retained status (birth, clean stop or Last Will)."""
        if online:
            self.offline.discard(gateway)
        else:
            self.offline.add(gateway)

    def load_history(self, outcomes: Iterable[Outcome]) -> None:
        """Measured opportunities from the store (a restart keeps the experiment going)."""
        self.history = list(outcomes)
        self._summary_due = bool(self.history)

    # -- the tick -----------------------------------------------------------------------
    def _view(self, zone: str, wall: float,
              values: Mapping[str, Mapping[str, float]]) -> tuple[ZoneView | None, str]:
        """The alternative's state now, or None and why it cannot be used."""
        if zone in self.local:
            v = values.get(zone, {})
            joining = v.get("wait_joining_s", math.nan)
            if not math.isfinite(joining):
                joining = v.get("wait_s", math.nan)
            view = ZoneView(zone, self.cfg.gateway.id, wall, self.cfg.zone(zone).display_name,
                            joining, v.get("wait_forecast_s", math.nan),
                            v.get("arrivals_per_min", math.nan),
                            v.get("throughput_per_min", math.nan), 1)
        else:
            got = self.remote.get(zone)
            if got is None:
                return None, "alternative_unavailable"
            view = got
            if view.gateway in self.offline:
                return None, "alternative_offline"
            if wall - view.at > self.cfg.moments.remote_stale_s:
                return None, "alternative_stale"
        if (view.readers_online <= 0 or not math.isfinite(view.wait_joining_s)
                or not view.throughput_per_min > 0):
            return None, "alternative_unavailable"
        return view, ""

    def _saving(self, own: float, alt: AlternativeConfig,
                view: ZoneView) -> tuple[float, float]:
        """(saving, the alternative's wait on arrival), seconds."""
        proj = project_wait(view.wait_joining_s, view.wait_forecast_s, alt.walk_s,
                            self.cfg.moments.forecast_horizon_s)
        return own - (alt.walk_s + proj), proj

    def step(self, wall: float, values: Mapping[str, Mapping[str, float]]) -> NudgeStep:
        """One tick at wall-clock ``wall`` with this gateway's zone values (``rule_values``
        of every zone): nudges to publish or withdraw, records, the summary."""
        out = NudgeStep()
        if not self.enabled:
            return out
        for zone in self.zones.values():
            self._zone_step(wall, zone, values, out)
        self._measure(wall, values, out)
        if self._summary_due:
            self._summary_due = False
            out.summary = self.summary(wall)
        return out

    def _zone_step(self, wall: float, zone: ZoneConfig,
                   values: Mapping[str, Mapping[str, float]], out: NudgeStep) -> None:
        own = values.get(zone.id, {}).get("wait_s_flowing", math.nan)
        cur = self.active.get(zone.id)
        if cur is not None and wall >= cur.end:
            del self.active[zone.id]
            cur = None
        if cur is None and math.isfinite(own):
            best: tuple[float, float, AlternativeConfig, ZoneView] | None = None
            for alt in zone.alternatives:
                view, _why = self._view(alt.zone, wall, values)
                if view is None:
                    continue
                saving, proj = self._saving(own, alt, view)
                if saving >= zone.nudge_margin_s and (best is None or saving > best[0]):
                    best = (saving, proj, alt, view)
            if best is not None:
                cur = self._open(wall, zone, own, *best[1:], out)
        # Should a nudge stand at this zone now?
        reason = "no_longer_shorter"
        show: tuple[float, ZoneView] | None = None
        if cur is not None and cur.opp.arm == "held_out":
            reason = "held_out"
        elif cur is not None and not cur.ended:
            view, why = self._view(cur.alt.zone, wall, values)
            if not math.isfinite(own):
                reason = "wait_unknown"
            elif view is None:
                reason = why
            else:
                saving, proj = self._saving(own, cur.alt, view)
                if saving >= HYSTERESIS * zone.nudge_margin_s:
                    show = (proj, view)
            if show is None:
                cur.ended = True
        shown = self.shown.get(zone.id)
        if show is not None and cur is not None:
            proj, view = show
            if (shown is None or shown.payload["moment_id"] != cur.opp.id
                    or wall - shown.published_at >= self.expiry_s / 2.0):
                payload = self._nudge_payload(wall, zone, own, cur, view, proj)
                self.shown[zone.id] = _Shown(payload, wall)
                out.nudges.append((self.topics.nudge(zone.id), payload, self.expiry_s))
        elif shown is not None:
            del self.shown[zone.id]
            body = {k: v for k, v in shown.payload.items()
                    if k not in ("schema", "id", "venue", "gateway", "at", "seq")}
            alt = body.get("alternative", {})
            body.update(status="withdrawn", reason=reason,
                        message=f"The offer of {alt.get('zone_name', 'another ride')} instead "
                                f"of {zone.display_name} is withdrawn.")
            out.nudges.append((self.topics.nudge(zone.id),
                               self.topics.envelope(SCHEMA_NUDGE, wall, **body), self.expiry_s))

    def _open(self, wall: float, zone: ZoneConfig, own: float, proj: float,
              alt: AlternativeConfig, view: ZoneView, out: NudgeStep) -> _Window:
        arm = "held_out" if self.rng.random() < self.cfg.moments.nudge_holdout else "sent"
        w = self.rate_window_s
        cov = view.arrivals_per_min * w / 60.0
        opp = Opportunity(id=new_id(), zone=zone.id, alternative=alt.zone,
                          alt_gateway=view.gateway, arm=arm, started_at=wall,
                          window_s=self.window_s, walk_s=alt.walk_s, own_wait_s=round(own, 1),
                          alt_wait_s=round(proj, 1),
                          covariate=cov if math.isfinite(cov) else None)
        win = _Window(opp, alt, wall + self.window_s,
                      [wall + alt.walk_s + k * w for k in range(1, self.samples_per_window + 1)])
        self.active[zone.id] = win
        self.measuring.append(win)
        out.opened.append(opp)
        return win

    def _measure(self, wall: float, values: Mapping[str, Mapping[str, float]],
                 out: NudgeStep) -> None:
        still = []
        for win in self.measuring:
            done: float | None | bool = False  # False: still measuring
            zone = win.alt.zone
            while win.samples and win.samples[0] <= wall:
                due = win.samples[0]
                if zone in self.local:
                    apm, at = values.get(zone, {}).get("arrivals_per_min", math.nan), wall
                else:
                    view = self.remote.get(zone)
                    apm, at = ((view.arrivals_per_min, view.at) if view is not None
                               else (math.nan, -math.inf))
                if at < due:  # the state of that moment has not come yet
                    if wall - due > self.cfg.moments.remote_stale_s:
                        done = None
                    break
                if not math.isfinite(apm):
                    done = None
                    break
                win.arrivals += apm * self.rate_window_s / 60.0
                win.samples.pop(0)
            if done is False and not win.samples:
                done = round(win.arrivals, 3)
            if done is False:
                still.append(win)
                continue
            value = None if done is None else float(done)
            out.measured.append((win.opp.id, value))
            if value is not None:
                o = win.opp
                self.history.append(Outcome(o.id, o.zone, o.alternative, o.arm, o.started_at,
                                            value, o.covariate))
                self._summary_due = True
        self.measuring = still

    # -- payloads -----------------------------------------------------------------------
    def _nudge_payload(self, wall: float, zone: ZoneConfig, own: float, win: _Window,
                       view: ZoneView, proj: float) -> dict[str, Any]:
        alt = {"zone": win.alt.zone, "zone_name": view.name, "gateway": view.gateway,
               "wait_s": round(proj), "walk_s": round(win.alt.walk_s)}
        message = (f"{zone.display_name} is {span_text(own)}. {view.name}: "
                   f"{span_text(proj)} wait, {span_text(win.alt.walk_s)} walk.")
        return self.topics.envelope(
            SCHEMA_NUDGE, wall, moment_id=win.opp.id, zone=zone.id,
            zone_name=zone.display_name, wait_s=round(own), message=message,
            valid_for_s=self.expiry_s, kind=NUDGE_KIND, status="active", alternative=alt)

    def summary(self, wall: float) -> dict[str, Any]:
        """The experiment summary payload (``experiment/nudges/{gateway}``, retained)."""
        est = estimate(self.history)
        pairs = [{"zone": z, "alternative": a, **e.as_dict()}
                 for (z, a), e in by_alternative(self.history).items()]
        since = min((o.started_at for o in self.history), default=None)
        return self.topics.envelope(
            SCHEMA_EXPERIMENT, wall, experiment="nudges", holdout=self.cfg.moments.nudge_holdout,
            window_s=self.window_s, since=rfc3339(since) if since is not None else None,
            **est.as_dict(), by_alternative=pairs)
