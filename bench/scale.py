"""``make scale``: a venue's worth of gateways on a 3-node NATS cluster, one node killed.

What runs (everything on this machine, loopback only):

* a 3-node NATS JetStream cluster with MQTT listeners (:mod:`bench.nats_cluster`);
* N simulated gateways (default 200), spread over worker processes (default: one per CPU).
  Each is the agent's own :class:`agent.runtime.Agent` built from a gateway config (the one
  ``venue-agent run`` loads, made by :func:`agent.demo.sim_config`): its ``GatewayCore``,
  its SQLite ``Outbox`` and its ``Publisher`` with ``broker.url`` listing the three nodes
  (each gateway starts on a different one). Reads come from the crowd simulator
  (:mod:`simulators`, the ``demo_rush`` scenario, one seed per gateway, its zones renamed per
  gateway) and are handed to the core once per tick; ``Agent.tick`` decides and stores,
  the publisher sends. Zone state goes out every tick (1 s) per zone, moments, dispatches
  and nudges as the crowd model makes them;
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
``rss_mb_per_node``  each node's resident memory at the end, MiB.

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
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.share import mqtt_to_nats
from agent.topics import Topics
from bench.nats_cluster import NatsCluster

VENUE = "scale"
GROUP = "scale-consumers"  # the NATS queue group the consumers share
TICK_S = 1.0
KEY = bytes(range(32))

# Limits the run is judged by (exit status 1 past any of them).
MAX_P99_MS = 500.0
MAX_STALL_S = 10.0


@dataclass(frozen=True)
class ScaleSettings:
    """One run. Times in seconds from the start of the gateways' ticks."""

    gateways: int = 200
    duration_s: float = 90.0
    kill_at_s: float | None = 30.0  # None: no node is killed
    down_s: float = 5.0  # the killed node is started again this long after
    settle_s: float = 5.0  # after the node is back, still inside the kill window
    workers: int = max(1, os.cpu_count() or 1)
    consumers: int = 3
    drain_s: float = 30.0  # after the last tick, how long outboxes may take to empty
    seed: int = 1


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
        self._rows: dict[int, str] = {}  # row -> id, until acknowledged or replaced
        self.acked: list[str] = []
        self.guaranteed: dict[int, str] = {}  # seq -> id of the guaranteed stream
        real = outbox.ack_many

        def ack_many(rows: Any) -> int:
            rows = list(rows)
            for row in rows:
                msg_id = self._rows.pop(row, None)
                if msg_id is not None:
                    self.acked.append(msg_id)
            return int(real(rows))

        outbox.ack_many = ack_many

    def committed(self) -> None:
        from agent.topics import SCHEMA_ZONE_STATE

        for msg in self._outbox.pending(10_000, self._last_row):
            self._last_row = msg.row
            payload = json.loads(msg.payload)
            self._rows[msg.row] = payload["id"]
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
    import numpy as np

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
        hi = int(np.searchsorted(gw.ts, now - start, side="right"))
        if hi > gw.cursor:
            sl = slice(gw.cursor, hi)
            agent.core.accept_columns(gw.ts[sl] + start, gw.tag[sl], gw.reader[sl])
            gw.cursor = hi
        agent.tick(now)
        gw.ledger.committed()
        agent.publisher.kick()


async def _worker_main(indexes: list[int], urls: list[str], root: Path, seed: int,
                       ready: Any, start_at: Any, settings: ScaleSettings, out: Path) -> None:
    gateways = [_build_gateway(i, urls, root, seed) for i in indexes]
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
    await asyncio.gather(*(_run_gateway(gw, start, end) for gw in gateways))
    deadline = time.monotonic() + settings.drain_s
    while time.monotonic() < deadline and any(gw.agent.outbox.depth() for gw in gateways):
        for gw in gateways:
            gw.agent.publisher.kick()
        await asyncio.sleep(0.2)
    result = {}
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
        }
        gw.agent.outbox.close()
    for t in pub_tasks:
        t.cancel()
    out.write_text(json.dumps(result))


def _worker(indexes: list[int], urls: list[str], root: str, seed: int, ready: Any,
            start_at: Any, settings: ScaleSettings, out: str, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s worker {os.getpid()}: %(message)s")
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
    undelivered_duplicates: int = 0  # a member handed on an id twice (must be 0)
    per_member: list[int] = field(default_factory=list)
    reconnects: int = 0
    expired: int = 0
    unsent_at_end: int = 0
    protocols: list[str] = field(default_factory=list)
    kill_window_s: list[float] | None = None
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
        cluster = stack.enter_context(NatsCluster(root / "nats"))
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
        workers = min(settings.workers, settings.gateways)
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
        window: tuple[float, float] | None = None
        rss: list[float | None] = [None] * len(cluster.nodes)
        if settings.kill_at_s is not None:
            _sleep_until(start + settings.kill_at_s)
            victim = 0
            killed = cluster.nodes[victim].name
            killed_leader = cluster.meta_leader(victim) == killed
            t_kill = time.monotonic()
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
        for w in range(workers):
            produced.update(json.loads((root / f"worker{w}.json").read_text()))
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
        if rec[2] and rec[3] is not None and not rec[2].endswith("zone-state@1"):
            received_seq.setdefault(rec[1], set()).add(int(rec[3]))
    for gid, g in produced.items():
        # Lost: the broker acknowledged it (the row is gone from the outbox) and no member
        # received it. What is still in an outbox after the drain is late, not lost
        # (unsent_at_end); a gap is a seq missing below one the group received.
        lost_ids.update(i for i in g["acked"] if i not in received)
        got = received_seq.get(gid, set())
        if got:
            seq_gaps += sum(1 for s in range(1, max(got) + 1) if s not in got)
    ours = [r for r in first.values() if r[1] in produced and not
            str(r[2]).endswith("status@1")]
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
        workers=min(settings.workers, settings.gateways),
        killed_meta_leader=killed_leader,
        undelivered_duplicates=undelivered_dups,
        per_member=per_member,
        reconnects=sum(int(g["reconnects"]) for g in produced.values()),
        expired=sum(int(g["expired"]) for g in produced.values()),
        unsent_at_end=sum(int(g["unsent"]) for g in produced.values()),
        protocols=sorted({str(g["protocol"]) for g in produced.values()}),
        kill_window_s=None if window is None else [round(window[0] - wall0 - start, 1),
                                                   round(window[1] - wall0 - start, 1)],
    )
    report.problems = judge(report)
    return report


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
    ap.add_argument("--workers", type=int, default=d.workers, help="gateway processes")
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale.json"))
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the cluster's logs and the gateways' databases here")
    args = ap.parse_args(argv)
    # One compiled-kernel cache for every gateway process and run (each would otherwise
    # compile the kernels into its own, a minute on a busy 2-core machine).
    os.environ.setdefault("NUMBA_CACHE_DIR", str(args.out.resolve().parent / "numba-cache"))
    if args.gateways < 1 or args.duration <= 0 or args.workers < 1:
        ap.error("--gateways and --workers must be at least 1, --duration positive")
    kill = None if args.kill_at is None or args.kill_at < 0 else args.kill_at
    if kill is not None and kill + args.down >= args.duration:
        ap.error("--kill-at plus --down must fall inside --duration")
    settings = replace(d, gateways=args.gateways, duration_s=args.duration, kill_at_s=kill,
                       down_s=args.down, workers=args.workers)
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
