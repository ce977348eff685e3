"""A bounded `make scale`: 20 gateways for 35 s on a 3-node NATS cluster, one node SIGKILLed.

It drives bench/scale.py's own run (real Agents, outboxes and publishers in worker processes,
a nats-py consumer group of 3, a real nats-server cluster) and fails on any loss, any ``seq``
gap of a gateway's guaranteed stream, or a consumer that handed on an ``id`` twice. It also
checks that every gateway fails over (reconnects), talks MQTT 3.1.1 to NATS, and that every
zone's retained state is the same on every node of the cluster afterwards. Latency and stall
limits are `make scale`'s (they depend on what else the machine runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.topics import Topics
from bench.nats_cluster import NatsCluster, nats_server_binary
from bench.scale import VENUE, Restamper, ScaleSettings, gateway_id, record_script, run_scale
from tests.mqtt_helpers import Collector, wait_for

pytestmark = pytest.mark.e2e

GATEWAYS = 20
ZONES_PER_GATEWAY = 3  # the demo venue's dino-queue, jungle-queue and plaza


def test_nats_cluster_kill_and_restart(tmp_path: Path) -> None:
    nats_server_binary()  # fails (never skips) naming the package when it is missing
    with NatsCluster(tmp_path) as cluster:
        assert len(cluster.mqtt_urls) == 3 and all(
            u.startswith("mqtt://127.0.0.1:") for u in cluster.mqtt_urls)
        for conf in tmp_path.glob("n*.conf"):  # nothing listens beyond loopback
            text = conf.read_text()
            assert "0.0.0.0" not in text and text.count("127.0.0.1") >= 4
        cluster.kill(1)
        assert not cluster.alive(1)
        assert cluster.meta_leader(0) is not None or cluster.meta_leader(2) is not None
        cluster.restart(1)
        assert cluster.alive(1) and cluster.meta_leader(1) is not None
        assert all((cluster.rss_mb(i) or 0) > 0 for i in range(3))


def test_scale_bounded_no_loss_no_gap(tmp_path: Path) -> None:
    retained: dict[int, dict[str, Any]] = {}

    def read_retained(cluster: NatsCluster) -> None:
        # Every zone's retained state, read from each node in turn.
        for i, url in enumerate(cluster.mqtt_urls):
            with Collector(url, Topics(VENUE).zone_state("+")) as sub:
                want = GATEWAYS * ZONES_PER_GATEWAY

                def complete(s: Collector = sub, w: int = want) -> bool:
                    return len({m.topic for m in s.messages}) >= w

                wait_for(complete, 20, f"retained zone state of {want} zones from node {i + 1}")
                retained[i] = {m.topic: json.loads(m.payload) for m in sub.messages
                               if m.retain}

    settings = ScaleSettings(gateways=GATEWAYS, duration_s=35.0, kill_at_s=10.0, down_s=3.0,
                             workers=2, drain_s=20.0)
    t0 = time.monotonic()
    report = run_scale(settings, tmp_path, log=lambda _m: None, inspect=read_retained)
    assert time.monotonic() - t0 < 240  # ~1 min on an idle 2-core machine

    assert report.messages > GATEWAYS * ZONES_PER_GATEWAY * 20  # state every tick, mostly
    # Both kinds of gateway ran: cores in the loop, and scripts a core made, replayed.
    assert (report.full_agents, report.replayed_gateways) == (8, GATEWAYS - 8), report
    assert report.failover is not None and report.failover["moved"] >= GATEWAYS // 3
    assert report.lost == 0, report
    assert report.seq_gaps == 0, report
    assert report.undelivered_duplicates == 0, report  # every member deduped on the id
    assert report.node_killed == "n1"
    assert report.unsent_at_end == 0, report
    assert report.protocols == ["3.1.1"]  # NATS speaks 3.1.1; the publisher fell back
    # A third of the gateways started on the killed node; each of them failed over.
    assert report.reconnects >= GATEWAYS // 3, report
    assert all(n > 0 for n in report.per_member), report.per_member  # the group shared it

    # Retained zone state: on every node, every zone, the same (latest) message.
    zones = {Topics(VENUE).zone_state(f"{gateway_id(g)}-{z}") for g in range(GATEWAYS)
             for z in ("dino-queue", "jungle-queue", "plaza")}
    for i in range(3):
        assert set(retained[i]) == zones, f"node {i + 1}"
    for topic in zones:
        ids = {retained[i][topic]["id"] for i in range(3)}
        assert len(ids) == 1, f"{topic}: nodes disagree on the retained state {ids}"


def test_nats_single_node_becomes_ready(tmp_path: Path) -> None:
    # One node has no meta group: it is ready once /jsz says JetStream is on (a /jsz
    # without "disabled" means on: the server omits the field when it is false).
    with NatsCluster(tmp_path, nodes=1, ready_timeout_s=15.0) as cluster:
        assert cluster.alive(0)
        assert cluster.meta_leader(0) == "n1"
        assert "cluster {" not in (tmp_path / "n1.conf").read_text()


def test_replayed_gateways_publish_what_a_core_made_as_their_own(tmp_path: Path) -> None:
    script = record_script(9000, ["mqtt://127.0.0.1:1"], tmp_path, 1, 90)
    assert len(script.ticks) == 90
    kinds = {m.topic.split("/")[2] for tick in script.ticks for m, _ in tick}
    assert kinds >= {"zone", "moment"}  # zone state every tick, and the rush's moments
    seen_ids: set[str] = set()
    moments: dict[str, set[str]] = {}
    for gid in ("g0003", "g0004"):
        stamp = Restamper(script, gid)
        for k in range(len(script.ticks)):
            wall = 2_000_000_000.0 + k
            for msg in stamp.tick(k, wall):
                body = msg.payload
                assert "g9000" not in json.dumps(body) + msg.topic + str(msg.coalesce_key)
                assert body["gateway"] == gid and msg.topic.startswith(f"venue/{VENUE}/")
                assert body.get("zone", gid).startswith(gid)
                assert body["id"] not in seen_ids
                seen_ids.add(body["id"])
                assert body["at"].startswith("2033-05-18T")  # the replay's wall time
                assert "seq" not in body  # the outbox numbers the guaranteed stream
                if "moment_id" in body:
                    moments.setdefault(gid, set()).add(body["moment_id"])
    # Each gateway's moments have ids of their own; one moment keeps its id throughout.
    assert moments["g0003"] and not moments["g0003"] & moments["g0004"]
    recorded = {json.loads(b).get("moment_id") for t in script.ticks for _, b in t} - {None}
    assert len(moments["g0003"]) == len(moments["g0004"]) == len(recorded)
