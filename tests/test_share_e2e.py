"""`venue-agent tail --share GROUP` on real brokers: members are real subprocesses.

Mosquitto (MQTT 5 shared subscription) and a single-node nats-server with MQTT and
JetStream (a NATS queue group, messages published over MQTT): each moment is printed
exactly once between the members, no gap is reported; a seq the publisher leaves out is
reported as a gap once by the group; a member that leaves mid-stream loses nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main
from agent.topics import SCHEMA_DISPATCH, SCHEMA_MOMENT, Topics
from bench.nats_cluster import NatsCluster, NatsClusterError
from tests.mqtt_helpers import need_mosquitto, start_mosquitto, wait_for

pytestmark = pytest.mark.e2e

VENUE = "v1"
GATEWAYS = ("gw-a", "gw-b", "gw-c")
GRACE_S, SYNC_S = 2.0, 0.1  # grace: room for a busy machine; a late message is no gap


class Member:
    """One ``venue-agent tail`` process; its stdout lines are collected as JSON."""

    def __init__(self, broker: str, name: str, group: str = "central") -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "tail", "--share", group, "--broker", broker,
             "--venue", VENUE, "--member", name, "--gap-grace", str(GRACE_S),
             "--sync", str(SYNC_S), "--connect-timeout", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(json.loads(raw))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.err.append(raw.rstrip())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def wait_subscribed(self) -> None:
        wait_for(lambda: any("subscribed" in e for e in self.err) or self.proc.poll() is not None,
                 20, f"member {self.name} to subscribe")
        assert self.proc.poll() is None, f"member {self.name} exited: {self.err}"

    def leave(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def messages(members: list[Member]) -> list[dict[str, Any]]:
    return [line for m in members for line in m.snapshot() if "payload" in line]


def reports(members: list[Member], kind: str) -> list[dict[str, Any]]:
    return [line[kind] for m in members for line in m.snapshot() if kind in line]


class Publisher:
    """Enveloped guaranteed-stream messages (moments and dispatches), one seq counter per
    gateway, QoS 1 over MQTT 3.1.1 (what NATS's MQTT listener speaks)."""

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher",
                                  protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = dict.fromkeys(GATEWAYS, 0)
        self.sent: list[str] = []  # ids
        self._inflight: list[mqtt.MQTTMessageInfo] = []

    def next(self, gateway: str, *, skip: bool = False) -> None:
        self.seq[gateway] += 1
        if skip:
            return  # the message is "lost": its seq is used, nothing is sent
        t = Topics(VENUE, gateway)
        seq = self.seq[gateway]
        if seq % 4 == 0:
            topic, msg = t.dispatch("ops"), t.envelope(SCHEMA_DISPATCH, time.time(), seq=seq,
                                                       kind="queue_long", team="ops")
        else:
            topic, msg = t.moment("z1", "queue_long"), t.envelope(
                SCHEMA_MOMENT, time.time(), seq=seq, kind="queue_long", status="updated")
        self._inflight.append(self.client.publish(topic, json.dumps(msg), qos=1))
        self.sent.append(msg["id"])

    def round(self, n: int, pause_s: float = 0.0) -> None:
        for _ in range(n):
            for gw in GATEWAYS:
                self.next(gw)
            if pause_s:
                time.sleep(pause_s)
        for info in self._inflight:  # every PUBACK in
            info.wait_for_publish(5)
        self._inflight.clear()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def members() -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for m in started:
        m.kill()


def check_exactly_once(group: list[Member], sent: list[str]) -> None:
    # A bound on waiting, not a speed figure: a busy 2-core machine can take a while.
    wait_for(lambda: len(messages(group)) >= len(sent), 30, f"{len(sent)} messages")
    ids = Counter(line["payload"]["id"] for line in messages(group))
    assert set(ids) == set(sent)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    assert reports(group, "duplicate") == []


def shared_stream(group: list[Member], pub: Publisher) -> None:
    """The scenario both brokers go through: messages shared between two members, one seq
    lost, then member ``a`` leaves while messages keep coming."""
    pub.round(30)
    check_exactly_once(group, pub.sent)
    by_member = Counter(line["member"] for line in messages(group))
    assert set(by_member) == {"a", "b"}, by_member  # the load is shared
    pub.next("gw-b", skip=True)  # lost between two that arrive
    lost = pub.seq["gw-b"]
    pub.round(2)
    wait_for(lambda: bool(reports(group, "gap")), GRACE_S + 8, "the gap report")
    feeder = threading.Thread(target=pub.round, args=(40, 0.005))
    feeder.start()
    time.sleep(0.1)
    assert group[0].leave() == 0  # a leaves mid-stream
    feeder.join()
    check_exactly_once(group, pub.sent)
    assert any("left after" in e for e in group[0].err)
    last = set(pub.sent[-30:])
    assert {line["member"] for line in messages(group) if line["payload"]["id"] in last} == {
        "b"}, "the member that stayed took over"
    # Neither member alone saw a contiguous stream, one left: merged, the group reports the
    # one lost seq, once, and nothing else.
    time.sleep(GRACE_S + 5 * SYNC_S)
    gaps = reports(group, "gap")
    assert [(g["gateway"], g["first_seq"], g["last_seq"]) for g in gaps] == [
        ("gw-b", lost, lost)], gaps
    assert group[1].leave() == 0


def test_two_members_on_a_mosquitto_shared_subscription(tmp_path: Path,
                                                        members: list[Member]) -> None:
    need_mosquitto()
    with start_mosquitto(tmp_path / "broker") as broker:
        members += [Member(broker.url, "a"), Member(broker.url, "b")]
        for m in members:
            m.wait_subscribed()
        pub = Publisher(broker.url)
        try:
            shared_stream(members, pub)
        finally:
            pub.stop()


class _OneNode(NatsCluster):
    """The cluster harness with one node: ready once ``/jsz`` answers with JetStream on (a
    lone node has no meta leader, and its ``/jsz`` has no ``disabled`` key when enabled)."""

    def meta_leader(self, index: int) -> str | None:
        info = self.monitor(index, "jsz")
        return self.nodes[index].name if info and not info.get("disabled", False) else None


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsCluster]:
    try:
        cluster = _OneNode(tmp_path / "nats", nodes=1).start()
    except NatsClusterError as e:  # nats-server missing: make test installs it; fail
        pytest.fail(str(e), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_two_members_on_a_nats_queue_group(nats_node: NatsCluster,
                                           members: list[Member]) -> None:
    members += [Member(nats_node.nats_urls[0], "a"), Member(nats_node.nats_urls[0], "b")]
    for m in members:
        m.wait_subscribed()
    pub = Publisher(nats_node.mqtt_urls[0])  # the gateways speak MQTT to NATS
    try:
        shared_stream(members, pub)
    finally:
        pub.stop()


def test_tail_exits_1_naming_an_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("mqtt://127.0.0.1:9", "nats://127.0.0.1:9"):
        code = main(["tail", "--share", "g", "--broker", url, "--venue", VENUE,
                     "--connect-timeout", "0.5"])
        out, err = capsys.readouterr()
        assert code == 1
        assert "no connection" in err and url in err, err
        assert "Traceback" not in err and out == ""
