"""The local broker helper: Mosquitto and the embedded amqtt fallback, as real processes."""

from __future__ import annotations

import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import BrokerError, start_broker
from tests.mqtt_helpers import Collector, wait_for


def publish_once(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def v5_connack(port: int) -> str:
    """Reason string of the broker's answer to an MQTT 5 CONNECT (or why there was none)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, reconnect_on_failure=False
    )
    result: list[str] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: result.append(str(rc))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: bool(result), 5, "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


def test_mosquitto_round_trip_and_restart_on_the_same_port(tmp_path: Path) -> None:
    with start_broker(prefer="mosquitto", workdir=tmp_path) as broker:
        assert broker.kind == "mosquitto"
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert "listener" in (tmp_path / "mosquitto.conf").read_text()
        assert v5_connack(broker.port) == "Success"
        with Collector(broker.url, "t/#") as sub:
            publish_once(broker.port, "t/1", b"hello")
            sub.wait_for(lambda ms: [m.payload for m in ms] == [b"hello"])
        port = broker.port
        broker.kill()
        assert not broker.running
        broker.restart()
        assert broker.port == port and broker.running
        with Collector(port, "t/#") as sub:
            publish_once(port, "t/2", b"again")
            sub.wait_for(lambda ms: len(ms) == 1)
    assert not broker.running
    assert tmp_path.exists()  # a caller's workdir is left alone


def test_own_workdir_is_removed_on_close() -> None:
    broker = start_broker(prefer="mosquitto")
    workdir = broker.workdir
    broker.close()
    assert not workdir.exists()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port}"):
            start_broker(prefer="mosquitto", port=port)


def test_auto_prefers_mosquitto() -> None:
    with start_broker() as broker:
        assert broker.kind == "mosquitto"


def test_embedded_broker_speaks_mqtt_311_only() -> None:
    with start_broker(prefer="embedded") as broker:
        assert broker.kind == "embedded"
        with Collector(broker.url, "t/#") as sub:
            publish_once(broker.port, "t/1", b"hi")
            sub.wait_for(lambda ms: len(ms) == 1)
        assert v5_connack(broker.port) == "Unsupported protocol version"
        with pytest.raises(BrokerError, match="persistence"):
            start_broker(prefer="embedded", persistence=True)


def test_bad_prefer_is_refused() -> None:
    with pytest.raises(ValueError, match="prefer"):
        start_broker(prefer="rabbit")  # type: ignore[arg-type]
