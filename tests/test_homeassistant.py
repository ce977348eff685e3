"""Home Assistant MQTT discovery: the configs' keys, their templates over real zone state,
the config keys and the ACL; then on a real Mosquitto, the retained configs and their removal
when a zone leaves the config."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest

from agent import homeassistant as ha
from agent.acl import gateway_grant
from agent.config import ConfigError, parse_config
from agent.gateway import STATE_FIELDS, GatewayCore
from agent.topics import Topics
from tests.agent_process import run_until
from tests.mqtt_helpers import Collector, need_mosquitto, start_mosquitto

ROOT = Path(__file__).resolve().parents[1]

# What Home Assistant's MQTT sensor needs to build an available, grouped, numeric entity
# from discovery (its sensor.mqtt and MQTT discovery documentation).
REQUIRED = {"state_topic", "value_template", "unique_id", "device", "availability", "name"}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}


def _config(db: Path, *, zones: str = "both", discovery: bool = True,
            url: str = "mqtt://127.0.0.1:1883", prefix: str | None = None) -> str:
    text = f"""
[venue]
id = "park"
name = "Park East"
[gateway]
id = "gw-1"
tick_s = 0.2
[broker]
url = "{url}"
[storage]
path = "{db}"
[homeassistant]
discovery = {str(discovery).lower()}
"""
    if prefix is not None:
        text += f'prefix = "{prefix}"\n'
    text += """
[[zones]]
id = "dino"
kind = "queue"
name = "Dino Ride"
"""
    if zones == "both":
        text += """
[[zones]]
id = "plaza"
kind = "area"
"""
    return text


def _jinja(template: str, payload: dict[str, Any]) -> str:
    # Home Assistant renders value templates with Jinja2, value_json the decoded payload.
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        value_json=payload, value=json.dumps(payload))


def test_every_zone_sensor_has_the_keys_home_assistant_needs(tmp_path: Path) -> None:
    cfg = parse_config(_config(tmp_path / "a.db"))
    configs = ha.discovery_configs(cfg)
    t = Topics("park", "gw-1")
    assert set(configs) == {t.ha_discovery("homeassistant", z, f) for z, f in (
        ("dino", "wait_s"), ("dino", "wait_joining_s"), ("dino", "queue_length"),
        ("dino", "occupancy"), ("plaza", "occupancy"))}
    assert next(iter(configs)).startswith("homeassistant/sensor/park_gw-1/")
    for topic, c in configs.items():
        assert set(c) >= REQUIRED, (topic, REQUIRED - set(c))
        assert set(c["device"]) >= DEVICE_KEYS
        assert c["device"] == configs[next(iter(configs))]["device"]  # one device per gateway
        zone, field = topic.split("/")[-2].split("_", 1)
        assert c["state_topic"] == t.zone_state(zone)
        assert c["unique_id"] == f"venue-agent_park_gw-1_{zone}_{field}"
        assert c["state_class"] == "measurement" and c["unit_of_measurement"]
        (avail,) = c["availability"]
        assert avail["topic"] == t.status
        json.dumps(c)  # plain JSON
    wait = configs[t.ha_discovery("homeassistant", "dino", "wait_s")]
    assert wait["device_class"] == "duration" and wait["unit_of_measurement"] == "s"
    assert wait["name"] == "Dino Ride wait"
    assert "device_class" not in configs[t.ha_discovery("homeassistant", "dino", "occupancy")]
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)


def test_unique_ids_and_topics_are_stable_across_builds_and_renames(tmp_path: Path) -> None:
    a = ha.discovery_configs(parse_config(_config(tmp_path / "a.db")))
    b = ha.discovery_configs(parse_config(
        _config(tmp_path / "a.db").replace('name = "Dino Ride"', 'name = "Dino Coaster"')))
    assert list(a) == list(b)
    assert [c["unique_id"] for c in a.values()] == [c["unique_id"] for c in b.values()]


def test_value_templates_pick_the_numbers_out_of_real_zone_state(tmp_path: Path) -> None:
    cfg = parse_config(_config(tmp_path / "a.db"))
    core = GatewayCore(cfg, key=b"k" * 32)
    states = {m.payload["zone"]: m.payload for m in core.step(1000.0).messages
              if m.topic.endswith("/state")}
    # Give the fields numbers as the gateway publishes them (a fresh core has zeros and
    # nulls); the template must return exactly the payload's number.
    states["dino"].update(wait_s=1234.5, wait_joining_s=987.0, queue_length=42.0,
                          occupancy=57.0)
    states["plaza"].update(occupancy=12.0)
    fields = {name for name, _ in STATE_FIELDS}
    for c in ha.discovery_configs(cfg).values():
        field = next(f for f in fields if c["unique_id"].endswith("_" + f))
        zone = c["state_topic"].split("/")[3]
        payload = json.loads(json.dumps(states[zone]))  # as it travels
        assert float(_jinja(c["value_template"], payload)) == payload[field]
        # A null field renders "None", which Home Assistant shows as unknown.
        assert _jinja(c["value_template"], {**payload, field: None}) == "None"
        avail = c["availability"][0]
        status = core.status_payload(True, "started", 1000.0)
        assert _jinja(avail["value_template"], status) == avail["payload_available"]
        status = core.status_payload(False, "connection lost", 1000.0)
        assert _jinja(avail["value_template"], status) == avail["payload_not_available"]


def test_discovery_is_off_by_default_and_the_prefix_is_checked(tmp_path: Path) -> None:
    cfg = parse_config(_config(tmp_path / "a.db").replace("[homeassistant]\ndiscovery = true",
                                                         ""))
    assert not cfg.homeassistant.discovery and cfg.homeassistant.prefix == "homeassistant"
    assert ha.discovery_configs(cfg) == {}
    cfg = parse_config(_config(tmp_path / "a.db", prefix="ha/test"))
    assert all(t.startswith("ha/test/sensor/") for t in ha.discovery_configs(cfg))
    for bad in ("ha/#", "", "a//b", "/ha", "ha+"):
        with pytest.raises(ConfigError) as e:
            parse_config(_config(tmp_path / "a.db", prefix=bad))
        assert e.value.key == "homeassistant.prefix"
    with pytest.raises(ConfigError) as e:
        parse_config(_config(tmp_path / "a.db").replace("discovery = true", "discovery = 1"))
    assert e.value.key == "homeassistant.discovery"


def test_stale_and_own_topics(tmp_path: Path) -> None:
    cfg = parse_config(_config(tmp_path / "a.db", zones="dino"))
    current = ha.discovery_configs(cfg)
    t = Topics("park", "gw-1")
    gone = t.ha_discovery("homeassistant", "plaza", "occupancy")
    assert ha.is_discovery_topic(cfg, gone)
    assert not ha.is_discovery_topic(cfg, Topics("park", "gw-2").ha_discovery(
        "homeassistant", "plaza", "occupancy"))
    assert not ha.is_discovery_topic(cfg, t.ack("01JWJ3Q8ZQ0000000000000001"))
    assert ha.is_stale(gone, b"{}", current)
    assert not ha.is_stale(gone, b"", current)  # already cleared
    assert not ha.is_stale(next(iter(current)), b"{}", current)


def test_the_acl_grants_a_discovery_gateway_its_own_discovery_topics(tmp_path: Path) -> None:
    on = gateway_grant(parse_config(_config(tmp_path / "a.db")))
    own = "homeassistant/sensor/park_gw-1/+/config"
    assert own in on.write and own in on.read
    off = gateway_grant(parse_config(_config(tmp_path / "a.db", discovery=False)))
    assert not any(t.startswith("homeassistant") for t in off.write + off.read)


# ----------------------------------------------------------------------------- end to end
def _retained(url: str, topic_filter: str, expect: int) -> dict[str, bytes]:
    """The retained messages a fresh subscriber gets on ``topic_filter``."""
    with Collector(url, topic_filter) as c:
        c.wait_for(lambda ms: len([m for m in ms if m.retain]) >= expect, 10)
        time.sleep(0.3)  # anything retained beyond ``expect`` arrives with the rest
        return {m.topic: m.payload for m in c.messages if m.retain}


@pytest.mark.e2e
def test_retained_configs_then_a_removed_zone_is_cleared_after_restart(tmp_path: Path) -> None:
    need_mosquitto()
    from agent.runtime import Agent

    broker = start_mosquitto(tmp_path / "broker")
    try:
        db = tmp_path / "agent.db"
        first = parse_config(_config(db, url=broker.url))
        want = ha.discovery_configs(first)
        asyncio.run(run_until(Agent(first), lambda: False, 1.5))
        got = _retained(broker.url, "homeassistant/#", len(want))
        assert set(got) == set(want)
        for topic, payload in got.items():
            assert json.loads(payload) == want[topic]

        # Restart with the area zone removed: its one config is cleared, the rest stay.
        second = parse_config(_config(db, url=broker.url, zones="dino"))
        kept = ha.discovery_configs(second)
        gone = set(want) - set(kept)
        assert gone == {Topics("park", "gw-1").ha_discovery("homeassistant", "plaza",
                                                            "occupancy")}
        with Collector(broker.url, "homeassistant/#") as watch:
            def cleared() -> bool:
                return any(m.topic in gone and m.payload == b"" for m in watch.messages)

            asyncio.run(run_until(Agent(second), cleared, 15))
            assert cleared(), "the removed zone's discovery config was not cleared"
        got = _retained(broker.url, "homeassistant/#", len(kept))
        assert set(got) == set(kept)
    finally:
        broker.close()
