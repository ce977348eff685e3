"""The gateway core: what one gateway publishes, decided in one pure place.

``GatewayCore(cfg, key)`` owns everything that decides a gateway's output: the pseudonymiser,
the columnar read buffer, the zone engine (kernels), the moment rules, the readers' known
state and the payload builders. It turns ``(reads, now)`` into the list of messages to store:

    core = GatewayCore(cfg, key=key)
    core.accept_reads(reader_id, ts, reads)        # as often as reads arrive
    core.reader_state(reader_id, online, message, now)
    result = core.step(now, wall=time.time())      # once per tick
    for msg in result.messages: outbox.enqueue(...)

It does no I/O: no clocks (time is passed in), no files, no network. The runtime
(``agent/runtime.py``) is the async shell around it (timer, readers, outbox, publisher); the
accuracy harness (``bench/accuracy.py``), the benchmarks and the tests drive this very class,
so the figures they print are the gateway's own.

Times: ``now`` is the kernels' clock, seconds since the epoch that never step (see
``agent.runtime.monotonic_epoch_clock``); ``wall`` is the wall clock used for the published
``at`` fields. A simulation passes the same value for both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import __version__
from agent.checkpoint import Checkpoint, CheckpointError
from agent.checkpoint import fingerprint as config_fingerprint
from agent.config import Config, ReaderConfig, ZoneConfig
from agent.moments import (
    ESCALATED_KINDS,
    QUEUE_LONG,
    QUEUE_RISING,
    READER_DOWN,
    STAND_DOWN_KINDS,
    WAIT_SHORT,
    ZONE_CROWDED,
    MomentEvent,
    MomentRules,
)
from agent.nudges import NudgePlanner, NudgeStep
from agent.privacy import EpochKey, Pseudonymizer
from agent.readbuffer import ReadBuffer
from agent.timefmt import rfc3339
from agent.topics import (
    SCHEMA_DISPATCH,
    SCHEMA_MOMENT,
    SCHEMA_NUDGE,
    SCHEMA_STATUS,
    SCHEMA_ZONE_STATE,
    SEQ_GUARANTEED,
    SEQ_STATE,
    Topics,
)
from firmware_bridge.records import RawRead

# ----------------------------------------------------------------------------- one home each
# The kernels package is imported lazily (see engine_for): numba reads NUMBA_CACHE_DIR when
# it is first imported, and the runtime sets it first.

# The names zone state publishes for the kernels' METHOD_* and QL_* codes (filled on first
# use, from the kernels' own codes).
WAIT_METHOD_NAMES: dict[int, str] = {}
QUEUE_METHOD_NAMES: dict[int, str] = {}

# What a zone-state payload carries from the kernels' metrics, with its rounding: one row per
# published field. Adding a metric to zone state is one line here (and the docs).
STATE_FIELDS: tuple[tuple[str, int], ...] = (
    ("queue_length", 1),
    ("occupancy", 1),
    ("wait_s", 1),
    ("wait_joining_s", 1),
    ("wait_forecast_s", 1),
    ("dwell_p50_s", 1),
    ("dwell_p90_s", 1),
    ("arrivals_per_min", 2),
    ("throughput_per_min", 2),
)
# The metrics a moment carries as context, and a dispatch with it.
MOMENT_CONTEXT = ("queue_length", "occupancy", "wait_s", "wait_joining_s", "wait_forecast_s",
                  "dwell_p90_s", "throughput_per_min")


_NAN = float("nan")


def clean_float(x: float | None, ndigits: int = 2) -> float | None:
    """A JSON-safe number: None for NaN, inf or missing; else rounded."""
    return None if x is None or not math.isfinite(x) else round(float(x), ndigits)


# ----------------------------------------------------------------------------- engine build
def topology_for(cfg: Config) -> Any:
    """The kernels' Topology for a gateway config (readers and zones as arrays)."""
    import kernels

    roles = {"presence": kernels.ROLE_PRESENCE, "entry": kernels.ROLE_ENTRY,
             "exit": kernels.ROLE_EXIT}
    kinds = {"queue": kernels.KIND_QUEUE, "area": kernels.KIND_AREA}
    zone_index = {z.id: i for i, z in enumerate(cfg.zones)}
    return kernels.Topology(
        reader_zone=np.array([zone_index[r.zone] for r in cfg.readers], np.int32),
        reader_role=np.array([roles[r.role] for r in cfg.readers], np.int8),
        zone_kind=np.array([kinds[z.kind] for z in cfg.zones], np.int8),
        zone_timeout_s=np.array([z.timeout_s for z in cfg.zones], np.float64),
        reader_rssi_floor=np.array([r.rssi_floor_dbm for r in cfg.readers], np.float64),
        reader_min_reads=np.array([r.min_reads for r in cfg.readers], np.int32),
        zone_missed_reads=np.array([z.departure_missed_reads for z in cfg.zones], np.float64),
    )


def engine_params(cfg: Config, *, max_tags: int | None = None) -> dict[str, Any]:
    """The kernels' EngineParams for a gateway config: the one config -> engine mapping."""
    est = cfg.estimation
    return dict(max_tags=max_tags or est.max_tags, window_s=est.window_s,
                rate_window_s=est.rate_window_s, fifo_slack_s=est.fifo_slack_s,
                min_measured_waits=est.min_measured_waits, wait_recent=est.wait_recent,
                horizon_s=cfg.moments.forecast_horizon_s)


def engine_for(cfg: Config, *, max_tags: int | None = None) -> Any:
    """A fresh ZoneEngine for ``cfg`` (``max_tags`` overrides the config, for benchmarks)."""
    import kernels

    if not WAIT_METHOD_NAMES:
        WAIT_METHOD_NAMES.update({kernels.METHOD_NONE: "none",
                                  kernels.METHOD_MEASURED: "measured",
                                  kernels.METHOD_LITTLE: "littles_law",
                                  kernels.METHOD_AT_LEAST: "at_least"})
        QUEUE_METHOD_NAMES.update({kernels.QL_NONE: "none",
                                   kernels.QL_UNCORRECTED: "as_read",
                                   kernels.QL_CORRECTED: "read_rate_corrected",
                                   kernels.QL_WARMING: "warming_up"})
    return kernels.ZoneEngine(topology_for(cfg), **engine_params(cfg, max_tags=max_tags))


def rule_values(zone: ZoneConfig, metrics: Mapping[str, float]) -> dict[str, float]:
    """The values the moment rules watch for one zone, from its metrics by name.

    Besides the metrics themselves: ``fill_pct`` (count over capacity) and
    ``wait_s_flowing`` (the wait a guest joining now will have, only while the ride is seen
    to move guests: a nudge must never promise a short wait at a stopped ride). The accuracy
    harness runs the true series through this same function to find the true moments.
    """
    v = dict(metrics)
    count = v.get("queue_length", math.nan) if zone.kind == "queue" else v.get(
        "occupancy", math.nan)
    v["fill_pct"] = 100.0 * count / zone.capacity if zone.capacity else math.nan
    joining = v.get("wait_joining_s", math.nan)
    if not math.isfinite(joining):
        joining = v.get("wait_s", math.nan)
    v["wait_s_flowing"] = joining if v.get("throughput_per_min", 0.0) > 0 else math.nan
    return v


class MomentDecider:
    """Metrics in, moment events out: :func:`rule_values` then the moment rules.

    The core decides its moments with this; the accuracy harness runs the true series through
    another instance to find the true moments, so both sides are judged by one set of rules.
    """

    def __init__(self, cfg: Config) -> None:
        self.rules = MomentRules(cfg)
        self._zones = {z.id: z for z in cfg.zones}

    def decide(self, now: float, metrics: Mapping[str, Mapping[str, float]],
               reader_offline_s: Mapping[str, float]
               ) -> tuple[dict[str, dict[str, float]], list[MomentEvent]]:
        """``metrics[zone][name]`` -> (the values the rules watched per zone, the events)."""
        values = {z: rule_values(self._zones[z], m) for z, m in metrics.items()}
        return values, self.rules.step(now, values, reader_offline_s)


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message the core wants stored and published (the outbox's enqueue arguments)."""

    topic: str
    payload: dict[str, Any]
    qos: int = 1
    retain: bool = False
    seq_stream: str | None = None
    coalesce_key: str | None = None
    expiry_s: int | None = None


@dataclass
class StepResult:
    """What one tick decided: messages to store, plus what they were made from."""

    now: float
    messages: list[Outgoing]
    values: dict[str, dict[str, float]]  # per zone, the values the rules watched
    events: list[MomentEvent]
    metrics: Any  # kernels.ZoneMetrics
    nudges: NudgeStep | None = None  # venue-wide nudges and the experiment's records


@dataclass
class ReaderStatus:
    """What the core knows of one reader."""

    config: ReaderConfig
    index: int
    online: bool | None = None  # None until the link first reports
    offline_since: float | None = None
    last_error: str | None = None
    degraded: bool = False
    reads: int = 0
    last_read_ts: float | None = None
    reads_at_last_health: int = 0  # for reads_per_s in health


# ----------------------------------------------------------------------------- the core
class GatewayCore:
    """One gateway's decisions. Not thread-safe: one owner (the runtime's loop) calls it."""

    def __init__(self, cfg: Config, *, key: bytes | EpochKey, max_tags: int | None = None,
                 started_at: float | None = None, nudge_seed: int | None = None) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.venue.id, cfg.gateway.id)
        # Rotates by each batch's ts and each tick's now; visits live at a rotation carry over.
        self.pseudonym = Pseudonymizer(key, cfg.privacy, live=self._live_pseudonyms)
        self.buffer = ReadBuffer()
        self.engine = engine_for(cfg, max_tags=max_tags)
        self.moments = MomentDecider(cfg)
        self.zone_index = {z.id: i for i, z in enumerate(cfg.zones)}
        self.readers = {r.id: ReaderStatus(r, i) for i, r in enumerate(cfg.readers)}
        self._zones = {z.id: z for z in cfg.zones}
        self.started_at = started_at
        self.dropped_unknown = 0
        self.ticks = 0
        self.last_step = -math.inf  # ``now`` of the latest step
        # moment_id -> {"by": staff name, "at": RFC 3339}: acknowledgements of open moments
        self.acks: dict[str, dict[str, str]] = {}
        self.escalated: set[str] = set()  # moment_ids already dispatched to escalation
        # Venue-wide nudges and their experiment (agent/nudges.py); nudge_seed seeds the
        # holdout assignment (None: from the OS, as a gateway runs).
        self.nudges = NudgePlanner(cfg, self.topics, seed=nudge_seed)

    def _live_pseudonyms(self) -> set[int]:
        """The pseudonyms the core holds: the engine's tags and the reads buffered for it."""
        return set(self.engine.live_keys().tolist()) | set(self.buffer.tag)

    # -- warm-up ------------------------------------------------------------------------
    def warm_up(self, now: float) -> None:
        """Compile (or load from the cache) the kernels before the first real tick."""
        self.engine.ingest(np.empty(0, np.float64), np.empty(0, np.uint64),
                           np.empty(0, np.int32), np.empty(0, np.float32))
        self.engine.tick(now)

    # -- reads in -----------------------------------------------------------------------
    def accept_reads(self, reader_id: str, ts: float, reads: Iterable[RawRead]) -> int:
        """Pseudonymise a batch of one reader's reads, stamped ``ts``, into the buffer.

        Returns how many were accepted (0 for an unknown reader: counted as dropped)."""
        st = self.readers.get(reader_id)
        if st is None:
            n = sum(1 for _ in reads)
            self.dropped_unknown += n
            return 0
        if not isinstance(reads, list):
            reads = list(reads)
        n = len(reads)
        if not n:
            return 0
        # Column by column (comprehensions, C-level counts) rather than read by read: this
        # is the per-read path, and a serial reader's batch is one protocol without RSSI.
        pseudo = self.pseudonym.at(ts)
        protocols = [rd.protocol for rd in reads]
        protocol = protocols[0]
        if protocols.count(protocol) == n:
            tags = pseudo.many(protocol, [rd.tag_id for rd in reads])
        else:
            tags = [pseudo(rd.protocol, rd.tag_id) for rd in reads]
        rs = [rd.rssi_dbm for rd in reads]
        rssi: list[float] | None = None  # None: no RSSI in the batch, the buffer fills NaN
        if rs.count(None) != n:
            rssi = [_NAN if v is None else v for v in rs]
        self.buffer.append_batch(ts, tags, st.index, rssi)
        st.reads += n
        st.last_read_ts = ts
        return n

    def accept_columns(self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray,
                       rssi: np.ndarray | None = None) -> None:
        """Reads already pseudonymised, as columns (reader: index into ``cfg.readers``).

        For simulations that generate pseudonyms directly; the kernels see exactly what
        :meth:`accept_reads` would have given them."""
        if ts.size == 0:
            return
        rs = np.full(ts.size, np.nan, np.float32) if rssi is None else rssi
        self.buffer.extend(ts, tag, reader, rs)
        counts = np.bincount(np.asarray(reader, np.int64), minlength=len(self.readers))
        last = float(ts[-1])
        for st in self.readers.values():
            c = int(counts[st.index]) if st.index < counts.size else 0
            if c:
                st.reads += c
                st.last_read_ts = last

    def reader_state(self, reader_id: str, online: bool, message: str | None,
                     now: float) -> bool:
        """A link says its reader went online or offline. True when that is news."""
        st = self.readers.get(reader_id)
        if st is None or st.online == online:
            return False
        st.online = online
        if online:
            st.offline_since, st.last_error = None, None
        else:
            # Keep an earlier start of the outage (a reader that never came up is offline
            # since start-up, not since its first error report).
            if st.offline_since is None:
                st.offline_since = now
            st.last_error = message
        return True

    def readers_starting(self, now: float) -> None:
        """Every reader counts as offline from start-up until its link says otherwise."""
        for st in self.readers.values():
            if st.online is None and st.offline_since is None:
                st.offline_since = now

    # -- the tick -----------------------------------------------------------------------
    def step(self, now: float, wall: float | None = None) -> StepResult:
        """Run one tick at ``now``: ingest the buffered reads, compute every zone's metrics,
        run the moment rules, and return the messages to store (state first, then moments
        with their dispatches and nudges). ``wall`` stamps the payloads (default ``now``)."""
        offset = 0.0 if wall is None else wall - now
        self.pseudonym.at(now)  # a quiet gateway rotates on time too
        ts, tag, reader, rssi = self.buffer.take()
        if ts.size:
            self.engine.ingest(ts, tag, reader, rssi)
        m = self.engine.tick(now)
        if self.pseudonym.carrying:
            self.pseudonym.settle(now, self._live_pseudonyms())
        arrays = m.arrays()
        floats = {name: arr for name, arr in arrays.items() if arr.dtype.kind == "f"}
        metrics = {z.id: {name: float(arr[i]) for name, arr in floats.items()}
                   for i, z in enumerate(self.cfg.zones)}
        offline = {rid: (now - st.offline_since) if st.offline_since is not None else 0.0
                   for rid, st in self.readers.items()}
        values, events = self.moments.decide(now, metrics, offline)
        messages = [self._state_message(now + offset, z, values[z.id], int(m.wait_method[i]),
                                        int(m.queue_length_method[i]))
                    for i, z in enumerate(self.cfg.zones)]
        for ev in events:
            messages.extend(self._moment_messages(ev, values.get(ev.zone, {}), offset))
        messages.extend(self._escalations(now, values, offset))
        plan = self.nudges.step(now + offset, values)
        for topic, payload, expiry in plan.nudges:
            messages.append(Outgoing(topic, payload, qos=1, expiry_s=expiry,
                                     seq_stream=SEQ_GUARANTEED))
        if plan.summary is not None:
            topic = self.topics.experiment()
            messages.append(Outgoing(topic, plan.summary, qos=1, retain=True,
                                     seq_stream=SEQ_STATE, coalesce_key=topic))
        self._forget_closed()
        self.ticks += 1
        self.last_step = now
        return StepResult(now=now, messages=messages, values=values, events=events, metrics=m,
                          nudges=plan)

    # -- what other gateways publish ------------------------------------------------------
    def remote_state(self, payload: Mapping[str, Any]) -> bool:
        """Another gateway's retained zone state (an alternative this gateway follows)."""
        return self.nudges.remote_state(payload)

    def gateway_status(self, gateway: str, online: bool) -> None:
        """A gateway's retained status: an offline one's zones are never nudged towards."""
        self.nudges.gateway_status(gateway, online)

    # -- staff acknowledgements -----------------------------------------------------------
    def acknowledge(self, moment_id: str, by: str, at: str) -> bool:
        """A staff console took the moment ``moment_id`` (``by`` whom, ``at`` RFC 3339).

        Recorded only for a moment this gateway has open (consoles acknowledge every
        gateway's moments on one topic); its next update carries ``taken_by`` and
        ``taken_at``, and it is no longer escalated. True when recorded."""
        if not any(r.moment_id == moment_id for r in self.moments.rules.open_moments()):
            return False
        if moment_id in self.acks:
            return False  # the first taker keeps it
        self.acks[moment_id] = {"by": by, "at": at}
        return True

    def _escalations(self, now: float, values: Mapping[str, Mapping[str, float]],
                     offset: float) -> list[Outgoing]:
        """Alerts nobody took within their zone's ``escalate_after_s``: dispatched again, once,
        to the zone's ``escalation_team``."""
        out = []
        for rule in self.moments.rules.open_moments():
            mid = rule.moment_id
            if (mid is None or mid in self.acks or mid in self.escalated
                    or rule.kind not in ESCALATED_KINDS):
                continue
            zone = self._zones[rule.zone]
            if zone.escalate_after_s <= 0 or now - rule.opened_at < zone.escalate_after_s:
                continue
            self.escalated.add(mid)
            v = values.get(rule.zone, {})
            metrics = {k: clean_float(v.get(k, math.nan), 1) for k in MOMENT_CONTEXT}
            minutes = max(1, round((now - rule.opened_at) / 60.0))
            out.append(Outgoing(self.topics.dispatch(zone.escalation_team), self.topics.envelope(
                SCHEMA_DISPATCH, now + offset, moment_id=mid, kind=rule.kind, zone=rule.zone,
                zone_name=zone.display_name, team=zone.escalation_team, status="opened",
                priority="high", escalated=True,
                action=(f"Escalated: nobody has taken the {rule.kind.replace('_', ' ')} alert "
                        f"at {zone.display_name} for {minutes} min. Send someone."),
                metrics=metrics, reader=rule.reader), qos=1, seq_stream=SEQ_GUARANTEED))
        return out

    def _forget_closed(self) -> None:
        """Acknowledgement state lives as long as its moment."""
        open_ids = {r.moment_id for r in self.moments.rules.open_moments()}
        for mid in [m for m in self.acks if m not in open_ids]:
            del self.acks[mid]
        self.escalated &= open_ids

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """The state a restart must not forget: the engine's and the open moments'."""
        return Checkpoint(taken_at=self.last_step,
                          engine=self.engine.snapshot(),
                          moments=self.moments.rules.snapshot(),
                          fingerprint=config_fingerprint(self.cfg),
                          extra={"acks": self.acks, "escalated": sorted(self.escalated)})

    def restore(self, cp: Checkpoint, now: float) -> int:
        """Resume from ``cp`` at ``now``: the engine accounts for the time it was down (tags
        whose timeout passed in the gap leave at the next tick; rates know the gap had no
        observations) and open moments keep their ``moment_id``. Returns the open moments
        resumed. Raises :class:`CheckpointError` (nothing changed) if it does not fit."""
        from kernels.engine import SnapshotMismatch

        try:
            self.engine.restore(cp.engine, now)
        except (SnapshotMismatch, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"the engine state does not fit: {e}") from None
        resumed = self.moments.rules.restore(cp.moments)
        acks = cp.extra.get("acks")
        if isinstance(acks, dict):
            self.acks = {str(k): dict(v) for k, v in acks.items() if isinstance(v, dict)}
        self.escalated = {str(m) for m in cp.extra.get("escalated") or []}
        self._forget_closed()
        return resumed

    # -- payloads -----------------------------------------------------------------------
    def _state_message(self, at: float, z: ZoneConfig, v: Mapping[str, float],
                       method: int, queue_method: int) -> Outgoing:
        body: dict[str, Any] = {"zone": z.id, "zone_name": z.display_name, "kind": z.kind,
                                "capacity": z.capacity or None}
        for name, nd in STATE_FIELDS:
            if name == "queue_length" and z.kind != "queue":
                body[name] = None
            elif name in v:
                body[name] = clean_float(v[name], nd)
        body["wait_method"] = WAIT_METHOD_NAMES.get(method)
        if z.kind == "queue":
            body["queue_length_method"] = QUEUE_METHOD_NAMES.get(queue_method)
            body["queue_length_factor"] = clean_float(v.get("queue_length_factor"), 3)
        body["readers_online"] = sum(1 for st in self.readers.values()
                                     if st.config.zone == z.id and st.online)
        topic = self.topics.zone_state(z.id)
        return Outgoing(topic, self.topics.envelope(SCHEMA_ZONE_STATE, at, **body), qos=1,
                        retain=True, seq_stream=SEQ_STATE, coalesce_key=topic)

    def _moment_messages(self, ev: MomentEvent, v: Mapping[str, float],
                         offset: float) -> list[Outgoing]:
        zone = self._zones[ev.zone]
        at = ev.at + offset
        metrics = {k: clean_float(v.get(k, math.nan), 1) for k in MOMENT_CONTEXT}
        body: dict[str, Any] = {
            "moment_id": ev.moment_id, "kind": ev.kind, "zone": ev.zone,
            "zone_name": zone.display_name, "status": ev.status,
            "opened_at": rfc3339(ev.opened_at + offset),
            "value": clean_float(ev.value, 1), "unit": ev.unit,
            "open_level": ev.open_level, "clear_level": ev.clear_level, "metrics": metrics}
        if ev.reader:
            body["reader"] = ev.reader
            body["error"] = self.readers[ev.reader].last_error
        taken = self.acks.get(ev.moment_id)
        if taken is not None:
            body["taken_by"], body["taken_at"] = taken["by"], taken["at"]
        out = [Outgoing(self.topics.moment(ev.zone, ev.kind),
                        self.topics.envelope(SCHEMA_MOMENT, at, **body), qos=1,
                        seq_stream=SEQ_GUARANTEED)]
        dispatch = dispatch_action(ev, zone.display_name, v)
        if dispatch is not None:
            team = self.cfg.moments.reader_team if ev.kind == READER_DOWN else zone.team
            priority, action = dispatch
            out.append(Outgoing(self.topics.dispatch(team), self.topics.envelope(
                SCHEMA_DISPATCH, at, moment_id=ev.moment_id, kind=ev.kind, zone=ev.zone,
                zone_name=zone.display_name, team=team, status=ev.status, priority=priority,
                action=action, metrics=metrics, reader=ev.reader), qos=1,
                seq_stream=SEQ_GUARANTEED))
        if ev.kind == WAIT_SHORT and ev.status in ("opened", "updated"):
            minutes = max(1, round(ev.value / 60.0))
            expiry = self.cfg.broker.nudge_expiry_s
            out.append(Outgoing(self.topics.nudge(ev.zone), self.topics.envelope(
                SCHEMA_NUDGE, at, moment_id=ev.moment_id, zone=ev.zone,
                zone_name=zone.display_name, wait_s=clean_float(ev.value, 0),
                message=f"{zone.display_name} is a {minutes}-minute wait for anyone joining "
                        "now", valid_for_s=expiry),
                qos=1, expiry_s=expiry, seq_stream=SEQ_GUARANTEED))
        return out

    def data_dropped(self, ranges: Sequence[Any], wall: float) -> Outgoing:
        """The ``data_dropped`` moment for what the store dropped or the broker refused.

        ``ranges``: records with ``stream, reason, count, first_seq, last_seq, first_at,
        last_at`` (``agent.outbox.DropRange``; times are wall-clock seconds). One moment that
        opened with the first loss and is already resolved: it reports an episode, and the
        seq gaps a consumer saw are explained by its ``dropped`` list."""
        from agent.ids import new_id

        firsts = [r.first_at for r in ranges if r.first_at is not None]
        lasts = [r.last_at for r in ranges if r.last_at is not None]
        dropped = [{"stream": r.stream, "reason": r.reason, "count": int(r.count),
                    "first_seq": r.first_seq, "last_seq": r.last_seq,
                    "first_at": rfc3339(r.first_at) if r.first_at is not None else None,
                    "last_at": rfc3339(r.last_at) if r.last_at is not None else None}
                   for r in ranges]
        total = sum(int(r.count) for r in ranges)
        body = {"moment_id": new_id(), "kind": "data_dropped", "status": "resolved",
                "opened_at": rfc3339(min(firsts) if firsts else wall), "value": total,
                "unit": "messages", "open_level": 1, "clear_level": 0, "dropped": dropped}
        at = max(lasts) if lasts else wall
        return Outgoing(self.topics.gateway_moment("data_dropped"),
                        self.topics.envelope(SCHEMA_MOMENT, max(at, wall), **body), qos=1,
                        seq_stream=SEQ_GUARANTEED)

    def status_payload(self, online: bool, reason: str, wall: float) -> dict[str, Any]:
        """The gateway's status (birth, Last Will, clean stop), stamped ``wall``."""
        return self.topics.envelope(
            SCHEMA_STATUS, wall, online=online, reason=reason, version=__version__,
            started_at=rfc3339(self.started_at if self.started_at is not None else wall),
            readers=[r.id for r in self.cfg.readers], zones=[z.id for z in self.cfg.zones])

    def reader_health(self, dt_s: float, wall_offset: float,
                      link_health: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per reader: online, reads, reads/s since the last call (over ``dt_s``), bad frames,
        the last read (wall time) and the last error."""
        out = {}
        for rid, st in self.readers.items():
            prev, st.reads_at_last_health = st.reads_at_last_health, st.reads
            lh = link_health.get(rid)
            out[rid] = {
                "online": bool(st.online), "reads": st.reads,
                "reads_per_s": round((st.reads - prev) / max(dt_s, 1e-6), 2),
                "bad_frames": getattr(lh, "bad_frames", 0),
                "degraded": bool(getattr(lh, "degraded", False)),
                "last_read_at": (rfc3339(st.last_read_ts + wall_offset)
                                 if st.last_read_ts else None),
                "error": st.last_error}
        return out


# ----------------------------------------------------------------------------- dispatch text
def dispatch_action(ev: MomentEvent, name: str,
                    v: Mapping[str, float]) -> tuple[str, str] | None:
    """(priority, recommended action) for the moments staff act on, else None."""
    if ev.status == "resolved":
        if ev.kind in STAND_DOWN_KINDS:
            return "info", f"Stand down: {ev.kind.replace('_', ' ')} at {name} has cleared."
        return None
    if ev.status != "opened":
        return None
    if ev.kind == QUEUE_LONG:
        return "high", (f"Open another load station or add staff at {name}: wait "
                        f"{_duration(v.get('wait_s', math.nan))}, "
                        f"{_count(v.get('queue_length', math.nan))} in line.")
    if ev.kind == QUEUE_RISING:
        return "medium", (f"Prepare staff for {name}: wait forecast "
                          f"{_duration(v.get('wait_forecast_s', math.nan))} within the "
                          "horizon.")
    if ev.kind == ZONE_CROWDED:
        return "high", f"Manage crowding at {name}: {ev.value:.0f} % of capacity."
    if ev.kind == READER_DOWN:
        return "medium", f"Check reader {ev.reader} at {name}: offline."
    return None


def _duration(x: float) -> str:
    if not math.isfinite(x):
        return "unknown"
    return f"{round(x)} s" if x < 120 else f"{round(x / 60.0)} min"


def _count(x: float) -> str:
    return "unknown" if not math.isfinite(x) else str(round(x))
