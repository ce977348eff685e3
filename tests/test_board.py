"""The venue board for real: Mosquitto, `venue-agent board` as a process, a paho publisher, and
the page's Server-Sent Events stream read over HTTP as a browser's EventSource would."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import free_port
from agent.topics import Topics
from tests.agent_process import agent_env
from tests.mqtt_helpers import poll_until, start_mosquitto

pytestmark = pytest.mark.e2e

VENUE = "park-east"
T = Topics(VENUE, "gw-01")
SSE_LATENCY_MAX_S = 2.0


class SseReader:
    """Reads ``/events`` in a thread; each ``state`` event lands in ``events`` with its
    arrival time (monotonic)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type", "").startswith("text/event-stream")
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = "", []
        try:
            while True:
                line = self.resp.readline().decode()
                if not line:
                    return
                line = line.rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if event == "state" and data:
                        self.events.put((time.monotonic(), json.loads("\n".join(data))))
                    event, data = "", []
        except Exception:  # the test closed the connection
            return

    def until(self, predicate: Any, timeout: float) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching board event within {timeout} s")
            try:
                at, snap = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(snap):
                return at, snap

    def close(self) -> None:
        if self.sock is not None:  # wakes the reading thread (close alone waits for it)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def _get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, r.getheader("Content-Type", ""), body


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[Any, int, subprocess.Popen[bytes]]]:
    with start_mosquitto(tmp_path / "broker") as broker:
        port = free_port()
        log = (tmp_path / "board.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "board", "--broker", broker.url, "--venue",
             VENUE, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            env=agent_env())

        def up() -> bool:
            try:
                return _get(port, "/state.json")[0] == 200
            except OSError:
                return False

        try:
            assert poll_until(up, 30), (tmp_path / "board.log").read_text()
            yield broker, port, proc
        finally:
            proc.terminate()
            rc = proc.wait(15)
            log.close()
            assert rc == 0, (tmp_path / "board.log").read_text()


def _publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _send(c: mqtt.Client, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
    c.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(5)


def _zone(zone: str, wait_s: float, joining: float | None, queue_length: int,
          forecast: float) -> dict[str, Any]:
    return {"schema": "venue-agent/zone-state@1", "id": f"z{time.monotonic_ns()}",
            "venue": VENUE, "gateway": "gw-01",
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "zone": zone,
            "kind": "queue", "queue_length": queue_length, "wait_s": wait_s,
            "wait_joining_s": joining, "wait_forecast_s": forecast}


def test_pages_carry_the_event_source_wiring(board: tuple[Any, int, Any]) -> None:
    _broker, port, _proc = board
    status, ctype, html = _get(port, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert '<script src="static/board.js"></script>' in html and 'id="zones"' in html
    status, _, signage = _get(port, "/signage")
    assert status == 200 and 'data-mode="signage"' in signage and "static/board.js" in signage
    status, ctype, js = _get(port, "/static/board.js")
    assert status == 200 and "javascript" in ctype
    assert 'new EventSource("events")' in js and 'addEventListener("state"' in js
    assert "mqtt" not in js.lower().replace("no mqtt here", "")  # the page speaks no MQTT
    assert _get(port, "/static/../board.py")[0] == 404
    assert _get(port, "/static/nope.js")[0] == 404


def test_a_new_zone_state_reaches_the_page_within_2_s(board: tuple[Any, int, Any]) -> None:
    broker, port, _proc = board
    sse = SseReader(port)
    pub = _publisher(broker.port)
    try:
        first = sse.until(lambda s: True, 10)[1]  # the snapshot on connect
        assert first["venue"] == VENUE
        sse.until(lambda s: s["broker"]["connected"], 10)
        latencies = []
        for i, wait in enumerate((1500.0, 1800.0, 2100.0)):
            sent = time.monotonic()
            _send(pub, T.zone_state("dino-queue"),
                  _zone("dino-queue", wait - 300, wait, 200 + i, wait + 600), retain=True)
            at, snap = sse.until(lambda s, w=wait: any(
                z["zone"] == "dino-queue" and z["posted_wait_s"] == w for z in s["zones"]), 5)
            latencies.append(at - sent)
        print(f"board SSE latency: {[round(x * 1000) for x in latencies]} ms")
        assert max(latencies) < SSE_LATENCY_MAX_S
        z = next(z for z in snap["zones"] if z["zone"] == "dino-queue")
        assert z["wait_s"] == 1800 and z["queue_length"] == 202 and z["trend"] == "↑"
        assert z["wait_forecast_s"] == 2700

        # posted wait falls back to wait_s when there is no wait_joining_s
        _send(pub, T.zone_state("jungle-queue"), _zone("jungle-queue", 420, None, 30, 400))
        sse.until(lambda s: any(z["zone"] == "jungle-queue" and z["posted_wait_s"] == 420
                                for z in s["zones"]), 5)

        # an open moment, then a nudge, then the moment resolves
        mid = "01JCCCCCCCCCCCCCCCCCCCCCCC"
        moment = {"schema": "venue-agent/moment@1", "id": "m1", "venue": VENUE,
                  "gateway": "gw-01", "at": first["at"], "seq": 1, "moment_id": mid,
                  "kind": "queue_long", "zone": "dino-queue", "zone_name": "Dino Ride",
                  "status": "opened", "opened_at": first["at"], "value": 2100, "unit": "s"}
        _send(pub, T.moment("dino-queue", "queue_long"), moment)
        _, snap = sse.until(lambda s: any(m["moment_id"] == mid for m in s["moments"]), 5)
        assert snap["moments"][0]["zone_name"] == "Dino Ride"
        nudge = {"schema": "venue-agent/nudge@1", "id": "n1", "venue": VENUE,
                 "gateway": "gw-01", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "seq": 2, "moment_id": "01JDDDDDDDDDDDDDDDDDDDDDDD", "zone": "jungle-queue",
                 "zone_name": "Jungle Cruise", "wait_s": 420,
                 "message": "Jungle Cruise is a 7-minute wait for anyone joining now",
                 "valid_for_s": 600}
        _send(pub, T.nudge("jungle-queue"), nudge)
        _, snap = sse.until(lambda s: bool(s["nudges"]), 5)
        assert snap["nudges"][0]["message"].startswith("Jungle Cruise is a 7-minute")
        _send(pub, T.moment("dino-queue", "queue_long"), {**moment, "status": "resolved"})
        sse.until(lambda s: not s["moments"], 5)
        # a page opened now gets the whole board at once
        late = SseReader(port)
        _, snap = late.until(lambda s: True, 5)
        assert {z["zone"] for z in snap["zones"]} == {"dino-queue", "jungle-queue"}
        late.close()
        _, _, state = _get(port, "/state.json")
        assert json.loads(state)["nudges"][0]["zone"] == "jungle-queue"
    finally:
        pub.disconnect()
        pub.loop_stop()
        sse.close()


def test_the_page_is_told_when_the_broker_goes_away(board: tuple[Any, int, Any]) -> None:
    broker, port, _proc = board
    sse = SseReader(port)
    try:
        sse.until(lambda s: s["broker"]["connected"], 10)
        broker.kill()
        _, snap = sse.until(lambda s: not s["broker"]["connected"], 10)
        assert snap["broker"]["error"]
        broker.restart()
        sse.until(lambda s: s["broker"]["connected"], 20)
    finally:
        sse.close()


def test_the_snapshot_posts_the_joining_wait_drops_expired_nudges_and_names_the_taker() -> None:
    from agent.console import ConsoleState

    s = ConsoleState()
    s.apply(T.zone_state("dino-queue"), _zone("dino-queue", 1200, 1500, 100, 2000))
    s.apply(T.zone_state("jungle-queue"), _zone("jungle-queue", 420, None, 30, 400))
    mid = "01JGGGGGGGGGGGGGGGGGGGGGGG"
    s.apply(T.moment("dino-queue", "queue_long"), {
        "moment_id": mid, "kind": "queue_long", "zone": "dino-queue", "zone_name": "Dino Ride",
        "status": "opened", "opened_at": "2026-07-01T12:00:00Z"})
    s.apply(Topics(VENUE).ack(mid), {"schema": "venue-agent/ack@1", "moment_id": mid,
                                     "by": "erin"})
    now = time.time()
    for zone, age in (("jungle-queue", 10), ("plaza", 700)):
        s.apply(T.nudge(zone), {"zone": zone, "message": f"go {zone}", "valid_for_s": 600,
                                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime(now - age))})
    snap = s.snapshot(now)
    waits = {z["zone"]: (z["posted_wait_s"], z["trend"], z["name"]) for z in snap["zones"]}
    assert waits == {"dino-queue": (1500.0, "↑", "Dino Ride"),
                     "jungle-queue": (420.0, "→", "jungle-queue")}
    assert snap["moments"] == [{"moment_id": mid, "kind": "queue_long", "zone": "dino-queue",
                                "zone_name": "Dino Ride", "status": "opened",
                                "opened_at": "2026-07-01T12:00:00Z", "value": None,
                                "unit": None, "taken_by": "erin"}]
    assert [n["zone"] for n in snap["nudges"]] == ["jungle-queue"]  # plaza's expired
    json.dumps(snap)  # all JSON
