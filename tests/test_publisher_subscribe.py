"""The publisher's subscription hook (for staff acknowledgements), on a real Mosquitto.

``Publisher(..., subscriptions=[(filter, qos)], on_message=f)``: ``f(topic, payload)`` runs
on the asyncio loop's thread, never paho's; the subscriptions are made again on every
connection (each starts a clean session); a handler that raises does not stop delivery.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.outbox import Outbox
from agent.publisher import BrokerSettings, Publisher
from tests.mqtt_helpers import async_wait_for, need_mosquitto, run_bounded, start_mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

need_mosquitto()

STATUS = "venue/park/gateway/gw-01/status"
ACK = "venue/park/ack/m-1"


def send(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish one QoS 1 message as a staff console would, and wait for its PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="staff-console")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_on_message_runs_on_the_loop_and_survives_reconnects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = start_mosquitto(tmp_path / "broker")
    outbox = Outbox(tmp_path / "o.db")
    got: list[tuple[str, bytes, int, bool]] = []
    awaited: list[str] = []

    def on_message(topic: str, payload: bytes) -> Any:
        running = asyncio.get_running_loop() is loop  # RuntimeError off the loop
        got.append((topic, payload, threading.get_ident(), running))
        if payload == b"boom":
            raise RuntimeError("a consumer's bug")
        if payload == b"async":
            async def later() -> None:
                await asyncio.sleep(0)
                awaited.append(topic)
            return later()
        return None

    pub = Publisher(BrokerSettings(broker.url, client_id="gw-01"), outbox,
                    will=(STATUS, b"{}"), birth=lambda: (STATUS, b"{}"),
                    backoff_min_s=0.05, backoff_max_s=0.3,
                    subscriptions=[("venue/park/ack/#", 1)], on_message=on_message)
    loop: asyncio.AbstractEventLoop | None = None

    async def scenario() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        # A retained message tells when the subscription is in place.
        await asyncio.to_thread(send, broker.port, ACK, b"probe-1", True)
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: len(got) == 1, 10, "subscribed")
        await asyncio.to_thread(send, broker.port, ACK, b"boom")
        await asyncio.to_thread(send, broker.port, ACK, b"first")
        await async_wait_for(lambda: len(got) == 3, 10, "two acks received")
        # The broker restarts (forgetting everything): a new connection, a clean session,
        # subscribed again.
        await asyncio.to_thread(broker.restart)
        await asyncio.to_thread(send, broker.port, ACK, b"probe-2", True)
        await async_wait_for(lambda: pub.stats().reconnects == 1 and len(got) == 4, 15,
                             "reconnected and subscribed again")
        await asyncio.to_thread(send, broker.port, ACK, b"async")
        await asyncio.to_thread(send, broker.port, "venue/park/zone/z/state", b"not ours")
        await async_wait_for(lambda: len(got) == 5 and awaited == [ACK], 10,
                             "the ack after the reconnect")
        await pub.stop()
        await task

    try:
        main_thread = threading.get_ident()
        with caplog.at_level(logging.DEBUG, logger="agent.publisher"):
            run_bounded(scenario(), 40)
        assert [(t, p) for t, p, _, _ in got] == [
            (ACK, b"probe-1"), (ACK, b"boom"), (ACK, b"first"), (ACK, b"probe-2"),
            (ACK, b"async")]
        assert all(ident == main_thread and on_loop for _, _, ident, on_loop in got)
        assert "on_message failed" in caplog.text and "a consumer's bug" in caplog.text
    finally:
        outbox.close()
        broker.close()


def test_bad_subscriptions_are_refused_at_construction(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    settings = BrokerSettings("mqtt://127.0.0.1", client_id="gw")

    def make(subs: list[tuple[str, int]], handler: Any = print) -> Publisher:
        return Publisher(settings, outbox, will=(STATUS, b""), birth=lambda: (STATUS, b""),
                         subscriptions=subs, on_message=handler)

    for bad in (("venue/#/x", 1), ("venue/a+", 1), ("", 1), ("venue/+", 3)):
        with pytest.raises(ValueError, match="subscription"):
            make([bad])
    with pytest.raises(ValueError, match="on_message"):
        make([("venue/park/ack/#", 1)], None)
    make([("venue/+/ack/#", 1), ("#", 0)])
    outbox.close()
