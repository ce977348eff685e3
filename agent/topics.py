"""The MQTT topic contract (v1) and the JSON envelope every payload carries.

| topic                                        | QoS / retain         |
|----------------------------------------------|----------------------|
| venue/{venue}/gateway/{gateway}/status       | 1 / retained, Will   |
| venue/{venue}/gateway/{gateway}/health       | 0                    |
| venue/{venue}/zone/{zone}/state              | 1 / retained         |
| venue/{venue}/moment/{zone}/{kind}           | 1                    |
| venue/{venue}/dispatch/{team}                | 1                    |
| venue/{venue}/nudge/{zone}                   | 1, message expiry    |
| venue/{venue}/ack/{moment_id}                | 1 / retained (staff) |
| venue/{venue}/gateway/{gateway}/moment/{kind}| 1 (data_dropped)     |
| venue/{venue}/experiment/nudges/{gateway}    | 1 / retained         |
| {prefix}/sensor/{venue}_{gateway}/{zone}_{field}/config | 1 / retained (Home Assistant discovery, optional) |

Every payload is a JSON object with ``schema``, ``id`` (sortable, unique per message),
``venue``, ``gateway`` and ``at`` (RFC 3339 UTC). Moments, dispatches and nudges form the
*guaranteed* stream and carry ``seq`` (+1 per message, per gateway, surviving restarts);
zone state carries its own ``seq`` where a skip is allowed (latest-wins).
"""

from __future__ import annotations

from typing import Any

from agent.ids import new_id
from agent.timefmt import rfc3339

SCHEMA_STATUS = "venue-agent/status@1"
SCHEMA_HEALTH = "venue-agent/health@1"
SCHEMA_ZONE_STATE = "venue-agent/zone-state@1"
SCHEMA_MOMENT = "venue-agent/moment@1"
SCHEMA_DISPATCH = "venue-agent/dispatch@1"
SCHEMA_NUDGE = "venue-agent/nudge@1"
SCHEMA_ACK = "venue-agent/ack@1"  # a staff console took a moment (who, when)
SCHEMA_EXPERIMENT = "venue-agent/experiment@1"  # the nudge experiment's summary (retained)

# Outbox sequence streams (see agent.outbox): one for the guaranteed stream, one for state.
SEQ_GUARANTEED = "guaranteed"
SEQ_STATE = "state"


ANY = "+"  # one topic level, any value (subscriptions only)


def share_ledger_topic(group: str) -> str:
    """Where the members of a central consumer group (``venue-agent tail --share GROUP``)
    publish their merged ledgers (QoS 1, not retained); on NATS the subject
    ``central.{group}.ledger``. Outside ``venue/``: a group may read many venues."""
    return f"central/{group}/ledger"


class Topics:
    """Topic names for one gateway (or, with ``gateway=ANY``, filters over a venue's)."""

    def __init__(self, venue: str, gateway: str = ANY) -> None:
        self.venue, self.gateway = venue, gateway
        self.prefix = f"venue/{venue}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway}/status"

    @property
    def health(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway}/health"

    def zone_state(self, zone: str) -> str:
        return f"{self.prefix}/zone/{zone}/state"

    def moment(self, zone: str, kind: str) -> str:
        return f"{self.prefix}/moment/{zone}/{kind}"

    def dispatch(self, team: str) -> str:
        return f"{self.prefix}/dispatch/{team}"

    def nudge(self, zone: str) -> str:
        return f"{self.prefix}/nudge/{zone}"

    def ack(self, moment_id: str) -> str:
        """A staff console's acknowledgement of one moment (retained, QoS 1): who took it."""
        if not moment_id or any(c in moment_id for c in "/+#\0"):
            raise ValueError(f"a moment_id must be one topic level, not {moment_id!r}")
        return f"{self.prefix}/ack/{moment_id}"

    @property
    def ack_filter(self) -> str:
        """Every acknowledgement of the venue: staff consoles write under it, gateways read."""
        return f"{self.prefix}/ack/#"

    @property
    def venue_filter(self) -> str:
        """Every topic of the venue."""
        return f"{self.prefix}/#"

    def gateway_moment(self, kind: str) -> str:
        """Moments about the gateway itself rather than a zone (``data_dropped``)."""
        return f"{self.prefix}/gateway/{self.gateway}/moment/{kind}"

    # Home Assistant MQTT discovery (agent/homeassistant.py): outside the venue/ tree, under
    # the prefix Home Assistant listens to, one retained config per zone sensor.
    @property
    def ha_node_id(self) -> str:
        """The discovery topic's node level: venue and gateway (ids have no ``_``)."""
        return f"{self.venue}_{self.gateway}"

    def ha_discovery(self, prefix: str, zone: str, field: str) -> str:
        """``{prefix}/sensor/{venue}_{gateway}/{zone}_{field}/config``: the retained config of
        one zone sensor; an empty retained payload there removes the sensor."""
        return f"{prefix}/sensor/{self.ha_node_id}/{zone}_{field}/config"

    def ha_discovery_filter(self, prefix: str) -> str:
        """Every discovery config this gateway may have published (its own node level)."""
        return f"{prefix}/sensor/{self.ha_node_id}/{ANY}/config"

    def experiment(self, name: str = "nudges") -> str:
        """A gateway's summary of an experiment it runs (retained; one per gateway, so
        gateways do not overwrite each other's): ``experiment/{name}/{gateway}``."""
        return f"{self.prefix}/experiment/{name}/{self.gateway}"

    @property
    def status_filter(self) -> str:
        """Every gateway's status (birth, clean stop, Last Will) of the venue."""
        return f"{self.prefix}/gateway/{ANY}/status"

    def console_filters(self, team: str | None = None) -> list[str]:
        """What a staff console subscribes to: every zone's state, every gateway's status,
        every moment and nudge, the dispatches of ``team`` (all teams when None) and every
        acknowledgement (retained, so a console that starts late sees who took what)."""
        return [self.zone_state(ANY), f"{self.prefix}/gateway/{ANY}/status",
                f"{self.prefix}/gateway/{ANY}/moment/#",
                f"{self.prefix}/moment/#", f"{self.prefix}/nudge/#",
                self.dispatch(team if team else "#"), self.ack_filter]

    def envelope(self, schema: str, at: float, **body: Any) -> dict[str, Any]:
        """A payload with the fields every message carries, then ``body``."""
        msg: dict[str, Any] = {"schema": schema, "id": new_id(), "venue": self.venue,
                               "gateway": self.gateway, "at": rfc3339(at)}
        msg.update(body)
        return msg
