"""``make scale``: a venue's worth of gateways on a 3-node NATS cluster, one node killed.

What runs (everything on this machine, loopback only):

* a 3-node NATS JetStream cluster with MQTT listeners (:mod:`bench.nats_cluster`); the
  listener's streams (sessions, retained and QoS 1 messages) have three replicas
  (``stream_replicas``: left to it, NATS 2.9 made them two, without quorum while either
  node is down), the JetStream consumers behind the gateways' QoS 1 subscriptions (clean
  sessions) one replica, in memory (``consumer_replicas``, ``consumer_memory_storage``):
  replicated, two per gateway, they were 400 raft groups at 200 gateways, and NATS refused
  subscriptions;
* N simulated gateways (default 200), spread over worker processes (default: one per 25
  gateways). Each is the agent's own :class:`agent.runtime.Agent` built from a gateway
  config (the one ``venue-agent run`` loads, made by :func:`agent.demo.sim_config`): its
  SQLite ``Outbox`` and its ``Publisher`` with ``broker.url`` listing the three nodes (each
  gateway starts on a different one). The first ``full_agents`` (8) run their
  ``GatewayCore`` in the loop: reads from the crowd simulator (:mod:`simulators`, the
  ``demo_rush`` scenario, one seed per gateway, its zones renamed per gateway) go to the
  core once per tick, ``Agent.tick`` decides and stores. The others are the load generator
  the issue allows: each replays what a real core published for the scenario (recorded
  offline in simulated time by :func:`record_script`, a few seeds per worker), re-stamped
  as its own (:class:`Restamper`: gateway and zone ids, envelope ``id``, ``at``,
  ``moment_id``) and stored by the agent's own ``Agent.store``, so the outbox numbers it and
  the publisher sends it exactly as for the others: the delivery path (outbox -> publisher
  -> broker -> consumers) is the agent's for every gateway. Zone state goes out every tick
  (1 s) per zone, moments, dispatches and nudges as the crowd model makes them;
* a consumer group of 3 (``nats-py``, one process each) sharing the load through a NATS
  queue group on the subjects the MQTT listener maps topics to (``/`` -> ``.``). Each
  member dedupes on the envelope ``id`` (delivery is at least once). The members are the
  bench's own, not ``venue-agent tail --share`` (agent/share.py): the bench needs every
  message (zone state included) with its arrival time, and a member on each node's
  address list, where tail follows the guaranteed stream of one broker URL and prints
  lines; the topic -> subject mapping is share's (``mqtt_to_nats``);
* mid-run, one node (the first gateways' first broker) is killed with SIGKILL and started
  again ``down_s`` later.

What is measured (``bench/out/scale.json``):

``messages``/``msgs_per_s``  distinct outbox messages the group received, and per second of
    the run;
``lost``  messages a broker acknowledged (PUBACK; the outbox row deleted) that no member
    of the group received; ``unsent_at_end``: rows still in the outboxes ``drain_s`` after
    the last tick (late, not lost; also a failure);
``duplicates_delivered``  deliveries of an ``id`` the group had already received (deduped);
``seq_gaps``  missing ``seq`` numbers of each gateway's guaranteed stream (moments,
    dispatches, nudges) below the highest one the group received;
``latency_ms_p50``/``latency_ms_p99``  from a message's ``at`` (the tick that made it) to its
    first delivery, over messages made outside the kill window (from 1 s before the kill
    to ``settle_s`` after the node is back) and not replayed;
``max_stall_s``  the longest time any gateway's messages stopped arriving (1 s is the tick);
``rss_mb_per_node``  each node's resident memory at the end, MiB;
``full_agents``/``replayed_gateways``  how many gateways ran their core, how many replayed;
``puback_ms_p50``/``puback_ms_p99``  from a tick's commit to the broker's PUBACK (the
    gateway -> broker half of the latency), every acknowledged row;
``failover``  the gateways whose connection dropped at the kill: when each was connected
    again and got its first PUBACK, in seconds from the kill, and the slowest three;
    ``killed_stream_leader_of``: the MQTT streams the killed node led; ``connect_failures``:
    every failed connection attempt of the run, by reason.

Exit status 1 when ``lost`` > 0, ``seq_gaps`` > 0, ``latency_ms_p99`` >= 500,
``max_stall_s`` >= 10 or messages are still unsent after the drain (the figures are written
either way). ``tests/test_scale.py`` runs
:func:`run_scale` with a small venue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.share import mqtt_to_nats
from agent.topics import SCHEMA_STATUS, SCHEMA_ZONE_STATE, Topics
from bench.nats_cluster import NatsCluster

VENUE = "scale"
GROUP = "scale-consumers"  # the NATS queue group the consumers share
TICK_S = 1.0
KEY = bytes(range(32))

# Limits the run is judged by (exit status 1 past any of them).
MAX_P99_MS = 500.0
MAX_STALL_S = 10.0
GATEWAYS_PER_WORKER = 25
TEMPLATE_BASE = 9000  # replay scripts are recorded as gateways g9000...: no real one's id


@dataclass(frozen=True)
class ScaleSettings:
    """One run. Times in seconds from the start of the gateways' ticks."""

    gateways: int = 200
    duration_s: float = 90.0
    kill_at_s: float | None = 30.0  # None: no node is killed
    down_s: float = 5.0  # the killed node is started again this long after
    settle_s: float = 5.0  # after the node is back, still inside the kill window
    # Gateway processes; None: one per GATEWAYS_PER_WORKER gateways, at least one per CPU.
    # Each gateway is one process with one paho network thread in a venue; a hundred paho
    # threads in one process fight over its GIL, which no gateway does.
    workers: int | None = None
    consumers: int = 3
    drain_s: float = 30.0  # after the last tick, how long outboxes may take to empty
    seed: int = 1
    # Gateways whose GatewayCore runs in the loop (the first ones); the others replay what a
    # core made offline for the same scenario (see ReplayScript). None: every gateway.
    full_agents: int | None = 8
    templates: int = 4  # distinct recorded scripts per worker process
    # NATS's JetStream consumers behind the gateways' QoS 1 subscriptions (clean sessions:
    # nothing in them outlives the connection): one replica, in memory. None / False: the
    # server's defaults (replicated like the streams, on disk).
    nats_consumer_replicas: int | None = 1
    nats_consumer_memory: bool = True
    # The MQTT listener's streams (sessions, retained, QoS 1 messages): three replicas. Left
    # to the server, 2.9 made them R2 here (the peers it knew when the first client came),
    # and an R2 stream has no quorum while either of its nodes is down.
    nats_stream_replicas: int | None = 3


# ------------------------------------------------------------------------------- gateways

def gateway_id(index: int) -> str:
    return f"g{index:04d}"


def gateway_config(index: int, broker_urls: list[str], root: Path) -> Any:
    """The config of simulated gateway ``index``: the demo venue's readers and zones (zone and
    reader ids prefixed with the gateway id, so every gateway has its own zones), broker.url
    the cluster's nodes starting at node ``index % n``, storage under ``root``, parsed by the
    agent's own config loader."""
    import tomllib

    import tomli_w

    from agent.config import parse_config
    from agent.demo import DEMO_ZONE_SETTINGS, sim_config
    from simulators.scenarios import demo_rush

    gid = gateway_id(index)
    layout = demo_rush().layout
    zones = tuple(replace(z, id=f"{gid}-{z.id}") for z in layout.zones)
    readers = tuple(replace(r, id=f"{gid}-{r.id}", zone=f"{gid}-{r.zone}")
                    for r in layout.readers)
    renamed = replace(layout, zones=zones, readers=readers)
    settings = {f"{gid}-{k}": v for k, v in DEMO_ZONE_SETTINGS.items()}
    home = root / gid
    text = sim_config(renamed, {r.id: Path(f"/dev/null-{r.id}") for r in readers},
                      broker_url=broker_urls[0], db_path=home / "agent.db", venue=VENUE,
                      gateway=gid, zone_settings=settings)
    data = tomllib.loads(text)
    n = len(broker_urls)
    data["broker"]["url"] = [broker_urls[(index + k) % n] for k in range(n)]
    data["storage"]["checkpoint_interval_s"] = 0  # nothing to resume: each run starts fresh
    data["storage"]["max_mb"] = 64
    data["estimation"]["max_tags"] = 4096  # the demo crowd is a few hundred bands
    return parse_config(tomli_w.dumps(data), f"{gid}.toml")


class AckLedger:
    """What one gateway's outbox committed and what its broker acknowledged, by ``id``.

    After every tick :meth:`committed` reads the rows the tick stored; the outbox's
    ``ack_many`` (called by the publisher on PUBACKs) is wrapped to note the acknowledged
    rows first. Rows replaced before they were sent (zone state, latest wins) are never
    acknowledged and so never counted."""

    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox
        self._last_row = outbox.last_row()
        self._rows: dict[int, tuple[str, float]] = {}  # row -> (id, committed), until acked
        self.acked: list[str] = []
        self.ack_times: list[float] = []  # wall time of every PUBACK burst (failover timing)
        self.puback_ms: list[float] = []  # commit -> PUBACK of each acknowledged row
        self.guaranteed: dict[int, str] = {}  # seq -> id of the guaranteed stream
        real = outbox.ack_many

        def ack_many(rows: Any) -> int:
            rows = list(rows)
            now = time.time()
            if rows:
                self.ack_times.append(round(now, 3))
            for row in rows:
                entry = self._rows.pop(row, None)
                if entry is not None:
                    self.acked.append(entry[0])
                    self.puback_ms.append(round((now - entry[1]) * 1000.0, 1))
            return int(real(rows))

        outbox.ack_many = ack_many

    def committed(self) -> None:
        from agent.topics import SCHEMA_ZONE_STATE

        now = time.time()
        for msg in self._outbox.pending(10_000, self._last_row):
            self._last_row = msg.row
            payload = json.loads(msg.payload)
            self._rows[msg.row] = (payload["id"], now)
            if payload.get("schema") != SCHEMA_ZONE_STATE and "seq" in payload:
                self.guaranteed[int(payload["seq"])] = payload["id"]


@dataclass
class _Gateway:
    index: int
    agent: Any
    ledger: AckLedger
    ts: Any
    tag: Any
    reader: Any
    cursor: int = 0
    script: ReplayScript | None = None  # set: a replayed gateway (no core in the loop)
    restamp: Restamper | None = None
    script_cursor: int = 0
    links: list[tuple[float, bool, str]] = field(default_factory=list)  # (wall, up, broker)

    def feed(self, upto: float, offset: float) -> None:
        """Hand the core the crowd's reads up to ``upto`` (scenario seconds) not yet handed
        over, stamped on the core's clock (scenario time + ``offset``)."""
        import numpy as np

        hi = int(np.searchsorted(self.ts, upto, side="right"))
        if hi > self.cursor:
            sl = slice(self.cursor, hi)
            self.agent.core.accept_columns(self.ts[sl] + offset, self.tag[sl], self.reader[sl])
            self.cursor = hi


async def _track_links(gateways: list[_Gateway], until: float) -> None:
    """Note every change of each gateway's connection (up or down, and to which broker),
    checked every 50 ms: the failover timeline behind scale.json's ``failover``."""
    up = {gw.index: False for gw in gateways}
    while time.monotonic() < until:
        for gw in gateways:
            pub = gw.agent.publisher
            now_up = bool(pub.connected)
            if now_up != up[gw.index]:
                up[gw.index] = now_up
                gw.links.append((round(time.time(), 3), now_up, pub.broker_url))
        await asyncio.sleep(0.05)


class _FailureCounter(logging.Handler):
    """Counts the publishers' failed connection attempts by reason (numbers blanked)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "connect failed" not in text and "unreachable" not in text:
            return
        reason = text.split("unreachable: ", 1)[-1].split("connect failed: ", 1)[-1]
        reason = re.sub(r"\d+(\.\d+)?", "N", reason.split("; buffering")[0])[:160]
        self.counts[reason] = self.counts.get(reason, 0) + 1


_FAILURES = _FailureCounter()


# ------------------------------------------------------------------------------- replay

_TIME_FIELDS = ("opened_at", "taken_at")  # payload times besides "at", kept relative


@dataclass
class ReplayScript:
    """What a real ``GatewayCore`` published, tick by tick, for one gateway of the scenario.

    :func:`record_script` runs the core offline (simulated time: a tick takes a millisecond
    or two, not a second) on the crowd model's reads, exactly as :func:`_run_gateway` feeds
    it, and keeps each tick's ``Outgoing`` messages with their payloads as JSON text.
    ``gateway`` is the id the script was recorded under (its zones are ``{gateway}-...``):
    a :class:`Restamper` rewrites it for the gateway that replays the script."""

    gateway: str
    wall0: float  # the wall time of tick 0 of the recording
    ticks: list[list[tuple[Any, str]]]  # per tick: (Outgoing with payload {}, payload JSON)

    @property
    def messages(self) -> int:
        return sum(len(t) for t in self.ticks)


def record_script(index: int, urls: list[str], root: Path, seed: int, ticks: int) -> ReplayScript:
    """Run gateway ``index``'s core for ``ticks`` ticks of simulated time; its messages."""
    gw = _build_gateway(index, urls, root, seed)
    core = gw.agent.core
    for rid in core.readers:
        core.reader_state(rid, True, None, 0.0)
    t0 = time.monotonic()  # the clock the Agent warmed its core up with, as in a run
    wall0 = time.time()
    out: list[list[tuple[Any, str]]] = []
    for k in range(1, ticks + 1):
        gw.feed(k * TICK_S, t0)
        result = core.step(t0 + k * TICK_S, wall0 + k * TICK_S)
        out.append([(replace(m, payload={}), json.dumps(m.payload, separators=(",", ":")))
                    for m in result.messages])
    gw.agent.outbox.close()
    return ReplayScript(gateway_id(index), wall0, out)


class Restamper:
    """A script's messages as gateway ``gid`` would have made them at replay time.

    The recording gateway's id becomes ``gid`` (topics, ``gateway``, zone ids); every message
    gets a fresh envelope ``id`` (the core's own :func:`agent.ids.new_id`) and ``at`` = the
    replay tick's wall time; ``moment_id`` is mapped to a fresh id per gateway (the same
    moment keeps its id across its opened / updated / resolved messages) and ``opened_at``
    moves with the replay. ``seq`` is not in the core's payloads: the outbox assigns it, as
    for any gateway."""

    def __init__(self, script: ReplayScript, gid: str) -> None:
        self.script = script
        self.gid = gid
        self._moments: dict[str, str] = {}

    def tick(self, k: int, wall: float) -> list[Any]:
        from agent.ids import new_id
        from agent.timefmt import parse_rfc3339, rfc3339

        src = self.script.gateway
        shift = wall - (self.script.wall0 + (k + 1) * TICK_S)
        msgs = []
        for template, text in self.script.ticks[k]:
            payload = json.loads(text.replace(src, self.gid))
            payload["id"] = new_id()
            payload["at"] = rfc3339(wall)
            moment = payload.get("moment_id")
            if moment is not None:
                mapped = self._moments.get(moment)
                if mapped is None:
                    mapped = self._moments[moment] = new_id()
                payload["moment_id"] = mapped
            for name in _TIME_FIELDS:
                if isinstance(payload.get(name), str):
                    payload[name] = rfc3339(parse_rfc3339(payload[name]) + shift)
            coalesce = template.coalesce_key
            msgs.append(replace(
                template, topic=template.topic.replace(src, self.gid), payload=payload,
                coalesce_key=None if coalesce is None else coalesce.replace(src, self.gid)))
        return msgs


def _build_gateway(index: int, urls: list[str], root: Path, seed: int) -> _Gateway:
    import numpy as np

    from agent.runtime import Agent
    from simulators.scenarios import demo_rush

    cfg = gateway_config(index, urls, root)
    agent = Agent(cfg, clock=time.monotonic)
    sim = demo_rush().run(seed=seed * 100_003 + index)
    reads = sim.reads
    return _Gateway(index, agent, AckLedger(agent.outbox), reads["ts"].astype(np.float64),
                    reads["tag"].astype(np.uint64), reads["reader"].astype(np.int32))


async def _run_gateway(gw: _Gateway, start: float, end: float) -> None:
    """The agent's tick loop (``Agent.run``'s, without readers): every tick the simulated
    reads up to now go to the core, ``Agent.tick`` decides and stores, the publisher is
    kicked. Gateways tick at staggered phases, as real ones do."""

    agent = gw.agent
    for rid in agent.core.readers:
        agent.core.reader_state(rid, True, None, time.monotonic())
    next_tick = start + (gw.index * 0.0137) % TICK_S
    while True:
        delay = next_tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        if now >= end:
            return
        next_tick = max(next_tick + TICK_S, now + TICK_S * 0.5)
        if gw.restamp is not None:
            # A replayed gateway: the script's ticks up to now (a late tick takes the ticks
            # it missed too), re-stamped, stored by the agent's own Agent.store.
            last = min(int((now - start) / TICK_S), len(gw.restamp.script.ticks) - 1)
            wall = agent.wall()
            msgs = []
            while gw.script_cursor <= last:
                msgs += gw.restamp.tick(gw.script_cursor, wall)
                gw.script_cursor += 1
            agent.store(msgs, wall)
        else:
            gw.feed(now - start, start)
            agent.tick(now)
        gw.ledger.committed()
        agent.publisher.kick()


async def _worker_main(indexes: list[int], urls: list[str], root: Path, seed: int,
                       ready: Any, start_at: Any, settings: ScaleSettings, out: Path) -> None:
    gateways = [_build_gateway(i, urls, root, seed) for i in indexes]
    full = settings.gateways if settings.full_agents is None else settings.full_agents
    replayed = [gw for gw in gateways if gw.index >= full]
    if replayed:
        # Scripts recorded by real cores under gateway ids no gateway of the run has.
        ticks = int(settings.duration_s / TICK_S) + 2
        base = TEMPLATE_BASE + indexes[0] * settings.templates
        scripts = [record_script(base + t, urls, root / "templates", seed, ticks)
                   for t in range(settings.templates)]
        for gw in replayed:
            gw.script = scripts[gw.index % len(scripts)]
            gw.restamp = Restamper(gw.script, gateway_id(gw.index))
    loop = asyncio.get_running_loop()
    pub_tasks = []
    for gw in gateways:
        gw.agent._loop = loop
        # The agent's own publisher: broker settings, will, birth and subscriptions from
        # the config, exactly as Agent.run builds it. Connected before the first tick.
        gw.agent.publisher = gw.agent._make_publisher()
        pub_tasks.append(asyncio.create_task(gw.agent.publisher.run()))
    # Every worker built its gateways; the parent then sets the start.
    await loop.run_in_executor(None, ready.wait)
    while start_at.value == 0.0:
        await asyncio.sleep(0.01)
    start = float(start_at.value)
    end = start + settings.duration_s
    links = asyncio.create_task(_track_links(gateways, end + settings.drain_s))
    await asyncio.gather(*(_run_gateway(gw, start, end) for gw in gateways))
    deadline = time.monotonic() + settings.drain_s
    while time.monotonic() < deadline and any(gw.agent.outbox.depth() for gw in gateways):
        for gw in gateways:
            gw.agent.publisher.kick()
        await asyncio.sleep(0.2)
    links.cancel()
    result: dict[str, Any] = {}
    for gw in gateways:
        stats = gw.agent.publisher.stats()
        await gw.agent.publisher.stop()
        result[gateway_id(gw.index)] = {
            "acked": gw.ledger.acked,
            "guaranteed": {str(k): v for k, v in gw.ledger.guaranteed.items()},
            "unsent": gw.agent.outbox.depth(),
            "expired": stats.expired,
            "reconnects": stats.reconnects,
            "protocol": stats.protocol,
            "replayed": gw.restamp is not None,
            "links": gw.links,
            "ack_times": gw.ledger.ack_times,
            "puback_ms": gw.ledger.puback_ms,
        }
        gw.agent.outbox.close()
    for t in pub_tasks:
        t.cancel()
    out.write_text(json.dumps({"gateways": result, "connect_failures": _FAILURES.counts}))


def _worker(indexes: list[int], urls: list[str], root: str, seed: int, ready: Any,
            start_at: Any, settings: ScaleSettings, out: str, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s worker {os.getpid()}: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(log_level)
    # Every failed connection attempt of the publishers is counted (repeats log at DEBUG).
    pub_log = logging.getLogger("agent.publisher")
    pub_log.setLevel(logging.DEBUG)
    pub_log.addHandler(_FAILURES)
    asyncio.run(_worker_main(indexes, urls, Path(root), seed, ready, start_at, settings,
                             Path(out)))


# ------------------------------------------------------------------------------- consumers

async def _consume(member: int, nats_urls: list[str], subject: str, ready: Any, stop: Any,
                   out: Path) -> None:
    import nats

    # Each member prefers another node; all three are in its list for failover.
    servers = nats_urls[member % len(nats_urls):] + nats_urls[:member % len(nats_urls)]
    errors = 0

    async def on_error(_exc: Exception) -> None:
        # A node killed under the member is expected here; nats-py reconnects to another.
        nonlocal errors
        errors += 1

    nc = await nats.connect(servers=servers, dont_randomize=True, reconnect_time_wait=0.2,
                            max_reconnect_attempts=-1, name=f"{GROUP}-{member}",
                            error_cb=on_error)
    seen: set[str] = set()
    records: list[tuple[Any, ...]] = []
    deduped = 0

    async def on_msg(msg: Any) -> None:
        nonlocal deduped
        received = time.time()
        try:
            body = json.loads(msg.data)
            msg_id = body["id"]
        except (ValueError, KeyError, TypeError):
            return
        if msg_id in seen:  # delivered again (at least once): dedupe on the id
            deduped += 1
            return
        seen.add(msg_id)
        records.append((msg_id, body.get("gateway"), body.get("schema"), body.get("seq"),
                        body.get("at"), received, bool(body.get("replayed"))))

    await nc.subscribe(subject, queue=GROUP, cb=on_msg)
    await nc.flush()
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    with contextlib.suppress(Exception):
        await nc.drain()
    out.write_text(json.dumps({"records": records, "deduped": deduped, "errors": errors}))


def _consumer(member: int, nats_urls: list[str], subject: str, ready: Any, stop: Any,
              out: str) -> None:
    asyncio.run(_consume(member, nats_urls, subject, ready, stop, Path(out)))


# ------------------------------------------------------------------------------- the run

def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


@dataclass
class ScaleReport:
    gateways: int
    full_agents: int  # gateways with their GatewayCore in the loop
    replayed_gateways: int  # gateways replaying a script a real core made (same delivery path)
    messages: int
    msgs_per_s: float
    lost: int
    duplicates_delivered: int
    seq_gaps: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    node_killed: str | None
    max_stall_s: float
    rss_mb_per_node: list[float | None]
    duration_s: float
    consumers: int
    workers: int
    killed_meta_leader: bool = False  # the killed node led JetStream's meta group
    # The MQTT streams ($MQTT_sess, $MQTT_rmsgs, $MQTT_msgs) the killed node led: each one
    # has no leader until the others elect one (NATS raft: 4-9 s).
    killed_stream_leader_of: list[str] = field(default_factory=list)
    undelivered_duplicates: int = 0  # a member handed on an id twice (must be 0)
    per_member: list[int] = field(default_factory=list)
    reconnects: int = 0
    expired: int = 0
    unsent_at_end: int = 0
    protocols: list[str] = field(default_factory=list)
    kill_window_s: list[float] | None = None
    # How the gateways that lost their node failed over (seconds from the kill), and every
    # failed connection attempt of the run by reason.
    failover: dict[str, Any] | None = None
    # From a tick's commit to the broker's PUBACK, every acknowledged row (kill included):
    # the gateway -> broker half of the latency.
    puback_ms_p50: float | None = None
    puback_ms_p99: float | None = None
    connect_failures: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.problems


def judge(r: ScaleReport) -> list[str]:
    """What makes the run fail (empty when it passes)."""
    problems = []
    if r.lost:
        problems.append(f"{r.lost} messages lost")
    if r.seq_gaps:
        problems.append(f"{r.seq_gaps} seq gaps")
    if r.undelivered_duplicates:
        problems.append(f"{r.undelivered_duplicates} duplicates handed on without dedupe")
    if r.latency_ms_p99 is None or r.latency_ms_p99 >= MAX_P99_MS:
        problems.append(f"p99 latency {r.latency_ms_p99} ms (limit {MAX_P99_MS:g})")
    if r.max_stall_s >= MAX_STALL_S:
        problems.append(f"a gateway stalled {r.max_stall_s:.1f} s (limit {MAX_STALL_S:g})")
    if r.unsent_at_end:
        problems.append(f"{r.unsent_at_end} messages still in the outboxes after the drain")
    if r.messages == 0:
        problems.append("no messages received")
    return problems


def run_scale(settings: ScaleSettings, workdir: Path | None = None,
              log: Any = print, inspect: Any = None) -> ScaleReport:
    """Start the cluster, the consumer group and the gateways; kill and restart a node; tally.

    ``inspect(cluster)``, when given, is called once the gateways have stopped, before the
    cluster does (a test reads the retained state of every node there)."""
    from agent.timefmt import parse_rfc3339

    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="venue-scale-")))
        cluster = stack.enter_context(NatsCluster(
            root / "nats", consumer_replicas=settings.nats_consumer_replicas,
            consumer_memory_storage=settings.nats_consumer_memory,
            stream_replicas=settings.nats_stream_replicas))
        log(f"cluster ready: MQTT {', '.join(cluster.mqtt_urls)}")
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        subject = mqtt_to_nats(Topics(VENUE).venue_filter)  # venue.scale.>
        consumers = []
        for m in range(settings.consumers):
            ready_c = ctx.Event()
            p = ctx.Process(target=_consumer, args=(m, cluster.nats_urls, subject, ready_c, stop,
                                                    str(root / f"consumer{m}.json")),
                            daemon=True)
            p.start()
            consumers.append((p, ready_c))
        for _p, ready_c in consumers:
            if not ready_c.wait(30):
                raise RuntimeError("a consumer did not connect to the cluster in 30 s")
        workers = worker_count(settings)
        ready = ctx.Barrier(workers + 1)
        start_at = ctx.Value("d", 0.0)
        procs = []
        for w in range(workers):
            idx = list(range(w, settings.gateways, workers))
            p = ctx.Process(target=_worker, args=(
                idx, cluster.mqtt_urls, str(root / "gateways"), settings.seed, ready, start_at,
                settings, str(root / f"worker{w}.json"), logging.WARNING), daemon=True)
            p.start()
            procs.append(p)
        ready.wait(timeout=600)
        start = time.monotonic() + 1.0
        start_at.value = start
        wall0 = time.time() - time.monotonic()  # wall = mono + wall0
        log(f"{settings.gateways} gateways in {workers} processes; running "
            f"{settings.duration_s:g} s")
        killed = None
        killed_leader = False
        led: list[str] = []
        kill_wall: float | None = None
        window: tuple[float, float] | None = None
        rss: list[float | None] = [None] * len(cluster.nodes)
        if settings.kill_at_s is not None:
            _sleep_until(start + settings.kill_at_s)
            victim = 0
            killed = cluster.nodes[victim].name
            killed_leader = cluster.meta_leader(victim) == killed
            led = sorted(name for name, leader in cluster.stream_leaders(1).items()
                         if leader == killed)
            t_kill = time.monotonic()
            kill_wall = time.time()
            cluster.kill(victim)
            role = ", the JetStream meta leader" if killed_leader else ""
            log(f"killed node {killed} (SIGKILL{role}) at {t_kill - start:.1f} s")
            _sleep_until(t_kill + settings.down_s)
            cluster.restart(victim)
            t_back = time.monotonic()
            log(f"node {killed} back (ready) at {t_back - start:.1f} s")
            window = (t_kill - 1.0 + wall0, t_back + settings.settle_s + wall0)
        _sleep_until(start + settings.duration_s * 0.9)
        rss = [cluster.rss_mb(i) for i in range(len(cluster.nodes))]
        for p in procs:
            p.join(timeout=settings.duration_s + settings.drain_s + 120)
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        time.sleep(1.0)
        stop.set()
        for p, _ in consumers:
            p.join(timeout=30)
        if bad:
            raise RuntimeError(f"a gateway worker failed (exit codes {bad})")
        if inspect is not None:
            inspect(cluster)
        produced: dict[str, Any] = {}
        failures: dict[str, int] = {}
        for w in range(workers):
            part = json.loads((root / f"worker{w}.json").read_text())
            produced.update(part["gateways"])
            for reason, n in part["connect_failures"].items():
                failures[reason] = failures.get(reason, 0) + n
        members = [json.loads((root / f"consumer{m}.json").read_text())
                   for m in range(settings.consumers)]

    # Tally: first delivery of each id across the group.
    first: dict[str, tuple[Any, ...]] = {}
    deliveries = 0
    undelivered_dups = 0
    per_member = []
    for m in members:
        ids = [r[0] for r in m["records"]]
        undelivered_dups += len(ids) - len(set(ids))
        per_member.append(len(ids))
        deliveries += len(ids) + m["deduped"]
        for rec in m["records"]:
            if rec[0] not in first or rec[5] < first[rec[0]][5]:
                first[rec[0]] = rec
    received = set(first)
    lost_ids: set[str] = set()
    seq_gaps = 0
    received_seq: dict[str, set[int]] = {}
    for rec in first.values():
        if rec[2] and rec[3] is not None and rec[2] != SCHEMA_ZONE_STATE:
            received_seq.setdefault(rec[1], set()).add(int(rec[3]))
    for gid, g in produced.items():
        # Lost: the broker acknowledged it (the row is gone from the outbox) and no member
        # received it. What is still in an outbox after the drain is late, not lost
        # (unsent_at_end); a gap is a seq missing below one the group received.
        lost_ids.update(i for i in g["acked"] if i not in received)
        got = received_seq.get(gid, set())
        if got:
            seq_gaps += sum(1 for s in range(1, max(got) + 1) if s not in got)
    ours = [r for r in first.values() if r[1] in produced and r[2] != SCHEMA_STATUS]
    latencies = []
    arrivals: dict[str, list[float]] = {}
    for rec in ours:
        arrivals.setdefault(rec[1], []).append(rec[5])
        if rec[4] is None or rec[6]:
            continue
        at = parse_rfc3339(rec[4])
        if window is not None and window[0] <= at <= window[1]:
            continue
        latencies.append(max(0.0, (rec[5] - at) * 1000.0))
    stall = 0.0
    for times in arrivals.values():
        times.sort()
        stall = max([stall] + [b - a for a, b in zip(times, times[1:], strict=False)])
    report = ScaleReport(
        gateways=settings.gateways,
        full_agents=sum(1 for g in produced.values() if not g["replayed"]),
        replayed_gateways=sum(1 for g in produced.values() if g["replayed"]),
        messages=len(ours),
        msgs_per_s=round(len(ours) / settings.duration_s, 1),
        lost=len(lost_ids),
        duplicates_delivered=deliveries - len(first),
        seq_gaps=seq_gaps,
        latency_ms_p50=_round(_percentile(latencies, 0.50)),
        latency_ms_p99=_round(_percentile(latencies, 0.99)),
        node_killed=killed,
        max_stall_s=round(stall, 2),
        rss_mb_per_node=[_round(x, 1) for x in rss],
        duration_s=settings.duration_s,
        consumers=settings.consumers,
        workers=worker_count(settings),
        killed_meta_leader=killed_leader,
        killed_stream_leader_of=led,
        undelivered_duplicates=undelivered_dups,
        per_member=per_member,
        reconnects=sum(int(g["reconnects"]) for g in produced.values()),
        expired=sum(int(g["expired"]) for g in produced.values()),
        unsent_at_end=sum(int(g["unsent"]) for g in produced.values()),
        protocols=sorted({str(g["protocol"]) for g in produced.values()}),
        kill_window_s=None if window is None else [round(window[0] - wall0 - start, 1),
                                                   round(window[1] - wall0 - start, 1)],
    )
    pubacks = [ms for g in produced.values() for ms in g["puback_ms"]]
    report.puback_ms_p50 = _round(_percentile(pubacks, 0.5))
    report.puback_ms_p99 = _round(_percentile(pubacks, 0.99))
    report.failover = None if kill_wall is None else failover_summary(produced, kill_wall)
    report.connect_failures = dict(sorted(failures.items(), key=lambda kv: -kv[1]))
    report.problems = judge(report)
    return report


def failover_summary(produced: dict[str, Any], kill_wall: float) -> dict[str, Any]:
    """The gateways whose connection dropped within 5 s of the kill: when each was connected
    again (and where), and when its first PUBACK after that came, in seconds from the kill."""
    rows = []
    for gid, g in produced.items():
        links = g["links"]
        down = next((t for t, up, _b in links if not up and kill_wall <= t <= kill_wall + 5.0),
                    None)
        if down is None:
            continue
        back = next(((t, b) for t, up, b in links if up and t > down), None)
        ack = None if back is None else next((t for t in g["ack_times"] if t >= back[0]), None)
        rows.append((gid, down - kill_wall, None if back is None else back[0] - kill_wall,
                     None if back is None else back[1], None if ack is None else ack - kill_wall))
    if not rows:
        return {"moved": 0}
    back_s = [r[2] for r in rows if r[2] is not None]
    ack_s = [r[4] for r in rows if r[4] is not None]
    slowest = sorted(rows, key=lambda r: -(r[4] if r[4] is not None else 1e9))[:3]
    return {
        "moved": len(rows),
        "never_back": sum(1 for r in rows if r[2] is None),
        "reconnected_s_p50": _round(_percentile(back_s, 0.5), 2),
        "reconnected_s_max": _round(max(back_s, default=None), 2),
        "first_puback_s_p50": _round(_percentile(ack_s, 0.5), 2),
        "first_puback_s_max": _round(max(ack_s, default=None), 2),
        "slowest": [{"gateway": r[0], "down_s": _round(r[1], 2), "reconnected_s": _round(r[2], 2),
                     "to": r[3], "first_puback_s": _round(r[4], 2)} for r in slowest],
    }


def worker_count(settings: ScaleSettings) -> int:
    if settings.workers is not None:
        return max(1, min(settings.workers, settings.gateways))
    wanted = -(-settings.gateways // GATEWAYS_PER_WORKER)
    return max(1, min(settings.gateways, max(wanted, os.cpu_count() or 1)))


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    d = ScaleSettings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=d.gateways)
    ap.add_argument("--duration", type=float, default=d.duration_s, help="seconds of ticks")
    ap.add_argument("--kill-at", type=float, default=d.kill_at_s,
                    help="seconds into the run to SIGKILL a node (negative: none)")
    ap.add_argument("--down", type=float, default=d.down_s, help="seconds the node stays down")
    ap.add_argument("--workers", type=int, default=d.workers,
                    help=f"gateway processes (default: one per {GATEWAYS_PER_WORKER} gateways)")
    ap.add_argument("--full-agents", type=int, default=d.full_agents,
                    help="gateways with their core in the loop; the others replay what a core "
                         "made (negative: all)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale.json"))
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the cluster's logs and the gateways' databases here")
    args = ap.parse_args(argv)
    # One compiled-kernel cache for every gateway process and run (each would otherwise
    # compile the kernels into its own, a minute on a busy 2-core machine).
    os.environ.setdefault("NUMBA_CACHE_DIR", str(args.out.resolve().parent / "numba-cache"))
    if args.gateways < 1 or args.duration <= 0 or (args.workers is not None
                                                   and args.workers < 1):
        ap.error("--gateways and --workers must be at least 1, --duration positive")
    kill = None if args.kill_at is None or args.kill_at < 0 else args.kill_at
    if kill is not None and kill + args.down >= args.duration:
        ap.error("--kill-at plus --down must fall inside --duration")
    settings = replace(d, gateways=args.gateways, duration_s=args.duration, kill_at_s=kill,
                       down_s=args.down, workers=args.workers,
                       full_agents=None if args.full_agents < 0 else args.full_agents)
    report = run_scale(settings, args.workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(json.dumps(asdict(report), indent=2))
    if report.problems:
        print("FAILED: " + "; ".join(report.problems), file=sys.stderr)
        return 1
    print(f"ok: {report.gateways} gateways, {report.msgs_per_s} msgs/s, p99 "
          f"{report.latency_ms_p99} ms, node {report.node_killed} killed and back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
