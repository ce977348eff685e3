"""Staff acknowledgements and escalation through a real Mosquitto.

The gateway runs in-process with a reader that is down (so a ``reader_down`` alert opens),
nobody takes the alert, and it is escalated to the zone's escalation team; then a staff
acknowledgement is published (retained, as `venue-agent watch` publishes it), the gateway
records who took it, and a restarted gateway still knows.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse_config
from agent.topics import SCHEMA_ACK, Topics
from tests.agent_process import run_until
from tests.mqtt_helpers import Collector

pytestmark = pytest.mark.e2e


def _config(tmp: Path, url: str) -> str:
    return f"""
[venue]
id = "park"
[gateway]
id = "gw-1"
tick_s = 0.2
[broker]
url = "{url}"
[storage]
path = "{tmp / 'agent.db'}"
checkpoint_interval_s = 0.5
[moments]
reader_down_after_s = 1
[[readers]]
id = "r1"
protocol = "em4100"
port = "socket://127.0.0.1:9"
zone = "z"
role = "entry"
[[zones]]
id = "z"
kind = "queue"
escalate_after_s = 3
escalation_team = "leads"
"""


def _ack(url: str, moment_id: str, by: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = Topics("park", "console")
    info = c.publish(t.ack(moment_id), json.dumps(t.envelope(
        SCHEMA_ACK, time.time(), moment_id=moment_id, by=by)), qos=1, retain=True)
    info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_an_untaken_alert_escalates_and_a_taken_one_is_remembered(tmp_path: Path) -> None:
    from agent.broker import start_broker
    from agent.runtime import Agent

    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker:
        cfg = parse_config(_config(tmp_path, broker.url))
        seen = Collector(broker.url, "venue/park/#")

        def payloads(suffix: str) -> list[dict[str, Any]]:
            return [json.loads(m.payload) for m in seen.messages if m.topic.endswith(suffix)]

        agent = Agent(cfg)
        asyncio.run(run_until(agent, lambda: payloads("/dispatch/leads"), 60))
        escalated = payloads("/dispatch/leads")
        assert escalated and escalated[0]["escalated"] is True
        moment_id = escalated[0]["moment_id"]
        opened = [p for p in payloads("/moment/z/reader_down") if p["status"] == "opened"]
        assert opened[0]["moment_id"] == moment_id

        _ack(broker.url, moment_id, "ana")
        agent = Agent(cfg)  # a restarted gateway: the checkpoint and the retained ack
        asyncio.run(run_until(agent, lambda: moment_id in agent.core.acks, 30))
        assert agent.core.acks[moment_id]["by"] == "ana"
        assert len(payloads("/dispatch/leads")) == 1  # escalated once, not again
        seen.stop()
