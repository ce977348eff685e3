"""Crowding moments: threshold rules with hysteresis, hold time and cooldown.

A moment is a condition a venue acts on ("Dino Ride's wait passed 30 minutes"). Each rule
watches one value per zone (or per reader) and walks this lifecycle::

    idle --(value past open level for hold_s, not cooling down)--> opened
    opened --(moved >= update_change_pct, at most every update_interval_s)--> updated
    opened --(value back past the clear level for hold_s)--> resolved --cooldown_s--> idle

Two levels (open and clear) plus the hold time keep a noisy metric from flapping an alert
on and off; the cooldown keeps staff from being paged twice for one rush. A value of NaN
(no estimate yet) is no evidence either way: pending timers restart.

The rules are pure: :meth:`MomentRules.step` takes the time and the values and returns
:class:`MomentEvent` records; the runtime turns them into MQTT messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config, MomentsConfig, ZoneConfig
from agent.ids import new_id


@dataclass(frozen=True)
class MomentEvent:
    kind: str
    zone: str
    status: str  # "opened" | "updated" | "resolved"
    moment_id: str  # stable over one moment's lifecycle
    opened_at: float  # seconds since the epoch
    at: float
    value: float  # the watched value now (seconds, people or percent: see ``unit``)
    open_level: float
    clear_level: float
    unit: str
    reader: str | None = None  # reader_down only


@dataclass
class ThresholdRule:
    """One (kind, zone[, reader]) rule. ``above``: opens when value >= open_level."""

    kind: str
    zone: str
    open_level: float
    clear_level: float
    above: bool
    unit: str
    hold_s: float
    cooldown_s: float
    update_interval_s: float
    update_change_pct: float
    reader: str | None = None
    # lifecycle state
    moment_id: str | None = None
    opened_at: float = 0.0
    _pending_since: float | None = None
    _last_published_value: float = math.nan
    _last_published_at: float = 0.0
    _cooldown_until: float = -math.inf
    _last_now: float = field(default=-math.inf, repr=False)

    @property
    def is_open(self) -> bool:
        return self.moment_id is not None

    def _past(self, value: float, level: float) -> bool:
        return value >= level if self.above else value <= level

    def step(self, now: float, value: float) -> MomentEvent | None:
        if now < self._last_now:
            # The wall clock stepped back (NTP): restart timers rather than wait for the
            # old time to come round again.
            self._pending_since = None
            self._cooldown_until = min(self._cooldown_until, now)
        self._last_now = now
        if math.isnan(value):
            self._pending_since = None
            return None
        if not self.is_open:
            if not self._past(value, self.open_level) or now < self._cooldown_until:
                self._pending_since = None
                return None
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < self.hold_s:
                return None
            self.moment_id, self.opened_at, self._pending_since = new_id(), now, None
            return self._event("opened", now, value)

        # open: resolve once the value is back past the clear level for hold_s
        if value <= self.clear_level if self.above else value >= self.clear_level:
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since >= self.hold_s:
                ev = self._event("resolved", now, value)
                self.moment_id, self._pending_since = None, None
                self._cooldown_until = now + self.cooldown_s
                return ev
            return None
        self._pending_since = None
        moved = abs(value - self._last_published_value)
        base = max(abs(self._last_published_value), 1e-9)
        if (now - self._last_published_at >= self.update_interval_s
                and moved * 100.0 >= self.update_change_pct * base):
            return self._event("updated", now, value)
        return None

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Stable name of the rule across restarts: ``kind/zone[/reader]``."""
        return "/".join(x for x in (self.kind, self.zone, self.reader) if x)

    def snapshot(self) -> dict[str, Any] | None:
        """The lifecycle state worth keeping over a restart (None when idle and quiet)."""
        if not self.is_open and not math.isfinite(self._cooldown_until):
            return None
        return {"moment_id": self.moment_id, "opened_at": self.opened_at,
                "last_value": _json_float(self._last_published_value),
                "last_at": self._last_published_at,
                "cooldown_until": _json_float(self._cooldown_until)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`snapshot`: an open moment keeps its ``moment_id`` and is
        resolved normally later; pending timers start again (the gap is no evidence)."""
        mid = state.get("moment_id")
        self.moment_id = str(mid) if mid else None
        self.opened_at = float(state.get("opened_at") or 0.0)
        last = state.get("last_value")
        self._last_published_value = math.nan if last is None else float(last)
        self._last_published_at = float(state.get("last_at") or 0.0)
        cool = state.get("cooldown_until")
        self._cooldown_until = -math.inf if cool is None else float(cool)
        self._pending_since = None

    def _event(self, status: str, now: float, value: float) -> MomentEvent:
        assert self.moment_id is not None
        self._last_published_value, self._last_published_at = value, now
        return MomentEvent(kind=self.kind, zone=self.zone, status=status,
                           moment_id=self.moment_id, opened_at=self.opened_at, at=now,
                           value=value, open_level=self.open_level,
                           clear_level=self.clear_level, unit=self.unit, reader=self.reader)


# The moment kinds the rules raise: their one home (the contract, the schemas, the docs and
# the gateway's escalation import them from here).
QUEUE_LONG = "queue_long"  # a queue's wait at or over its zone's queue_long_wait_s
QUEUE_RISING = "queue_rising"  # the forecast crosses that level before the wait does
WAIT_SHORT = "wait_short"  # a short wait while the ride moves guests (a nudge toward it)
ZONE_CROWDED = "zone_crowded"  # the count at or over crowded_pct of capacity
DWELL_LONG = "dwell_long"  # an area's 90th-percentile dwell at or over dwell_long_s
READER_DOWN = "reader_down"  # a reader offline for reader_down_after_s
KINDS = (QUEUE_LONG, QUEUE_RISING, WAIT_SHORT, ZONE_CROWDED, DWELL_LONG, READER_DOWN)
# Alerts that are escalated when nobody takes them (the ones with a dispatch on opening).
ESCALATED_KINDS = (QUEUE_LONG, QUEUE_RISING, ZONE_CROWDED, READER_DOWN)
# Moments staff are told to stand down from when they resolve.
STAND_DOWN_KINDS = ESCALATED_KINDS


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


# The zone metrics each kind watches. Values are read from a mapping per zone.
def _zone_rules(z: ZoneConfig, m: MomentsConfig) -> Iterator[tuple[str, ThresholdRule]]:
    common: dict[str, Any] = dict(
        hold_s=m.hold_s, cooldown_s=m.cooldown_s, update_interval_s=m.update_interval_s,
        update_change_pct=m.update_change_pct)
    if z.kind == "queue":
        yield "wait_s", ThresholdRule(QUEUE_LONG, z.id, z.queue_long_wait_s, z.clear_wait_s,
                                      True, "s", **common)
        # Anticipation: the forecast crossing the same level, before the wait itself does.
        yield "wait_forecast_s", ThresholdRule(QUEUE_RISING, z.id, z.queue_long_wait_s,
                                               z.clear_wait_s, True, "s", **common)
        if z.wait_short_s > 0:
            yield "wait_s_flowing", ThresholdRule(WAIT_SHORT, z.id, z.wait_short_s,
                                                    1.5 * z.wait_short_s, False, "s", **common)
    if z.capacity > 0:
        yield "fill_pct", ThresholdRule(ZONE_CROWDED, z.id, z.crowded_pct,
                                        max(0.0, z.crowded_pct - 10.0), True, "%", **common)
    if z.kind == "area":
        yield "dwell_p90_s", ThresholdRule(DWELL_LONG, z.id, z.dwell_long_s,
                                           0.8 * z.dwell_long_s, True, "s", **common)


class MomentRules:
    """All the rules of one gateway."""

    def __init__(self, cfg: Config) -> None:
        m = cfg.moments
        self._zone_rules: list[tuple[str, ThresholdRule]] = []
        for z in cfg.zones:
            self._zone_rules.extend(_zone_rules(z, m))
        # reader_down: the value is how long the reader has been offline; it opens after
        # reader_down_after_s and resolves as soon as the reader is back (no hold: a reader
        # that answers again is simply back).
        self._reader_rules = {
            r.id: ThresholdRule(READER_DOWN, r.zone, m.reader_down_after_s, 0.0, True, "s",
                                hold_s=0.0, cooldown_s=0.0, update_interval_s=math.inf,
                                update_change_pct=100.0, reader=r.id)
            for r in cfg.readers}

    def step(self, now: float, zone_values: Mapping[str, Mapping[str, float]],
             reader_offline_s: Mapping[str, float]) -> list[MomentEvent]:
        """``zone_values[zone][metric]``; ``reader_offline_s[reader]`` (0 when online)."""
        events = []
        for metric, rule in self._zone_rules:
            ev = rule.step(now, zone_values.get(rule.zone, {}).get(metric, math.nan))
            if ev:
                events.append(ev)
        for reader, rule in self._reader_rules.items():
            ev = rule.step(now, reader_offline_s.get(reader, 0.0))
            if ev:
                events.append(ev)
        return events

    def _all(self) -> list[ThresholdRule]:
        return [r for _, r in self._zone_rules] + list(self._reader_rules.values())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Open moments and cooldowns by rule key (JSON-safe), for checkpoints."""
        out = {}
        for r in self._all():
            st = r.snapshot()
            if st is not None:
                out[r.key] = st
        return out

    def restore(self, states: Mapping[str, Mapping[str, Any]]) -> int:
        """Resume rules from :meth:`snapshot`; rules no longer configured are ignored.
        Returns how many open moments were resumed."""
        resumed = 0
        for r in self._all():
            st = states.get(r.key)
            if isinstance(st, Mapping):
                r.restore(st)
                resumed += r.is_open
        return resumed

    def open_moments(self) -> list[ThresholdRule]:
        return [r for _, r in self._zone_rules if r.is_open] + [
            r for r in self._reader_rules.values() if r.is_open]
