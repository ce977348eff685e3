"""Test helpers for MQTT: a collecting subscriber and polling waits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import LocalBroker, free_port


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the subscriber saw it; ``received`` is the wall time of arrival."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received: float
    expiry_s: int | None = None  # MQTT 5 Message Expiry Interval, when the session is v5

    def json(self) -> Any:
        return json.loads(self.payload)


def poll_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true (True) or until ``timeout`` s have passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    if not poll_until(predicate, timeout):
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


async def async_wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> None:
    """``wait_for`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class Collector:
    """A paho subscriber (QoS 1) that records every message it receives.

    ``broker`` is a URL (``mqtt://127.0.0.1:PORT``) or a port on 127.0.0.1.
    ``persistent=True`` uses a non-clean MQTT 3.1.1 session with a fixed ``client_id``, so
    a broker with persistence queues messages for it while it is disconnected. It
    reconnects by itself (paho's loop thread) and re-subscribes on every connect.
    ``protocol="5"`` subscribes with MQTT 5 to see message expiry.
    """

    def __init__(
        self,
        broker: str | int,
        topic: str = "#",
        *,
        client_id: str = "",
        persistent: bool = False,
        protocol: str = "3.1.1",
    ) -> None:
        if isinstance(broker, int):
            host, port = "127.0.0.1", broker
        else:
            parts = urlsplit(broker)
            host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.stop()
            raise AssertionError(f"subscriber could not subscribe to {topic!r} on {broker}")

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        rec = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time(), expiry)
        with self._lock:
            self._messages.append(rec)

    @property
    def messages(self) -> list[Received]:
        """A snapshot of everything received so far, in arrival order."""
        with self._lock:
            return list(self._messages)

    def on(self, topic: str) -> list[Received]:
        """Messages received on exactly ``topic``."""
        return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Wait until ``predicate(messages)`` holds; return the messages then."""
        wait_for(lambda: predicate(self.messages), timeout, f"messages on {self.topic!r}")
        return self.messages

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mosquitto(
    workdir: Path,
    *,
    acl: str | None = None,
    extra_conf: Sequence[str] = (),
    persistence: bool = False,
) -> LocalBroker:
    """A Mosquitto like ``agent.broker.start_broker(prefer="mosquitto")``, with more config.

    ``acl`` is the text of an ACL file (for anonymous clients: ``topic readwrite venue/#``,
    ``topic deny venue/x/#``); an MQTT 5 client publishing to a denied topic gets a PUBACK
    with reason 0x87 (not authorized). ``extra_conf`` lines are appended to mosquitto.conf
    (e.g. ``max_packet_size 2000``).
    """
    lines = list(extra_conf)
    if acl is not None:
        acl_path = workdir / "acl"
        workdir.mkdir(parents=True, exist_ok=True)
        acl_path.write_text(acl.strip() + "\n")
        lines.append(f"acl_file {acl_path}")

    class _Configured(LocalBroker):
        def _command(self) -> list[str]:
            cmd = super()._command()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(conf.read_text() + "".join(f"{line}\n" for line in lines))
            return cmd

    workdir.mkdir(parents=True, exist_ok=True)
    broker = _Configured("mosquitto", free_port(), workdir, persistence=persistence,
                         own_dir=False)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return broker


def need_mosquitto() -> None:
    """Fail the calling test module when Mosquitto is missing: `make test` installs it, so a
    skip would hide a missing part."""
    import pytest

    from agent.broker import find_mosquitto

    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (make test installs it)", pytrace=False)


def run_bounded(coro: Coroutine[Any, Any, None], timeout: float) -> None:
    """``asyncio.run`` a test scenario, failing it after ``timeout`` s."""
    asyncio.run(asyncio.wait_for(coro, timeout))
