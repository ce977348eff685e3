"""Home Assistant MQTT discovery: the retained configs that make each zone a set of sensors.

With ``[homeassistant] discovery = true`` a gateway publishes, retained and QoS 1, one
discovery config per zone sensor to ``{prefix}/sensor/{venue}_{gateway}/{zone}_{field}/config``
(topics from :class:`agent.topics.Topics`). Home Assistant then shows, per zone:

| field            | zones  | unit   | device_class | state_class |
|------------------|--------|--------|--------------|-------------|
| ``wait_s``         | queue  | s      | duration     | measurement |
| ``wait_joining_s`` | queue  | s      | duration     | measurement |
| ``queue_length``   | queue  | people | (none)       | measurement |
| ``occupancy``      | all    | people | (none)       | measurement |

Each sensor reads the zone's retained state topic (``state_topic``) and picks its field with
``value_template: "{{ value_json.<field> }}"``; a null field renders as ``None``, which Home
Assistant shows as *unknown*. Availability comes from the gateway's retained status topic
(also its Last Will): ``{{ 'online' if value_json.online else 'offline' }}``. A gateway's
sensors are grouped in one device (identifiers ``venue-agent_{venue}_{gateway}``), and every
``unique_id`` is ``venue-agent_{venue}_{gateway}_{zone}_{field}``: stable across restarts, so
renaming a zone keeps its entities and history.

Removal: the runtime subscribes to its own discovery topics
(``{prefix}/sensor/{venue}_{gateway}/+/config``) on every connection; the broker hands back
the retained configs of earlier runs, and each one whose topic this config no longer produces
(:func:`is_stale`) is cleared with an empty retained payload, which Home Assistant reads as
"remove this entity". The broker is the record of what was published, so a wiped store or a
new SD card still clears what an earlier config left behind; other gateways' configs are under
their own node level and never touched.

Everything here is pure (config in, topics and payload bytes out); the runtime publishes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent import __version__
from agent.config import Config, ZoneConfig
from agent.topics import Topics

MANUFACTURER = "venue-agent"
MODEL = "venue-agent gateway"

# The status payload's ``online`` field as Home Assistant's availability payloads.
AVAILABLE, NOT_AVAILABLE = "online", "offline"
AVAILABILITY_TEMPLATE = "{{ 'online' if value_json.online else 'offline' }}"


@dataclass(frozen=True)
class Sensor:
    """One zone-state field as a Home Assistant sensor."""

    field: str  # the zone-state payload's key (agent.gateway.STATE_FIELDS)
    label: str  # appended to the zone's name: "Dino Ride wait"
    kinds: tuple[str, ...]  # zone kinds whose state carries the field
    unit: str
    device_class: str | None
    icon: str | None = None


SENSORS: tuple[Sensor, ...] = (
    Sensor("wait_s", "wait", ("queue",), "s", "duration", "mdi:timer-sand"),
    Sensor("wait_joining_s", "wait joining now", ("queue",), "s", "duration",
           "mdi:timer-sand"),
    Sensor("queue_length", "queue length", ("queue",), "people", None, "mdi:human-queue"),
    Sensor("occupancy", "occupancy", ("queue", "area"), "people", None, "mdi:account-group"),
)


def value_template(field: str) -> str:
    """The Jinja template that picks ``field`` out of a zone-state payload."""
    return f"{{{{ value_json.{field} }}}}"


def device(cfg: Config) -> dict[str, Any]:
    """The Home Assistant device grouping one gateway's sensors."""
    venue = cfg.venue.name or cfg.venue.id
    return {"identifiers": [f"{MANUFACTURER}_{cfg.venue.id}_{cfg.gateway.id}"],
            "name": f"{venue} {cfg.gateway.id}", "manufacturer": MANUFACTURER,
            "model": MODEL, "sw_version": __version__}


def sensor_config(cfg: Config, zone: ZoneConfig, sensor: Sensor) -> dict[str, Any]:
    """The discovery config (a JSON object) of one zone sensor."""
    t = Topics(cfg.venue.id, cfg.gateway.id)
    out: dict[str, Any] = {
        "name": f"{zone.display_name} {sensor.label}",
        "unique_id": f"{MANUFACTURER}_{cfg.venue.id}_{cfg.gateway.id}_{zone.id}_{sensor.field}",
        "state_topic": t.zone_state(zone.id),
        "value_template": value_template(sensor.field),
        "unit_of_measurement": sensor.unit,
        "state_class": "measurement",
        "availability": [{"topic": t.status, "value_template": AVAILABILITY_TEMPLATE,
                          "payload_available": AVAILABLE,
                          "payload_not_available": NOT_AVAILABLE}],
        "qos": 1,
        "device": device(cfg),
        "origin": {"name": MANUFACTURER, "sw_version": __version__},
    }
    if sensor.device_class:
        out["device_class"] = sensor.device_class
    if sensor.icon:
        out["icon"] = sensor.icon
    return out


def discovery_configs(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every discovery config of the gateway, by topic (empty when discovery is off)."""
    if not cfg.homeassistant.discovery:
        return {}
    t = Topics(cfg.venue.id, cfg.gateway.id)
    prefix = cfg.homeassistant.prefix
    return {t.ha_discovery(prefix, z.id, s.field): sensor_config(cfg, z, s)
            for z in cfg.zones for s in SENSORS if z.kind in s.kinds}


def discovery_messages(cfg: Config) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of every discovery config, to publish retained, QoS 1."""
    return [(topic, json.dumps(c, separators=(",", ":")).encode())
            for topic, c in discovery_configs(cfg).items()]


def is_discovery_topic(cfg: Config, topic: str) -> bool:
    """True for a topic under this gateway's discovery node level (what the runtime
    subscribes to), as opposed to the other messages it receives (acknowledgements)."""
    t = Topics(cfg.venue.id, cfg.gateway.id)
    head = t.ha_discovery_filter(cfg.homeassistant.prefix).split("+")[0]
    rest = topic[len(head):]
    return topic.startswith(head) and rest.endswith("/config") and rest.count("/") == 1


def is_stale(topic: str, payload: bytes, current: Mapping[str, Any]) -> bool:
    """True for a retained config (non-empty) on one of this gateway's discovery topics that
    the config no longer produces (``current``: :func:`discovery_configs`): clear it with an
    empty retained payload. Empty payloads (already cleared) are never stale."""
    return bool(payload) and topic not in current
