"""Check MQTT messages against the topic contract (agent/contract.py).

    from tests.contract_check import assert_valid
    assert_valid(message.topic, message.payload)   # bytes, str or an already-parsed dict

The topic must be on a channel of the contract; the payload must validate against that
channel's JSON Schema (draft 2020-12, with the ``jsonschema`` library), and every topic level
that is a channel parameter (venue, gateway, zone, kind, team) must equal the payload's field
of that name.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from agent import contract


@cache
def validator(schema_name: str) -> Draft202012Validator:
    """The validator of one payload schema (``venue-agent/<kind>@<major>``)."""
    return Draft202012Validator(contract.schemas()[schema_name],
                                format_checker=FormatChecker())


def assert_valid(topic: str, payload: bytes | str | dict[str, Any]) -> contract.Channel:
    """Raise AssertionError, naming every problem, unless ``payload`` fits ``topic``'s
    channel of the contract. Returns the channel."""
    body = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    try:
        channel, params = contract.channel_for_topic(topic)
    except KeyError as e:
        raise AssertionError(str(e)) from None
    errors = sorted(validator(channel.schema).iter_errors(body), key=lambda e: e.json_path)
    problems = [f"{e.json_path}: {e.message}" for e in errors[:10]]
    if isinstance(body, dict):
        problems += [f"topic level {name}={value!r} but the payload says {body.get(name)!r}"
                     for name, value in params.items() if body.get(name) != value]
    if problems:
        raise AssertionError(
            f"{topic}: the payload does not match {channel.schema}:\n  "
            + "\n  ".join(problems) + f"\n  payload: {json.dumps(body)[:1500]}")
    return channel
