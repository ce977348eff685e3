"""Publisher against real brokers: QoS 1 delivery, PUBACK-only deletes, outages, Last Will."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.broker import LocalBroker, start_broker
from agent.outbox import Outbox
from agent.publisher import BrokerSettings, Publisher
from tests.mqtt_helpers import Collector, async_wait_for

REPO = Path(__file__).resolve().parent.parent
STATUS = "venue/park/gateway/gw-01/status"
MOMENT = "venue/park/moment/dino-queue/queue_long"
NUDGE = "venue/park/nudge/dino-queue"
ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'



def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def make_publisher(url: str, outbox: Outbox, **kw: Any) -> Publisher:
    return Publisher(
        BrokerSettings(url, client_id="gw-01", **kw.pop("settings", {})),
        outbox,
        will=(STATUS, OFFLINE),
        birth=lambda: (STATUS, ONLINE),
        backoff_min_s=0.05,
        backoff_max_s=0.5,
        **kw,
    )


def enqueue_moments(outbox: Outbox, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        outbox.enqueue(MOMENT, {"i": i}, seq_stream="guaranteed")


def seqs(sub: Collector) -> list[int]:
    return [m.json()["seq"] for m in sub.on(MOMENT)]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalBroker]:
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker that keeps a consumer's session, so no message is lost while it reconnects."""
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker", persistence=True) as b:
        yield b


# -- settings ------------------------------------------------------------------------------


def test_broker_settings_parse_urls() -> None:
    s = BrokerSettings("mqtt://broker.example:1884", client_id="gw")
    assert (s.host, s.port, s.tls) == ("broker.example", 1884, False)
    s = BrokerSettings("mqtts://broker.example", client_id="gw")
    assert (s.port, s.tls) == (8883, True)
    assert BrokerSettings("mqtt://[::1]", client_id="gw").host == "::1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker:1883", "scheme"),
        ("broker:1883", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://broker:99999", "bad port"),
        ("mqtt://u:secret@broker", "credentials"),
        ("mqtt://broker/topic", "path"),
    ],
)
def test_broker_settings_refuse_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerSettings(url, client_id="gw")


def test_broker_settings_refuse_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="protocol"):
        BrokerSettings("mqtt://b", client_id="gw", protocol="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not mqtts"):
        BrokerSettings("mqtt://b", client_id="gw", ca_file=str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        BrokerSettings("mqtts://b", client_id="gw", ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="client_id"):
        BrokerSettings("mqtt://b", client_id="")


# -- delivery ------------------------------------------------------------------------------


def test_delivers_qos1_in_order_and_deletes_only_after_puback(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    sub = Collector(mosquitto.url, "venue/#")
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(mosquitto.url, outbox, max_inflight=5)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: pub.connected, what="connect")
        await asyncio.to_thread(sub.wait_for, lambda ms: any(m.topic == STATUS for m in ms))
        mosquitto.pause()  # the connection stays up, but no PUBACK can come
        try:
            enqueue_moments(outbox, 12)
            pub.kick()
            await async_wait_for(lambda: pub.stats().sent == 5, what="a full window")
            await asyncio.sleep(0.3)  # give wrongly-early deletes a chance to show
            stats = pub.stats()
            assert (stats.sent, stats.acked, stats.inflight) == (5, 0, 5)  # window respected
            assert outbox.depth() == 12  # nothing deleted without PUBACK
        finally:
            mosquitto.resume()
        await async_wait_for(lambda: outbox.depth() == 0, what="all acked")
        assert pub.stats().acked == 12
        await pub.stop()
        await task

    try:
        run(scenario())
        sub.wait_for(lambda ms: len(seqs(sub)) == 12)
        assert seqs(sub) == list(range(1, 13))
        assert {m.qos for m in sub.on(MOMENT)} == {1}
        assert [m.payload for m in sub.on(STATUS)] == [ONLINE, OFFLINE]
    finally:
        sub.stop()
        outbox.close()
    # A consumer arriving later sees the retained "offline" of the graceful stop.
    with Collector(mosquitto.url, STATUS) as late:
        late.wait_for(lambda ms: len(ms) == 1)
        assert late.messages[0].retain and late.messages[0].payload == OFFLINE


def test_mqtt5_expiry_is_sent_and_expired_rows_are_dropped(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    sub = Collector(mosquitto.url, "venue/#", protocol="5")
    old = Outbox(tmp_path / "o.db", clock=lambda: time.time() - 120)
    old.enqueue(NUDGE, {"stale": True}, expiry_s=60)  # queued 2 min ago, valid for 1 min
    old.close()
    outbox = Outbox(tmp_path / "o.db")
    outbox.enqueue(NUDGE, {"stale": False}, expiry_s=600)
    pub = make_publisher(mosquitto.url, outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: outbox.depth() == 0, what="outbox drained")
        assert pub.stats().protocol == "5" and pub.stats().expired == 1
        await pub.stop()
        await task

    try:
        run(scenario())
        nudges = sub.wait_for(lambda ms: any(m.topic == NUDGE for m in ms))
        got = [m for m in nudges if m.topic == NUDGE]
        # Stored before the connection came up: sent as a replay, flagged so.
        assert [m.json() for m in got] == [{"stale": False, "replayed": True}]
        assert got[0].expiry_s is not None and 0 < got[0].expiry_s <= 600
    finally:
        sub.stop()
        outbox.close()


def test_volatile_health_is_dropped_offline_and_sent_online(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(mosquitto.url, outbox)
    health = "venue/park/gateway/gw-01/health"

    async def scenario() -> None:
        assert pub.publish_volatile(health, b"{}") is False
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: pub.connected)
        assert pub.publish_volatile(health, b'{"ok":1}') is True
        await pub.stop()
        await task

    with Collector(mosquitto.url, health) as sub:
        run(scenario())
        sub.wait_for(lambda ms: len(ms) == 1)
        assert sub.messages[0].qos == 0
    stats = pub.stats()
    assert (stats.volatile_dropped, stats.volatile_sent) == (1, 1)
    outbox.close()


# -- outages -------------------------------------------------------------------------------


def test_broker_down_at_start_buffers_then_delivers_in_order(
    persistent_mosquitto: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = persistent_mosquitto
    sub = Collector(broker.url, "venue/#", client_id="consumer", persistent=True)
    broker.stop()  # SIGTERM: Mosquitto saves the consumer's session and goes away
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(broker.url, outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        enqueue_moments(outbox, 20)
        pub.kick()
        await async_wait_for(
            lambda: "unreachable" in caplog.text, what="the outage to be reported"
        )
        assert not task.done() and not pub.connected
        enqueue_moments(outbox, 10, start=20)  # the agent keeps producing meanwhile
        pub.kick()
        assert outbox.depth() == 30
        await asyncio.to_thread(broker.start)
        await async_wait_for(lambda: outbox.depth() == 0, what="the backlog to drain")
        await pub.stop()
        await task

    try:
        with caplog.at_level(logging.INFO, logger="agent.publisher"):
            run(scenario())
        sub.wait_for(lambda ms: len(seqs(sub)) >= 30, timeout=15)
        assert seqs(sub) == list(range(1, 31))
        outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_logs) == 1 and broker.url in outage_logs[0].getMessage()
    finally:
        sub.stop()
        outbox.close()


def test_broker_killed_mid_stream_loses_nothing(
    persistent_mosquitto: LocalBroker, tmp_path: Path
) -> None:
    broker = persistent_mosquitto
    sub = Collector(broker.url, "venue/#", client_id="consumer", persistent=True)
    broker.save()  # the consumer's session survives the crash below
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(broker.url, outbox)
    total = 300

    async def produce() -> None:
        for i in range(0, total, 10):
            enqueue_moments(outbox, 10, start=i)
            pub.kick()
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        producer = asyncio.create_task(produce())
        await async_wait_for(lambda: pub.stats().acked >= 60, what="stream under way")
        # Freeze the broker until the window is full of unacked messages, then crash it:
        # those 20 must be sent again to the restarted broker.
        broker.pause()
        await async_wait_for(lambda: pub.stats().inflight == 20, what="a full window")
        await asyncio.to_thread(broker.kill)
        await asyncio.to_thread(broker.start)
        await producer
        await async_wait_for(lambda: outbox.depth() == 0, timeout=15, what="drained")
        stats = pub.stats()
        assert stats.reconnects == 1
        assert stats.sent >= total + 20 and stats.acked >= total
        await pub.stop()
        await task

    try:
        run(scenario())
        sub.wait_for(lambda ms: set(range(1, total + 1)) <= set(seqs(sub)), timeout=15)
        assert len(seqs(sub)) >= total  # duplicates allowed, gaps not
    finally:
        sub.stop()
        outbox.close()


# -- Last Will -----------------------------------------------------------------------------

GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.outbox import Outbox
    from agent.publisher import BrokerSettings, Publisher

    async def main():
        pub = Publisher(BrokerSettings(sys.argv[1], client_id="gw-01"), Outbox(Path(sys.argv[2])),
                        will=(sys.argv[3], b'{"online":false}'),
                        birth=lambda: (sys.argv[3], b'{"online":true}'))
        task = asyncio.create_task(pub.run())
        while not pub.connected:
            await asyncio.sleep(0.01)
        print("connected", flush=True)
        await task

    asyncio.run(main())
    """
)


def test_last_will_is_published_retained_when_the_gateway_is_sigkilled(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    sub = Collector(mosquitto.url, STATUS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, mosquitto.url, str(tmp_path / "o.db"), STATUS],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        sub.wait_for(lambda ms: [m.payload for m in ms] == [ONLINE])
        child.send_signal(signal.SIGKILL)
        child.wait()
        sub.wait_for(lambda ms: [m.payload for m in ms] == [ONLINE, OFFLINE])
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()
        sub.stop()
    with Collector(mosquitto.url, STATUS) as late:
        late.wait_for(lambda ms: len(ms) == 1)
        assert late.messages[0].retain and late.messages[0].payload == OFFLINE


# test_publisher_status.py: a fresh will per connection, the ungraceful stop, "shutdown".


# -- MQTT 3.1.1 fallback -------------------------------------------------------------------


def test_embedded_broker_with_protocol_auto_falls_back_to_311(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with start_broker(prefer="embedded") as broker, Collector(broker.url, "venue/#") as sub:
        outbox = Outbox(tmp_path / "o.db")
        enqueue_moments(outbox, 10)
        outbox.enqueue(NUDGE, {"n": 1}, expiry_s=600)
        # amqtt never answers an MQTT 5 CONNECT with a will; keep the probe short.
        pub = make_publisher(broker.url, outbox, connect_timeout_s=1.0)

        async def scenario() -> None:
            task = asyncio.create_task(pub.run())
            await async_wait_for(lambda: outbox.depth() == 0, timeout=15, what="drained")
            assert pub.stats().protocol == "3.1.1"
            await pub.stop()
            await task

        with caplog.at_level(logging.INFO, logger="agent.publisher"):
            run(scenario())
        sub.wait_for(lambda ms: len(seqs(sub)) == 10 and any(m.topic == NUDGE for m in ms))
        assert seqs(sub) == list(range(1, 11))
        assert "MQTT 5 features are unavailable" in caplog.text
        # A 3.1.1 broker (NATS, amqtt) drops no stale nudge itself: the notice says where
        # the expiry still is.
        assert "valid_for_s" in caplog.text
        outbox.close()


def test_unreachable_broker_never_raises_and_stop_is_prompt(tmp_path: Path) -> None:
    from agent.broker import free_port

    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(f"mqtt://127.0.0.1:{free_port()}", outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        outbox.enqueue(MOMENT, {"i": 0}, seq_stream="guaranteed")
        pub.kick()
        await asyncio.sleep(0.5)
        assert not task.done()
        await pub.stop()
        await task

    run(scenario())
    assert outbox.depth() == 1 and pub.stats().sent == 0
    assert json.loads(outbox.pending(1)[0].payload)["seq"] == 1
    outbox.close()
