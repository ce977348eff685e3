"""The MQTT topic contract as documents a central team builds against, from one source.

This module holds every payload's JSON Schema (draft 2020-12) as Python dicts and builds
the AsyncAPI 3 document (servers, channels with parameters, messages, operations with their
MQTT bindings) around them. Topic strings and schema names are not repeated here: they come
from :mod:`agent.topics`; the zone-state metric fields come from ``agent.gateway``'s
``STATE_FIELDS`` and ``MOMENT_CONTEXT``, and ids follow ``agent.config.ID_RE``.

``venue-agent contract --out docs`` (or ``make contract``) writes ``docs/asyncapi.yaml`` and
``docs/schemas/<kind>.v<major>.json``; ``tests/test_contract.py`` regenerates them and
compares, so the committed documents cannot drift from the code. A change here is a change
of the contract: new optional fields are fine within a major version; a renamed or retyped
field is a new major ``schema`` version (see docs/mqtt.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import ID_RE, BrokerConfig
from agent.gateway import MOMENT_CONTEXT, STATE_FIELDS
from agent.ids import CROCKFORD32
from agent.moments import KINDS, READER_DOWN
from agent.nudges import WITHDRAW_REASONS
from agent.topics import (
    SCHEMA_ACK,
    SCHEMA_DISPATCH,
    SCHEMA_EXPERIMENT,
    SCHEMA_HEALTH,
    SCHEMA_MOMENT,
    SCHEMA_NUDGE,
    SCHEMA_STATUS,
    SCHEMA_ZONE_STATE,
    Topics,
)
from kernels.backends import BACKENDS

__all__ = [
    "ASYNCAPI_FILE",
    "CHANNELS",
    "JSON_SCHEMA_DIALECT",
    "Channel",
    "asyncapi",
    "channel_for_topic",
    "check_files",
    "examples",
    "render_files",
    "schema_file",
    "schemas",
    "to_yaml",
    "write_files",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE = "asyncapi.yaml"
SCHEMAS_DIR = "schemas"
# How the AsyncAPI document names the format of the payload schemas it references.
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
CONTRACT_VERSION = "1.0.0"  # the topic contract's version (the major is the schemas' @1)

# Moment kinds the gateway's rules raise; each has the full moment body.
RULE_KINDS = KINDS
MOMENT_STATUSES = ("opened", "updated", "resolved")
DISPATCH_STATUSES = ("opened", "resolved")
PRIORITIES = ("high", "medium", "info")
STATUS_REASONS = ("started", "shutdown", "connection lost")
WAIT_METHODS = ("none", "measured", "littles_law", "at_least")
QUEUE_LENGTH_METHODS = ("none", "as_read", "read_rate_corrected", "warming_up")
UNITS = ("s", "%", "messages")


# ----------------------------------------------------------------------------- channels
@dataclass(frozen=True)
class Channel:
    """One topic of the contract: its address (with ``{parameters}``), payload schema and
    how it is published."""

    key: str  # the AsyncAPI channel id
    address: str
    schema: str  # a SCHEMA_* name from agent.topics
    qos: int
    retain: bool
    title: str
    summary: str
    expiry: bool = False  # sent with MQTT 5 message expiry (broker.nudge_expiry_s)
    action: str = "send"  # what a gateway does on it: send, or receive (acknowledgements)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.address))

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{\w+\})", self.address)
        rx = "".join(f"(?P<{p[1:-1]}>[^/#+]+)" if p.startswith("{") else re.escape(p)
                     for p in parts)
        return re.compile(f"^{rx}$")

    def match(self, topic: str) -> dict[str, str] | None:
        """The topic's parameter values if ``topic`` is on this channel, else None."""
        m = self.pattern.match(topic)
        return m.groupdict() if m else None


_T = Topics("{venue}", "{gateway}")
CHANNELS: tuple[Channel, ...] = (
    Channel("status", _T.status, SCHEMA_STATUS, 1, True, "Gateway status",
            "Birth message on every connection, retained; the same topic carries the Last "
            "Will (online false, reason 'connection lost') and the clean stop's message."),
    Channel("health", _T.health, SCHEMA_HEALTH, 0, False, "Gateway health",
            "Reader rates, bad frames, outbox, publisher, CPU and memory, every "
            "gateway.health_interval_s; not stored while offline."),
    Channel("zoneState", _T.zone_state("{zone}"), SCHEMA_ZONE_STATE, 1, True, "Zone state",
            "A zone's metrics every tick, retained and latest-wins."),
    Channel("moment", _T.moment("{zone}", "{kind}"), SCHEMA_MOMENT, 1, False,
            "Crowding moment", "A moment's lifecycle: opened, updated, resolved."),
    Channel("gatewayMoment", _T.gateway_moment("{kind}"), SCHEMA_MOMENT, 1, False,
            "Gateway moment", "A moment about the gateway itself: data_dropped (messages the "
            "outbox dropped at its disk cap or that the broker refused, with counts, seq and "
            "time ranges)."),
    Channel("dispatch", _T.dispatch("{team}"), SCHEMA_DISPATCH, 1, False, "Staff dispatch",
            "A staff alert derived from a moment, with a recommended action."),
    Channel("nudge", _T.nudge("{zone}"), SCHEMA_NUDGE, 1, False, "Guest nudge",
            "A guest-facing offer while a wait_short moment is open; expires.", expiry=True),
    Channel("ack", _T.ack("{moment_id}"), SCHEMA_ACK, 1, True, "Staff acknowledgement",
            "A staff console took a moment (venue-agent watch writes it, retained); the "
            "gateway that owns the moment records who took it and stops escalating it.",
            action="receive"),
    Channel("experiment", _T.experiment("nudges"), SCHEMA_EXPERIMENT, 1, True,
            "Nudge experiment", "The gateway's venue-wide nudge experiment so far: measured "
            "opportunities per arm, the uplift of arrivals at the alternative with its 95 % "
            "interval; retained, replaced when an opportunity is measured."),
)


def channel_for_topic(topic: str) -> tuple[Channel, dict[str, str]]:
    """The channel ``topic`` is on, with its parameter values. Raises KeyError."""
    for ch in CHANNELS:
        params = ch.match(topic)
        if params is not None:
            return ch, params
    raise KeyError(f"{topic!r} is on no channel of the contract")


def schema_file(schema: str) -> str:
    """``venue-agent/zone-state@1`` -> ``zone-state.v1.json``."""
    m = re.fullmatch(r"venue-agent/([a-z-]+)@(\d+)", schema)
    if not m:
        raise ValueError(f"not a venue-agent schema name: {schema!r}")
    return f"{m.group(1)}.v{m.group(2)}.json"


# ----------------------------------------------------------------------------- schema parts
def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` or null."""
    out = dict(schema)
    t = out.get("type")
    if t is not None:
        out["type"] = [t, "null"] if isinstance(t, str) else [*t, "null"]
    elif "$ref" in out:
        return {"anyOf": [out, {"type": "null"}]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _d(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, **schema}


_REF_ID = {"$ref": "#/$defs/id"}
_REF_TIME = {"$ref": "#/$defs/timestamp"}
_REF_ULID = {"$ref": "#/$defs/ulid"}
_COUNT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number"}
_NONNEG = {"type": "number", "minimum": 0}

_DEFS: dict[str, Any] = {
    "id": {"description": "An id from the gateway config: 1..64 of [a-z0-9-], so never an "
                          "MQTT wildcard.", "type": "string", "pattern": ID_RE.pattern},
    "ulid": {"description": "A ULID: 26 characters of Crockford base32 that sort by "
                            "creation time.", "type": "string",
             "pattern": f"^[{CROCKFORD32}]{{26}}$"},
    "timestamp": {"description": "RFC 3339, UTC, with milliseconds.", "type": "string",
                  "format": "date-time",
                  "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"},
}


def _envelope(schema: str) -> tuple[dict[str, Any], list[str]]:
    props = {
        "schema": _d("The payload's schema; a consumer checks the major version after '@'.",
                     {"type": "string", "const": schema}),
        "id": _d("Unique per message, sorts by creation time: dedupe on it (delivery is at "
                 "least once).", _REF_ULID),
        "venue": _d("The venue's id (gateway config venue.id).", _REF_ID),
        "gateway": _d("The publishing gateway's id (gateway config gateway.id).", _REF_ID),
        "at": _d("When the gateway produced the message (for a message sent from backlog, "
                 "still the original time).", _REF_TIME),
    }
    return props, ["schema", "id", "venue", "gateway", "at"]


_SEQ_GUARANTEED = _d(
    "+1 per message of the guaranteed stream (moments, dispatches, nudges) per gateway, never "
    "reused, survives restarts and power cuts: a skip means a lost message.",
    {"type": "integer", "minimum": 1})
_SEQ_STATE = _d("The zone-state stream's own counter per gateway; skips are allowed "
                "(latest-wins).", {"type": "integer", "minimum": 1})
_REPLAYED = _d("Present (true) on a message sent from the backlog after an outage; its 'at' "
               "is the original.", {"type": "boolean", "const": True})


def _object(schema: str, title: str, description: str, props: Mapping[str, Any],
            required: list[str], *, stored: bool = False, guaranteed: bool = False,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    env, env_req = _envelope(schema)
    all_props = {**env}
    req = list(env_req)
    if stored:
        all_props["seq"] = _SEQ_GUARANTEED if guaranteed else _SEQ_STATE
        all_props["replayed"] = _REPLAYED
        req.append("seq")
    all_props.update(props)
    req.extend(required)
    out: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:venue-agent:schema:{schema_file(schema)[:-len('.json')]}",
        "title": schema,
        "description": f"{title}. {description} Fields not listed here may be added within "
                       "this major version: ignore the ones you do not know.",
        "type": "object",
        "required": req,
        "properties": all_props,
    }
    if extra:
        out.update(extra)
    used = json.dumps(out)
    out["$defs"] = {k: v for k, v in _DEFS.items() if f'"#/$defs/{k}"' in used}
    return out


# ----------------------------------------------------------------------------- the schemas
_STATE_DOCS = {
    "queue_length": "People in line (queue zones; null for areas and while unknown): guests "
                    "read at the entry since the FIFO frontier, times queue_length_factor.",
    "occupancy": "People read in the zone.",
    "wait_s": "The wait of the guests boarding now, in seconds (history: they joined a wait "
              "ago); see wait_method.",
    "wait_joining_s": "The posted wait: what a guest joining the line now will wait, in "
                      "seconds; null while the ride is stalled.",
    "wait_forecast_s": "The wait of the guest who will board a horizon from now (default 15 "
                       "min), in seconds; null during the first rate window after start-up.",
    "dwell_p50_s": "Median dwell of completed visits in the window, in seconds.",
    "dwell_p90_s": "90th percentile dwell of completed visits in the window, in seconds.",
    "arrivals_per_min": "Arrivals per minute over the rate window.",
    "throughput_per_min": "Departures (exits) per minute over the rate window.",
}


def _metric_docs(names: tuple[str, ...]) -> dict[str, Any]:
    missing = [n for n in names if n not in _STATE_DOCS]
    if missing:
        raise KeyError(f"agent/contract.py: describe the new metric(s) {missing} in _STATE_DOCS "
                       "(and docs/mqtt.md), then run `make contract`")
    return {n: _d(_STATE_DOCS[n] + " Null when it cannot be estimated yet.",
                  _nullable(_NONNEG)) for n in names}


def _zone_state() -> dict[str, Any]:
    fields = tuple(name for name, _nd in STATE_FIELDS)
    props: dict[str, Any] = {
        "zone": _d("The zone's id.", _REF_ID),
        "kind": _d("queue: a line with entry and exit readers; area: a walk-in area.",
                   {"type": "string", "enum": ["queue", "area"]}),
        "zone_name": _d("The zone's display name (config zones.name, else its id).",
                        {"type": "string", "minLength": 1}),
        "capacity": _d("People the zone holds (config zones.capacity); null if unknown.",
                       _nullable({"type": "integer", "minimum": 1})),
        **_metric_docs(fields),
        "wait_method": _d("How wait_s was made: measured (median of recent entry->exit "
                          "waits), littles_law (queue length / throughput), at_least (a "
                          "lower bound: the line was there before the gateway started, and "
                          "the guests boarding now waited at least since then), none.",
                          _nullable({"type": "string", "enum": list(WAIT_METHODS)})),
        "queue_length_method": _d(
            "Queue zones: how queue_length was made: as_read until enough guests were read at "
            "both ends to estimate the entry reader's read rate, then read_rate_corrected; "
            "warming_up (a lower bound, and so is wait_joining_s) while the line that was "
            "there before the gateway started is boarding: its guests were never read at the "
            "entry and are not counted until guests who entered since board.",
            _nullable({"type": "string", "enum": list(QUEUE_LENGTH_METHODS)})),
        "queue_length_factor": _d(
            "Queue zones: the read-rate correction applied to queue_length (>= 1; 1: none).",
            _nullable({"type": "number", "minimum": 1})),
        "readers_online": _d("The zone's readers that are online.", _COUNT),
    }
    queue_only = ["queue_length_method", "queue_length_factor"]
    return _object(SCHEMA_ZONE_STATE, "Zone state",
                   "A zone's metrics, published every tick, retained: a consumer that "
                   "connects later gets the latest at once.",
                   props, ["zone", "kind", "capacity", *fields, "wait_method",
                           "readers_online"],
                   stored=True, extra={
                       "if": {"properties": {"kind": {"const": "queue"}}},
                       "then": {"required": queue_only},
                       "else": {"properties": {"queue_length": {"type": "null"}}}})


def _metrics() -> dict[str, Any]:
    return _d("The zone's numbers when the message was made (null: not estimated yet).",
              {"type": "object", "required": list(MOMENT_CONTEXT),
               "properties": _metric_docs(MOMENT_CONTEXT)})


def _moment() -> dict[str, Any]:
    props: dict[str, Any] = {
        "moment_id": _d("Stable over one moment's life (opened, updated, resolved).",
                        _REF_ULID),
        "kind": _d("What the moment is about: " + ", ".join(RULE_KINDS) + " (new kinds may "
                   "be added within this major version).",
                   {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}),
        "zone": _d("The zone's id.", _REF_ID),
        "zone_name": _d("The zone's display name (config zones.name, else its id).",
                        {"type": "string", "minLength": 1}),
        "status": _d("opened, then updated any number of times, then resolved.",
                     {"type": "string", "enum": list(MOMENT_STATUSES)}),
        "opened_at": _d("When this moment opened.", _REF_TIME),
        "value": _d("The watched value now, in unit.", _NUM),
        "unit": _d("s: seconds; %: percent of capacity; messages: a count (data_dropped).",
                   {"type": "string", "enum": list(UNITS)}),
        "open_level": _d("The value at which the moment opens.", _NUM),
        "clear_level": _d("The value at which it resolves (the hysteresis band's other end).",
                          _NUM),
        "metrics": _metrics(),
        "reader": _d("reader_down: the reader's id.", _REF_ID),
        "taken_by": _d("Who acknowledged the moment on a staff console (venue/{venue}/ack/"
                       "{moment_id}); present once taken.", {"type": "string"}),
        "taken_at": _d("When it was taken.", _REF_TIME),
        "error": _d("reader_down: the reader link's last error, if any.",
                    _nullable({"type": "string"})),
        "dropped": _d("data_dropped: what went, per stream and reason, with the seq and time "
                      "ranges it spanned (seq gaps a consumer sees are explained here).",
                      {"type": "array", "items": {"type": "object", "required": [
                          "stream", "reason", "count"], "properties": {
                          "stream": {"type": "string"},
                          "reason": {"type": "string", "enum": [
                              "storage_full", "too_large", "no_space", "dead_letter"]},
                          "count": {"type": "integer", "minimum": 1},
                          "first_seq": _nullable({"type": "integer"}),
                          "last_seq": _nullable({"type": "integer"}),
                          "first_at": _nullable(_REF_TIME),
                          "last_at": _nullable(_REF_TIME)}}}),
    }
    rule_required = ["moment_id", "zone", "zone_name", "status", "opened_at", "value", "unit",
                     "open_level", "clear_level", "metrics"]
    return _object(SCHEMA_MOMENT, "Crowding moment",
                   "One step of a moment's lifecycle. Part of the guaranteed stream: QoS 1, "
                   "seq per gateway.", props, ["kind"], stored=True, guaranteed=True,
                   extra={"allOf": [
                       {"if": {"properties": {"kind": {"enum": list(RULE_KINDS)}}},
                        "then": {"required": rule_required}},
                       {"if": {"properties": {"kind": {"const": READER_DOWN}}},
                        "then": {"required": ["reader", "error"]}}]})


def _dispatch() -> dict[str, Any]:
    props: dict[str, Any] = {
        "moment_id": _d("The moment this alert is about.", _REF_ULID),
        "kind": _d("The moment's kind: queue_long, queue_rising, zone_crowded, reader_down.",
                   {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}),
        "zone": _d("The zone's id.", _REF_ID),
        "zone_name": _d("The zone's display name.", {"type": "string", "minLength": 1}),
        "team": _d("The team alerted: the zone's team, or moments.reader_team for "
                   "reader_down.", _REF_ID),
        "status": _d("opened: act; resolved: stand down.",
                     {"type": "string", "enum": list(DISPATCH_STATUSES)}),
        "priority": _d("high, medium, or info (a stand-down).",
                       {"type": "string", "enum": list(PRIORITIES)}),
        "action": _d("A sentence to show staff.", {"type": "string", "minLength": 1}),
        "metrics": _metrics(),
        "reader": _d("reader_down: the reader's id; null for other kinds.",
                     _nullable(_REF_ID)),
        "escalated": _d("true: nobody acknowledged the alert within the zone's "
                        "escalate_after_s, so it goes again to its escalation_team.",
                        {"type": "boolean"}),
    }
    return _object(SCHEMA_DISPATCH, "Staff dispatch",
                   "A staff alert derived from a moment. Part of the guaranteed stream.",
                   props, ["moment_id", "kind", "zone", "zone_name", "team", "status",
                           "priority", "action", "metrics", "reader"],
                   stored=True, guaranteed=True)


def _nudge() -> dict[str, Any]:
    props: dict[str, Any] = {
        "moment_id": _d("The wait_short moment this offer comes from.", _REF_ULID),
        "zone": _d("The zone's id.", _REF_ID),
        "zone_name": _d("The zone's display name.", {"type": "string", "minLength": 1}),
        "wait_s": _d("The wait of a guest joining now (the zone's wait_joining_s), seconds.",
                     _NONNEG),
        "message": _d("The offer as a sentence for guests.", {"type": "string",
                                                              "minLength": 1}),
        "valid_for_s": _d("Seconds the offer stays valid after 'at' (also the MQTT 5 message "
                          "expiry; on MQTT 3.1.1 only here).", {"type": "integer",
                                                               "minimum": 1}),
    }
    required = list(props)
    props.update({
        "kind": _d("alternative: a venue-wide nudge from this (long) line to another zone; "
                   "absent: a wait_short offer of this zone itself.",
                   {"type": "string", "enum": ["alternative"]}),
        "status": _d("alternative nudges: active (show it) or withdrawn (stop showing the "
                     "offer with this moment_id at once).",
                     {"type": "string", "enum": ["active", "withdrawn"]}),
        "reason": _d("withdrawn: why (" + ", ".join(WITHDRAW_REASONS) + ").",
                     {"type": "string", "enum": list(WITHDRAW_REASONS)}),
        "alternative": _d(
            "alternative nudges: where to go instead. wait_s is the wait projected for a guest "
            "who arrives after the walk (from the alternative's forecast).",
            {"type": "object", "required": ["zone", "zone_name", "gateway", "wait_s", "walk_s"],
             "properties": {"zone": _REF_ID, "zone_name": {"type": "string", "minLength": 1},
                            "gateway": _REF_ID, "wait_s": _NONNEG,
                            "walk_s": {"type": "number", "exclusiveMinimum": 0}}}),
    })
    return _object(SCHEMA_NUDGE, "Guest nudge",
                   "A guest-facing offer: while a wait_short moment is open, or (kind "
                   "alternative) a venue-wide offer of a shorter line elsewhere, withdrawn by a "
                   "status withdrawn message when its reason ends. Part of the guaranteed "
                   "stream; never deliver it after valid_for_s. The opportunity's moment_id "
                   "is a new ULID per experiment window.",
                   props, required, stored=True, guaranteed=True,
                   extra={"if": {"required": ["kind"]},
                          "then": {"required": ["status", "alternative"]}})


def _experiment() -> dict[str, Any]:
    arrivals = _nullable(_NUM)
    est: dict[str, Any] = {
        "opportunities": _d("Measured opportunities (both arms).", _COUNT),
        "sent": _d("Measured opportunities whose nudge was sent.", _COUNT),
        "held_out": _d("Measured opportunities held out (no nudge).", _COUNT),
        "sent_mean": _d("Mean arrivals at the alternative per sent window (guests).",
                        arrivals),
        "held_out_mean": _d("Mean arrivals per held-out window (guests).", arrivals),
        "uplift_arrivals": _d("Extra arrivals at the alternative per opportunity due to the "
                              "nudge (covariate-adjusted difference of the arms' means); null "
                              "before two measured opportunities in each arm.", arrivals),
        "ci_low": _d("Lower end of the 95 % interval of uplift_arrivals.", arrivals),
        "ci_high": _d("Upper end of the 95 % interval of uplift_arrivals.", arrivals),
        "uplift_pct": _d("uplift_arrivals relative to held_out_mean, percent.", arrivals),
        "adjusted": _d("The covariate adjustment (arrivals before each opportunity) was "
                       "applied.", {"type": "boolean"}),
        "rough": _d("An arm has fewer than 10 measured opportunities: the interval is rough.",
                    {"type": "boolean"}),
    }
    props: dict[str, Any] = {
        "experiment": _d("Which experiment: nudges.", {"type": "string", "const": "nudges"}),
        "holdout": _d("moments.nudge_holdout: the share of opportunities held out.",
                      {"type": "number", "minimum": 0, "maximum": 1}),
        "window_s": _d("One opportunity's window (s): the arrivals measured from one walk "
                       "after it began, for this long.", {"type": "number", "minimum": 0}),
        "since": _d("When the first measured opportunity began; null before any.",
                    _nullable(_REF_TIME)),
        **est,
        "by_alternative": _d("The same per (zone, alternative) pair.", {
            "type": "array", "items": {"type": "object",
                                       "required": ["zone", "alternative", *est],
                                       "properties": {"zone": _REF_ID,
                                                      "alternative": _REF_ID, **est}}}),
    }
    return _object(SCHEMA_EXPERIMENT, "Nudge experiment",
                   "One gateway's venue-wide nudge experiment so far (see docs/staff.md), "
                   "retained; replaced whenever an opportunity is measured.", props,
                   list(props), stored=True)


def _status() -> dict[str, Any]:
    props: dict[str, Any] = {
        "online": _d("true: the birth message; false: a clean stop or the Last Will.",
                     {"type": "boolean"}),
        "reason": _d("started, shutdown (clean stop) or 'connection lost' (the Last Will).",
                     {"type": "string", "enum": list(STATUS_REASONS)}),
        "version": _d("The venue-agent version.", {"type": "string", "minLength": 1}),
        "started_at": _d("When this gateway process started.", _REF_TIME),
        "readers": _d("The configured readers' ids.", {"type": "array", "items": _REF_ID}),
        "zones": _d("The configured zones' ids.", {"type": "array", "items": _REF_ID}),
    }
    return _object(SCHEMA_STATUS, "Gateway status",
                   "Birth and death of a gateway's connection, retained; also its Last Will.",
                   props, list(props))


def _health() -> dict[str, Any]:
    reader = {"type": "object",
              "required": ["online", "reads", "reads_per_s", "bad_frames", "last_read_at",
                           "error"],
              "properties": {
                  "online": _d("The reader's link is up.", {"type": "boolean"}),
                  "reads": _d("Reads accepted since start.", _COUNT),
                  "reads_per_s": _d("Reads per second since the previous health message.",
                                    _NONNEG),
                  "bad_frames": _d("Frames the decoder rejected since start.", _COUNT),
                  "degraded": _d("The decoder keeps failing on this link's bytes (see the "
                                 "log).", {"type": "boolean"}),
                  "last_read_at": _d("The latest read; null before the first.",
                                     _nullable(_REF_TIME)),
                  "error": _d("The link's last error; null while online.",
                              _nullable({"type": "string"})),
              }}
    counter = _COUNT
    publisher = {
        "type": "object",
        "properties": {
            "connected": _d("Connected to the broker now.", {"type": "boolean"}),
            "protocol": _d("MQTT version of the current or last connection.",
                           _nullable({"type": "string", "enum": ["5", "3.1.1"]})),
            "sent": _d("Stored messages handed to the network (re-sends included).", counter),
            "acked": _d("Stored messages the broker acknowledged (then deleted).", counter),
            "rejected": _d("PUBACKs with a transient failure (kept, retried).", counter),
            "expired": _d("Messages dropped unsent because their expiry passed.", counter),
            "reconnects": _d("Connections after the first.", counter),
            "inflight": _d("Messages awaiting PUBACK.", counter),
            "outbox_depth": _d("Messages waiting in the outbox.", counter),
            "volatile_sent": _d("Health messages sent.", counter),
            "volatile_dropped": _d("Health messages dropped while offline.", counter),
            "oldest_age_s": _d("Age of the oldest message waiting in the outbox (how far "
                               "behind the broker sees the gateway); null when none waits.",
                               _nullable(_NONNEG)),
            "replaying": _d("The current connection still has backlog to send (hold a seq "
                            "gap verdict while it does).", {"type": "boolean"}),
            "replayed": _d("Backlog messages sent with replayed: true.", counter),
            "dead_lettered": _d("Messages refused by the client or broker and moved to the "
                                "dead letters, this run.", counter),
            "dead_letters": _d("Messages in the dead letters, kept for inspection.", counter),
            "dropped": _d("Messages the outbox dropped at its size cap, this run.", counter),
            "refused": _d("Messages the outbox refused (too large, no space), this run.",
                          counter),
            "restarts": _d("Times the publisher recovered from an internal failure.",
                           counter),
        },
    }
    props: dict[str, Any] = {
        "uptime_s": _d("Seconds since the gateway started.", _NONNEG),
        "readers": _d("Per reader id.", {"type": "object", "propertyNames": _REF_ID,
                                          "additionalProperties": reader}),
        "outbox_depth": _d("Messages stored and not yet acknowledged by the broker.", _COUNT),
        "publisher": _d("The MQTT publisher's connection and counters.", publisher),
        "outbox": _d("The store behind delivery: depth, age of the oldest waiting message, "
                     "dead letters, messages dropped at the disk cap or refused, size and cap "
                     "(bytes).", {"type": "object", "properties": {
                         "depth": _COUNT, "oldest_age_s": _nullable(_NONNEG),
                         "dead_letters": _COUNT, "dropped": _COUNT, "refused": _COUNT,
                         "size_bytes": _COUNT, "max_bytes": _nullable(_COUNT)}}),
        "cpu_pct": _d("CPU used by the agent since the previous health message (100: one "
                      "core).", _NONNEG),
        "rss_mb": _d("Resident memory, MB.", _NONNEG),
        "tick_ms": _d("Duration of the latest tick, ms.", _NONNEG),
        "tick_ms_max": _d("Longest tick since start, ms.", _NONNEG),
        "live_tags": _d("Pseudonymous tags the engine tracks now.", _COUNT),
        "kernels": _d("The compiled kernels the engine runs: aot (compiled ahead of time by "
                      "`venue-agent build-kernels`: starts faster, in about 100 MB less) or "
                      "jit (numba: no module built for this code and machine; run "
                      "build-kernels).", {"type": "string", "enum": list(BACKENDS)}),
        "dropped_unknown_reads": _d("Reads from readers not in the config, since start.",
                                    _COUNT),
        "probe": _d("Present (true) only on the probe `venue-agent doctor` publishes to check "
                    "that the broker lets the gateway write here: not the gateway's health "
                    "(every figure zero, no readers); ignore it.",
                    {"type": "boolean", "const": True}),
    }
    return _object(SCHEMA_HEALTH, "Gateway health",
                   "QoS 0, every gateway.health_interval_s, only while connected.",
                   props, ["uptime_s", "readers", "outbox_depth", "publisher", "cpu_pct",
                           "rss_mb", "tick_ms", "tick_ms_max", "live_tags"])


def _ack() -> dict[str, Any]:
    props: dict[str, Any] = {
        "moment_id": _d("The moment taken (also the topic's last level).", _REF_ULID),
        "by": _d("Who took it: the staff member's name on the console.",
                 {"type": "string", "minLength": 1}),
        "gateway": _d("The gateway that owns the moment, when the console knows it.", _REF_ID),
        "zone": _d("The moment's zone, when the console knows it.", _REF_ID),
        "kind": _d("The moment's kind, when the console knows it.",
                   {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}),
    }
    out = _object(SCHEMA_ACK, "Staff acknowledgement",
                  "Written by a staff console (not a gateway), retained, so a console or "
                  "gateway that starts later still sees who took what.", props,
                  ["moment_id", "by"])
    out["required"] = [r for r in out["required"] if r != "gateway"]  # a console's message
    return out


_BUILDERS = {SCHEMA_STATUS: _status, SCHEMA_HEALTH: _health, SCHEMA_ZONE_STATE: _zone_state,
             SCHEMA_MOMENT: _moment, SCHEMA_DISPATCH: _dispatch, SCHEMA_NUDGE: _nudge,
             SCHEMA_ACK: _ack, SCHEMA_EXPERIMENT: _experiment}


def schemas() -> dict[str, dict[str, Any]]:
    """Every payload's JSON Schema by schema name (``venue-agent/<kind>@<major>``)."""
    return {name: build() for name, build in _BUILDERS.items()}


# ----------------------------------------------------------------------------- examples
_EX = {"venue": "park-east", "gateway": "gw-01"}
_AT = "2025-06-01T14:03:07.412Z"
_MOMENT_ID = "01JWJ3Q8ZQ4T5V6W7X8Y9Z0ABC"
_EX_METRICS = {"queue_length": 212.0, "occupancy": 240.0, "wait_s": 2580.0,
               "wait_joining_s": 2890.0, "wait_forecast_s": 3120.0, "dwell_p90_s": 2710.0,
               "throughput_per_min": 4.4}


_EX_ESTIMATE = {"opportunities": 212, "sent": 171, "held_out": 41, "sent_mean": 118.4,
                "held_out_mean": 97.9, "uplift_arrivals": 20.1, "ci_low": 14.2, "ci_high": 26.0,
                "uplift_pct": 20.5, "adjusted": True, "rough": False}


def examples() -> dict[str, dict[str, Any]]:
    """One example payload per schema (validated against it by the tests)."""
    def env(schema: str, id_: str, **body: Any) -> dict[str, Any]:
        return {"schema": schema, "id": id_, **_EX, "at": _AT, **body}

    metrics = {k: _EX_METRICS.get(k) for k in MOMENT_CONTEXT}
    state_values = {"queue_length": 212.0, "occupancy": 240.0, "wait_s": 2580.0,
                    "wait_joining_s": 2890.0, "wait_forecast_s": 3120.0, "dwell_p50_s": 2400.0,
                    "dwell_p90_s": 2710.0, "arrivals_per_min": 5.1, "throughput_per_min": 4.4}
    return {
        SCHEMA_STATUS: env(SCHEMA_STATUS, "01JWJ3F0000000000000000001", online=True,
                           reason="started", version="0.1.0",
                           started_at="2025-06-01T07:58:30.004Z",
                           readers=["dino-entry", "dino-exit"], zones=["dino-queue"]),
        SCHEMA_HEALTH: env(
            SCHEMA_HEALTH, "01JWJ3Q8ZQ0000000000000002", uptime_s=21877.4,
            readers={"dino-entry": {"online": True, "reads": 48211, "reads_per_s": 3.2,
                                    "bad_frames": 4, "degraded": False,
                                    "last_read_at": "2025-06-01T14:03:06.981Z",
                                    "error": None}},
            outbox_depth=0, publisher={"connected": True, "protocol": "5", "sent": 26510,
                                       "acked": 26510, "inflight": 0, "oldest_age_s": None,
                                       "replaying": False, "dead_letters": 0},
            cpu_pct=3.7, rss_mb=61.4, tick_ms=1.42, tick_ms_max=18.9, live_tags=531,
            kernels="aot", dropped_unknown_reads=0),
        SCHEMA_ZONE_STATE: env(
            SCHEMA_ZONE_STATE, "01JWJ3Q8ZQ0000000000000003", seq=21874, zone="dino-queue",
            kind="queue", capacity=400,
            **{name: state_values.get(name) for name, _nd in STATE_FIELDS},
            wait_method="measured", queue_length_method="read_rate_corrected",
            queue_length_factor=1.063, readers_online=2),
        SCHEMA_MOMENT: env(
            SCHEMA_MOMENT, "01JWJ3Q8ZQ0000000000000004", seq=1042, moment_id=_MOMENT_ID,
            kind="queue_long", zone="dino-queue", zone_name="Dino Ride", status="opened",
            opened_at=_AT, value=2580.0, unit="s", open_level=2400.0, clear_level=1920.0,
            metrics=metrics),
        SCHEMA_DISPATCH: env(
            SCHEMA_DISPATCH, "01JWJ3Q8ZQ0000000000000005", seq=1043, moment_id=_MOMENT_ID,
            kind="queue_long", zone="dino-queue", zone_name="Dino Ride", team="dino-ops",
            status="opened", priority="high",
            action="Open another load station or add staff at Dino Ride: wait 43 min, 212 in "
                   "line.", metrics=metrics, reader=None),
        SCHEMA_NUDGE: env(
            SCHEMA_NUDGE, "01JWJ3Q8ZQ0000000000000006", seq=1050,
            moment_id="01JWJ3Q8ZQ4T5V6W7X8Y9Z0ABD", zone="jungle-queue",
            zone_name="Jungle Cruise", wait_s=540.0,
            message="Jungle Cruise is a 9-minute wait for anyone joining now",
            valid_for_s=300),
        SCHEMA_EXPERIMENT: env(
            SCHEMA_EXPERIMENT, "01JWJ3Q8ZQ0000000000000008", seq=21880, experiment="nudges",
            holdout=0.2, window_s=900.0, since="2025-05-20T10:15:00.000Z", **_EX_ESTIMATE,
            by_alternative=[{"zone": "dino-queue", "alternative": "jungle-queue",
                             **_EX_ESTIMATE}]),
        SCHEMA_ACK: {"schema": SCHEMA_ACK, "id": "01JWJ3Q8ZQ0000000000000007",
                     "venue": _EX["venue"], "at": _AT, "moment_id": _MOMENT_ID, "by": "ana",
                     "gateway": _EX["gateway"], "zone": "dino-queue", "kind": "queue_long"},
    }


# ----------------------------------------------------------------------------- AsyncAPI
_PARAMETERS = {
    "venue": "The venue's id (gateway config venue.id).",
    "gateway": "The gateway's id (gateway config gateway.id).",
    "zone": "A zone's id (gateway config zones[].id).",
    "kind": "The moment's kind: " + ", ".join(RULE_KINDS) + ".",
    "team": "The staff team's id: a zone's team, or moments.reader_team (default technical) "
            "for reader_down.",
    "moment_id": "The moment's moment_id (a ULID: 26 characters of Crockford base 32).",
}
_PARAMETER_EXAMPLES = {"venue": ["park-east"], "gateway": ["gw-01"], "zone": ["dino-queue"],
                       "kind": list(RULE_KINDS), "team": ["dino-ops", "technical"],
                       "moment_id": ["01JWJ3Q8ZQ4T5V6W7X8Y9Z0ABC"]}


def _message_name(schema: str) -> str:
    return schema_file(schema).split(".")[0]


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the topic contract (payloads by reference to the
    schema files beside it)."""
    ex = examples()
    # The gateway's Last Will, as the server binding describes it.
    will = dict(ex[SCHEMA_STATUS], online=False, reason="connection lost")
    broker = BrokerConfig()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for ch in CHANNELS:
        name = _message_name(ch.schema)
        messages[name] = {
            "name": name,
            "title": ch.schema,
            "summary": ch.summary,
            "contentType": "application/json",
            "payload": {"schemaFormat": SCHEMA_FORMAT,
                        "schema": {"$ref": f"./{SCHEMAS_DIR}/{schema_file(ch.schema)}"}},
            "examples": [{"name": f"{name}-example", "payload": ex[ch.schema]}],
        }
        channels[ch.key] = {
            "address": ch.address,
            "title": ch.title,
            "summary": ch.summary,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "parameters": {p: {"$ref": f"#/components/parameters/{p}"}
                           for p in ch.parameters},
        }
        binding: dict[str, Any] = {"qos": ch.qos, "retain": ch.retain}
        if ch.expiry:
            binding["messageExpiryInterval"] = {
                "type": "integer", "minimum": 1, "default": broker.nudge_expiry_s,
                "description": "Seconds, from broker.nudge_expiry_s (MQTT 5 only)."}
        binding["bindingVersion"] = "0.2.0"
        operations[f"{ch.action}{ch.key[0].upper()}{ch.key[1:]}"] = {
            "action": ch.action,
            "title": f"{'Publish' if ch.action == 'send' else 'Receive'} {ch.title.lower()}",
            "channel": {"$ref": f"#/channels/{ch.key}"},
            "messages": [{"$ref": f"#/channels/{ch.key}/messages/{name}"}],
            "bindings": {"mqtt": binding},
        }
    servers = {}
    for key, protocol, port, what in (
            ("central", "secure-mqtt", "8883", "TLS (mqtts:// in broker.url)"),
            ("centralPlain", "mqtt", "1883", "plain TCP (mqtt://), for a broker on a "
                                              "trusted network")):
        servers[key] = {
            "host": "{host}:{port}",
            "protocol": protocol,
            "protocolVersion": "5",
            "title": f"Central broker, {what}",
            "description": (
                "The broker every gateway of a venue publishes to (gateway config broker.url, "
                "a failover list allowed). MQTT 5; a gateway falls back to 3.1.1 on a broker "
                "that refuses 5 (then without message expiry). Client id: "
                "venue-agent-<venue>-<gateway> unless broker.client_id is set."),
            "variables": {"host": {"description": "The broker's host name.",
                                   "examples": ["broker.park-east.example"]},
                          "port": {"description": "The broker's port.", "default": port}},
            "security": [{"$ref": "#/components/securitySchemes/userPassword"},
                         {"$ref": "#/components/securitySchemes/clientCertificate"}],
            "bindings": {"mqtt": {
                "cleanSession": True,
                "keepAlive": broker.keepalive_s,
                "lastWill": {"topic": _T.status, "qos": 1, "retain": True,
                             "message": json.dumps(will, separators=(",", ":"))},
                "bindingVersion": "0.2.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:venue-agent:mqtt-contract",
        "info": {
            "title": "venue-agent MQTT contract",
            "version": CONTRACT_VERSION,
            "description": (
                "What venue-agent gateways publish: gateway status and health, zone state, "
                "crowding moments, staff dispatches and guest nudges. Every payload is a JSON "
                "object with schema, id (ULID), venue, gateway and at (RFC 3339 UTC); moments, "
                "dispatches and nudges carry seq, +1 per message per gateway: dedupe on id, "
                "detect a gap when seq skips. Delivery is at least once. Generated from "
                "agent/contract.py (`make contract`); the prose is docs/mqtt.md."),
            "license": {"name": "Apache-2.0",
                        "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "parameters": {p: {"description": d + ("" if p == "moment_id" else
                                                   " 1..64 of [a-z0-9-]."),
                               "examples": _PARAMETER_EXAMPLES[p],
                               "location": f"$message.payload#/{p}"}
                           for p, d in _PARAMETERS.items()},
            "securitySchemes": {
                "userPassword": {"type": "userPassword", "description":
                                 "broker.username and the password in broker.password_file."},
                "clientCertificate": {"type": "X509", "description":
                                      "A client certificate (mutual TLS) over mqtts://; "
                                      "broker.ca_file names a private CA."},
            },
        },
    }


# ----------------------------------------------------------------------------- YAML out
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "nan",
               "inf"}


def _scalar(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError("no NaN or infinity in the contract")
        s = repr(x)
        mant, _, exp = s.partition("e")
        if exp and "." not in mant:  # YAML 1.1 readers need the dot
            s = f"{mant}.0e{exp}"
        return s
    s = str(x)
    if _PLAIN.fullmatch(s) and s.lower() not in _YAML_WORDS:
        return s
    return _quoted(s)


def _quoted(s: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as it is, everything else escaped."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def _yaml_lines(x: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(x, dict):
        for k, v in x.items():
            key = _scalar(str(k))
            if isinstance(v, (dict, list)) and v:
                yield f"{pad}{key}:"
                yield from _yaml_lines(v, indent + 2 if isinstance(v, dict) else indent)
            else:
                yield f"{pad}{key}: {_inline(v)}"
    elif isinstance(x, list):
        for v in x:
            if isinstance(v, (dict, list)) and v:
                sub = list(_yaml_lines(v, indent + 2))
                yield f"{pad}- {sub[0][indent + 2:]}"
                yield from sub[1:]
            else:
                yield f"{pad}- {_inline(v)}"
    else:
        yield f"{pad}{_scalar(x)}"


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _scalar(v)


def to_yaml(doc: Mapping[str, Any]) -> str:
    """A block-style YAML rendering of ``doc`` (dicts, lists, str, int, float, bool, None)
    that any YAML 1.1 or 1.2 reader reads back as ``doc``."""
    return "\n".join(_yaml_lines(dict(doc), 0)) + "\n"


# ----------------------------------------------------------------------------- files
_HEADER = ("# Generated by `venue-agent contract --out docs` (make contract) from "
           "agent/contract.py.\n# Do not edit: change agent/contract.py and regenerate.\n")


def render_files() -> dict[str, str]:
    """The contract's files by path relative to the docs directory."""
    out = {ASYNCAPI_FILE: _HEADER + to_yaml(asyncapi())}
    for name, schema in schemas().items():
        out[f"{SCHEMAS_DIR}/{schema_file(name)}"] = json.dumps(
            schema, indent=2, ensure_ascii=False) + "\n"
    return out


def write_files(out_dir: str | Path) -> list[Path]:
    """Write the contract's files under ``out_dir``; returns the paths written."""
    root = Path(out_dir)
    written = []
    for rel, text in render_files().items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
        written.append(p)
    return written


def check_files(out_dir: str | Path) -> list[str]:
    """What differs between ``out_dir`` and the contract: one line per stale, missing or
    unexpected file (empty when up to date)."""
    root = Path(out_dir)
    files = render_files()
    problems = []
    for rel, text in files.items():
        p = root / rel
        if not p.exists():
            problems.append(f"{p}: missing")
        elif p.read_text(encoding="utf-8") != text:
            problems.append(f"{p}: differs from agent/contract.py")
    schema_dir = root / SCHEMAS_DIR
    if schema_dir.is_dir():
        for p in sorted(schema_dir.glob("*.json")):
            if f"{SCHEMAS_DIR}/{p.name}" not in files:
                problems.append(f"{p}: not a schema of the contract (remove it)")
    return problems
