"""The staff console: the pure state, the Rich rendering (captured as text), and the console
against a real Mosquitto: acknowledging a moment, a second console seeing who took it, and a
non-zero exit when the broker is never reachable."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import free_port
from agent.console import ConsoleState, ack_payload, local_hhmmss, render_text, trend_arrow, watch
from agent.topics import SCHEMA_ACK, Topics
from tests.agent_process import agent_env
from tests.mqtt_helpers import Collector, start_mosquitto

VENUE = "park-east"
T = Topics(VENUE, "gw-01")
MID_OLD, MID_NEW = "01JAAAAAAAAAAAAAAAAAAAAAAA", "01JBBBBBBBBBBBBBBBBBBBBBBB"


def zone_state(zone: str, *, wait_s: float, joining: float, forecast: float,
               queue: int) -> dict[str, object]:
    return {"schema": "venue-agent/zone-state@1", "id": "x", "venue": VENUE, "gateway": "gw-01",
            "at": "2026-07-01T12:00:00Z", "zone": zone, "kind": "queue",
            "queue_length": queue, "wait_s": wait_s, "wait_joining_s": joining,
            "wait_forecast_s": forecast, "arrivals_per_min": 12.0, "throughput_per_min": 10.0}


def dispatch(mid: str, at: str, *, priority: str = "high", kind: str = "queue_long",
             status: str = "opened", zone: str = "dino-queue") -> dict[str, object]:
    return {"schema": "venue-agent/dispatch@1", "id": mid + "d", "venue": VENUE,
            "gateway": "gw-01", "at": at, "seq": 1, "moment_id": mid, "kind": kind,
            "zone": zone, "zone_name": "Dino Ride", "team": "dino-ops", "status": status,
            "priority": priority, "action": f"Open another load station ({kind})",
            "metrics": {}, "reader": None}


def moment(mid: str, status: str = "opened", kind: str = "queue_long") -> dict[str, object]:
    return {"schema": "venue-agent/moment@1", "id": mid + "m", "venue": VENUE,
            "gateway": "gw-01", "at": "2026-07-01T12:00:00Z", "seq": 1, "moment_id": mid,
            "kind": kind, "zone": "dino-queue", "zone_name": "Dino Ride", "status": status,
            "opened_at": "2026-07-01T12:00:00Z", "value": 2900, "unit": "s"}


def filled_state() -> ConsoleState:
    s = ConsoleState(broker="mqtt://x", connected=True, ever_connected=True)
    s.apply(T.zone_state("dino-queue"),
            zone_state("dino-queue", wait_s=2400, joining=2880, forecast=3600, queue=310))
    s.apply(T.zone_state("jungle-queue"),
            zone_state("jungle-queue", wait_s=600, joining=480, forecast=200, queue=40))
    s.apply(T.moment("dino-queue", "queue_long"), moment(MID_OLD))
    s.apply(T.dispatch("dino-ops"), dispatch(MID_OLD, "2026-07-01T12:00:00Z"))
    s.apply(T.moment("dino-queue", "queue_rising"), moment(MID_NEW, kind="queue_rising"))
    s.apply(T.dispatch("dino-ops"), dispatch(MID_NEW, "2026-07-01T12:05:00Z",
                                             priority="medium", kind="queue_rising"))
    return s


def test_trend_arrow_compares_the_forecast_with_the_posted_wait() -> None:
    assert trend_arrow({"wait_joining_s": 600, "wait_forecast_s": 900}) == "↑"
    assert trend_arrow({"wait_joining_s": 600, "wait_forecast_s": 300}) == "↓"
    assert trend_arrow({"wait_joining_s": 600, "wait_forecast_s": 640}) == "→"
    assert trend_arrow({"wait_s": 600, "wait_forecast_s": 900}) == "↑"  # falls back to wait_s
    assert trend_arrow({"wait_s": None}) == "·"


def test_the_view_shows_zones_and_the_feed_newest_first_in_local_time() -> None:
    text = render_text(filled_state(), venue=VENUE)
    dino = next(line for line in text.splitlines() if "dino-queue" in line)
    # queue, posted wait (wait_joining_s), wait_s, forecast and the arrow, in that order
    for a, b in (("310", "48m00s"), ("48m00s", "40m00s"), ("40m00s", "60m00s"),
                 ("60m00s", "↑")):
        assert dino.index(a) < dino.index(b), dino
    assert "↓" in next(line for line in text.splitlines() if "jungle-queue" in line)
    newer = text.index(local_hhmmss("2026-07-01T12:05:00Z"))
    older = text.index(local_hhmmss("2026-07-01T12:00:00Z"))
    assert newer < older  # newest first
    assert "MEDIUM" in text and "HIGH" in text
    assert "UNREACHABLE" not in text


def test_priority_colours() -> None:
    from rich.console import Console

    from agent.console import render

    con = Console(file=io.StringIO(), width=160, force_terminal=True, color_system="standard")
    con.print(render(filled_state(), venue=VENUE))
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[1;31mHIGH" in out  # high: bold red
    assert "\x1b[33mMEDIUM" in out  # medium: yellow


def test_an_acknowledgement_marks_the_alert_taken_and_the_next_one_is_offered() -> None:
    s = filled_state()
    newest = s.newest_open_alert()
    assert newest is not None and newest.moment_id == MID_NEW
    ack = ack_payload(VENUE, MID_NEW, "alice", at=1_780_000_000.0, **s.owner_of(MID_NEW))
    assert ack["schema"] == SCHEMA_ACK == "venue-agent/ack@1"
    assert ack["moment_id"] == MID_NEW and ack["by"] == "alice"
    assert ack["gateway"] == "gw-01" and ack["zone"] == "dino-queue"
    assert ack["at"].endswith("Z")
    s.apply_raw(Topics(VENUE).ack(MID_NEW), json.dumps(ack).encode())
    assert s.taken_by(MID_NEW) == "alice"
    assert "taken by alice" in render_text(s, venue=VENUE)
    nxt = s.newest_open_alert()
    assert nxt is not None and nxt.moment_id == MID_OLD
    # a resolved moment is not offered any more; a cleared retained ack un-takes it
    s.apply(T.moment("dino-queue", "queue_long"), moment(MID_OLD, "resolved"))
    assert s.newest_open_alert() is None
    s.apply_raw(Topics(VENUE).ack(MID_NEW), b"")
    assert s.taken_by(MID_NEW) is None


def test_banner_while_the_broker_is_unreachable() -> None:
    s = filled_state()
    s.connected, s.last_error, s.down_since = False, "connection lost", time.time()
    text = render_text(s, venue=VENUE)
    assert "BROKER UNREACHABLE" in text.splitlines()[1]  # on top, inside the panel
    assert "connection lost" in text


def test_ack_topic_and_console_filters() -> None:
    t = Topics(VENUE)
    assert t.ack(MID_NEW) == f"venue/{VENUE}/ack/{MID_NEW}"
    assert t.ack_filter in t.console_filters("dino-ops")
    for bad in ("", "a/b", "+", "#"):
        with pytest.raises(ValueError):
            t.ack(bad)


# -------------------------------------------------------------------------------------------
# against a real Mosquitto


def _publish(url_port: int, topic: str, payload: dict[str, object], retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    c.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, env=agent_env(), timeout=timeout)


@pytest.mark.e2e
def test_ack_is_published_retained_and_a_second_console_shows_who_took_it(
        tmp_path: Path) -> None:
    with start_mosquitto(tmp_path / "broker") as broker:
        url = broker.url
        # a first console is watching when the dispatch arrives
        seen: list[ConsoleState] = []
        import threading

        th = threading.Thread(target=lambda: seen.append(watch(
            url, VENUE, duration_s=6, out=io.StringIO(), redraw=False, keys=False)))
        th.start()
        time.sleep(1.0)
        _publish(broker.port, T.moment("dino-queue", "queue_long"), moment(MID_NEW))
        _publish(broker.port, T.dispatch("dino-ops"), dispatch(MID_NEW, "2026-07-01T12:05:00Z"))
        with Collector(url, Topics(VENUE).ack_filter) as acks:
            out = _cli("watch", "--broker", url, "--venue", VENUE, "--ack", MID_NEW,
                       "--name", "alice", "--protocol", "5")
            assert out.returncode == 0, out.stderr
            assert f"acknowledged {MID_NEW} as alice" in out.stdout
            assert f"broker connected: {url} (MQTT 5)" in out.stdout
            got = acks.wait_for(lambda ms: bool(ms))[0]
        body = got.json()
        assert got.topic == f"venue/{VENUE}/ack/{MID_NEW}" and got.qos == 1
        assert body["schema"] == "venue-agent/ack@1" and body["by"] == "alice"
        assert body["moment_id"] == MID_NEW and body["venue"] == VENUE
        th.join(20)
        first = seen[0]
        assert first.taken_by(MID_NEW) == "alice"  # the console that was already open
        assert "taken by alice" in render_text(first, venue=VENUE)
        # a console started afterwards sees it too (retained), over MQTT 3.1.1
        late = _cli("watch", "--broker", url, "--venue", VENUE, "--duration", "2",
                    "--protocol", "3.1.1")
        assert late.returncode == 0, late.stderr
        assert f"ACK {MID_NEW} taken by alice" in late.stdout
        assert f"broker connected: {url} (MQTT 3.1.1)" in late.stdout


@pytest.mark.e2e
def test_never_connecting_shows_the_banner_and_exits_non_zero() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens
    t0 = time.monotonic()
    out = _cli("watch", "--broker", url, "--venue", VENUE, "--connect-timeout", "2")
    took = time.monotonic() - t0
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "UNREACHABLE" in out.stdout
    assert "no connection to the broker" in out.stderr and url in out.stderr
    assert took < 15
    state = ConsoleState(broker=url)
    assert "CONNECTING" in render_text(state)


def test_bad_options_exit_2(tmp_path: Path) -> None:
    out = _cli("watch", "--broker", "mqtt://127.0.0.1:1", "--venue", VENUE,
               "--cert-file", str(tmp_path / "nope.pem"))
    assert out.returncode == 2 and "mqtts://" in out.stderr
    out = _cli("watch", "--broker", "mqtt://127.0.0.1:1", "--venue", VENUE, "--ack", "a/b")
    assert out.returncode == 2 and "moment_id" in out.stderr


@pytest.mark.e2e
def test_auto_falls_back_to_mqtt_3_1_1_on_a_broker_without_mqtt_5(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    from agent.broker import start_broker

    with start_broker(prefer="embedded", workdir=tmp_path / "broker") as broker:
        out = _cli("watch", "--broker", broker.url, "--venue", VENUE, "--ack", MID_OLD,
                   "--name", "dave", "--connect-timeout", "20")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert f"acknowledged {MID_OLD} as dave" in out.stdout
        assert "broker connected: " + broker.url + " (MQTT 3.1.1)" in out.stdout


class _FlippingFeed:
    """A feed whose broker link comes up between two reads of ``connected`` within one turn
    of the console's loop: as paho's thread can make it do at any moment."""

    def __init__(self, *_a: object, **_k: object) -> None:
        self.reads = 0
        self.ever_connected, self.down_since = False, None
        self.last_error: str | None = "connection lost: Unspecified error"
        self.protocol = "3.1.1"
        self.acked: list[str] = []

    @property
    def connected(self) -> bool:
        self.reads += 1
        # Down for the first two reads, up from the third: the old loop read the flag three
        # times a turn (state, printed line, acknowledgement) and so acknowledged unseen.
        return self.reads > 2

    def start(self) -> None: ...
    def poll(self) -> None: ...
    def stop(self) -> None: ...

    def publish(self, topic: str, payload: dict[str, object], **_k: object) -> object:
        self.acked.append(topic)

        class _Info:
            def wait_for_publish(self, timeout: float) -> None: ...
            def is_published(self) -> bool:
                return True
        return _Info()


def test_the_link_line_and_the_acknowledgement_read_the_link_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A console that acknowledges while it still prints the broker as down would tell staff
    the opposite of what happened: every "acknowledged" follows a "connected" line."""
    import agent.console as console

    made: list[_FlippingFeed] = []
    monkeypatch.setattr(console, "MqttFeed", lambda *a, **k: made.append(_FlippingFeed()) or made[-1])
    out = io.StringIO()
    watch("mqtt://127.0.0.1:1", VENUE, ack=MID_OLD, name="erin", out=out, redraw=False,
          duration_s=10, connect_timeout_s=None)
    lines = out.getvalue().splitlines()
    assert made and made[0].acked == [T.ack(MID_OLD)]
    assert lines[-1] == f"acknowledged {MID_OLD} as erin"
    assert "broker connected: mqtt://127.0.0.1:1 (MQTT 3.1.1)" in lines[:-1], lines
