"""The topic contract as documents: JSON Schemas and the AsyncAPI document (agent/contract.py).

The committed docs/asyncapi.yaml and docs/schemas/*.json are regenerated and compared (they
cannot drift from the code); the AsyncAPI document validates against the AsyncAPI 3.0.0
specification's own JSON Schema (vendored under docs/vendor/asyncapi/); and every payload the
gateway core produces, driven in-process through a scenario that raises every moment kind,
validates against its schema.
"""

from __future__ import annotations

import collections
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator

from agent import contract
from agent.cli import main as cli_main
from agent.config import parse_config
from agent.gateway import MOMENT_CONTEXT, STATE_FIELDS, GatewayCore, Outgoing
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
from firmware_bridge.records import RawRead
from tests.configs import RIDE_READERS
from tests.contract_check import assert_valid

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VENDOR = DOCS / "vendor" / "asyncapi"
ALL_SCHEMAS = (SCHEMA_STATUS, SCHEMA_HEALTH, SCHEMA_ZONE_STATE, SCHEMA_MOMENT, SCHEMA_DISPATCH,
               SCHEMA_NUDGE, SCHEMA_ACK, SCHEMA_EXPERIMENT)


# ----------------------------------------------------------------------------- documents
def test_the_committed_documents_are_what_the_code_generates() -> None:
    problems = contract.check_files(DOCS)
    assert not problems, "\n".join(problems) + "\nrun `make contract` and commit the result"


def test_the_asyncapi_document_validates_against_the_asyncapi_3_schema() -> None:
    doc = yaml.safe_load((DOCS / contract.ASYNCAPI_FILE).read_text(encoding="utf-8"))
    assert doc == contract.asyncapi()  # the YAML says exactly what the code built
    spec = json.loads((VENDOR / "asyncapi-3.0.0.json").read_text(encoding="utf-8"))
    errors = list(Draft7Validator(spec).iter_errors(doc))
    assert not errors, [f"{e.json_path}: {e.message[:200]}" for e in errors]


def test_the_vendored_specification_schema_is_the_real_one_and_catches_mistakes() -> None:
    spec = json.loads((VENDOR / "asyncapi-3.0.0.json").read_text(encoding="utf-8"))
    assert spec["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert "Apache License" in (VENDOR / "LICENSE").read_text(encoding="utf-8")
    assert "AsyncAPI Initiative" in (VENDOR / "NOTICE").read_text(encoding="utf-8")
    validator = Draft7Validator(spec)
    broken = []
    for mutate in (
        lambda d: d["servers"]["central"].update(hots="x"),
        lambda d: d["operations"]["sendNudge"]["bindings"]["mqtt"].update(qos=3),
        lambda d: d["operations"]["sendStatus"].update(action="publish"),
        lambda d: d["components"]["parameters"]["zone"].update(pattern="[a-z]+"),
        lambda d: d.update(asyncapi="2.6.0"),
    ):
        doc = contract.asyncapi()
        mutate(doc)
        broken.append(not validator.is_valid(doc))
    assert all(broken), broken


def _local_refs(x: Any) -> list[str]:
    if isinstance(x, dict):
        return [v for k, v in x.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in x.values() for r in _local_refs(v)]
    if isinstance(x, list):
        return [r for v in x for r in _local_refs(v)]
    return []


def _resolve(doc: dict[str, Any], pointer: str) -> Any:
    node: Any = doc
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_every_address_parameter_is_declared() -> None:
    """What the specification's JSON Schema cannot check."""
    doc = contract.asyncapi()
    for ref in _local_refs(doc):
        if ref.startswith("#/"):
            _resolve(doc, ref)
        else:
            assert (DOCS / ref).is_file(), ref
    for key, ch in doc["channels"].items():
        assert set(re.findall(r"\{(\w+)\}", ch["address"])) == set(ch["parameters"]), key
    for op in doc["operations"].values():
        channel_ref = op["channel"]["$ref"]
        for m in op["messages"]:
            assert m["$ref"].startswith(channel_ref + "/messages/")


def test_the_channels_are_the_topics_of_agent_topics() -> None:
    t = Topics("park-east", "gw-01")
    concrete = {"status": t.status, "health": t.health, "zoneState": t.zone_state("dino-q"),
                "moment": t.moment("dino-q", "queue_long"),
                "gatewayMoment": t.gateway_moment("data_dropped"), "dispatch": t.dispatch("ops"),
                "nudge": t.nudge("dino-q"), "ack": t.ack("01JWJ3Q8ZQ4T5V6W7X8Y9Z0ABC"),
                "experiment": t.experiment()}
    assert [c.key for c in contract.CHANNELS] == list(concrete)
    for key, topic in concrete.items():
        channel, params = contract.channel_for_topic(topic)
        assert channel.key == key
        assert params["venue"] == "park-east"
    assert {c.schema for c in contract.CHANNELS} == set(ALL_SCHEMAS)
    with pytest.raises(KeyError):
        contract.channel_for_topic("venue/park-east/elsewhere/x")
    with pytest.raises(KeyError):  # a wildcard is no topic
        contract.channel_for_topic("venue/+/zone/x/state")


def test_every_schema_is_draft_2020_12_and_its_example_validates() -> None:
    schemas, examples = contract.schemas(), contract.examples()
    assert set(schemas) == set(examples) == set(ALL_SCHEMAS)
    for name, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
        assert schema["properties"]["schema"]["const"] == name
        errors = list(Draft202012Validator(schema).iter_errors(examples[name]))
        assert not errors, (name, [e.message for e in errors])


def test_zone_state_lists_every_published_metric() -> None:
    props = contract.schemas()[SCHEMA_ZONE_STATE]["properties"]
    for name, _nd in STATE_FIELDS:
        assert name in props and "description" in props[name], name
    metrics = contract.schemas()[SCHEMA_MOMENT]["properties"]["metrics"]
    assert metrics["required"] == list(MOMENT_CONTEXT)


def test_the_contract_command_writes_and_checks(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["contract", "--out", str(tmp_path), "--check"]) == 1
    assert cli_main(["contract", "--out", str(tmp_path)]) == 0
    assert cli_main(["contract", "--out", str(tmp_path), "--check"]) == 0
    for rel, text in contract.render_files().items():
        assert (tmp_path / rel).read_text(encoding="utf-8") == text
    (tmp_path / "schemas" / "old.v0.json").write_text("{}")
    status = tmp_path / "schemas" / contract.schema_file(SCHEMA_STATUS)
    status.write_text(status.read_text().replace("birth", "berth"))
    capsys.readouterr()
    assert cli_main(["contract", "--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "status.v1.json: differs" in err and "old.v0.json: not a schema" in err


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_LEAF = st.none() | st.booleans() | st.integers(-10**12, 10**12) | _TEXT | st.floats(
    allow_nan=False, allow_infinity=False)
_DOCS = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_TEXT, _DOCS, max_size=5))
def test_the_yaml_writer_reads_back_as_what_it_wrote(doc: dict[str, Any]) -> None:
    assert yaml.safe_load(contract.to_yaml(doc)) == (doc or None)


# ----------------------------------------------------------------------------- payloads
SCENARIO_CONFIG = """
[venue]
id = "park"
[gateway]
id = "gw-1"
[broker]
nudge_expiry_s = 120
[moments]
hold_s = 0
cooldown_s = 0
update_interval_s = 0
update_change_pct = 5
reader_down_after_s = 5
forecast_horizon_s = 60
[estimation]
window_s = 120
rate_window_s = 60
min_measured_waits = 1
wait_recent = 5
fifo_slack_s = 10
[[zones]]
id = "ride"
name = "Dino Ride"
kind = "queue"
capacity = 20
team = "ride-ops"
queue_long_wait_s = 60
wait_short_s = 30
[[zones]]
id = "plaza"
kind = "area"
capacity = 4
dwell_long_s = 20
absence_timeout_s = 5
""" + RIDE_READERS + """
[[readers]]
id = "plaza-ble"
protocol = "ble"
zone = "plaza"
"""
WALL = 1_750_000_000.0


def _em(i: int) -> RawRead:
    return RawRead("em4100", bytes([0x10]) + i.to_bytes(4, "big"))


def _ble(*tag: int) -> RawRead:
    return RawRead("ble", bytes([0xB0, *tag, 0, 0, 0, 0]), -60.0)


def run_scenario() -> tuple[GatewayCore, list[Outgoing]]:
    """A ride with a rush (queue_long, queue_rising, zone_crowded), a short line (wait_short
    and its nudges), another rush (wait_short resolves); a plaza crowded by long visits
    (zone_crowded, dwell_long) then short ones (dwell_long resolves); an exit reader that
    drops out for 20 s (reader_down)."""
    core = GatewayCore(parse_config(SCENARIO_CONFIG), key=bytes(32), max_tags=4096,
                       started_at=WALL)
    for rid in core.readers:
        core.reader_state(rid, True, None, 0.0)
    exits: dict[int, list[int]] = collections.defaultdict(list)
    out: list[Outgoing] = []
    n = 0
    for t in range(700):
        now = float(t)
        wait = 90 if t < 200 else 8 if t < 450 else 70
        every = 2 if t < 200 else 6 if t < 450 else 1
        if t < 600 and t % every == 0:
            core.accept_reads("ride-in", now, [_em(n)])
            exits[t + wait].append(n)
            n += 1
        if t in exits:
            core.accept_reads("ride-out", now, [_em(i) for i in exits.pop(t)])
        if t <= 30:  # five guests linger 30 s in the plaza
            core.accept_reads("plaza-ble", now, [_ble(1, i) for i in range(5)])
        if 100 <= t < 200:  # then short visits, one after the other
            core.accept_reads("plaza-ble", now, [_ble(2, t // 4)])
        if t == 300:
            core.reader_state("ride-out", False, "[Errno 2] could not open port", now)
        if t == 320:
            core.reader_state("ride-out", True, None, now)
        out.extend(core.step(now, wall=WALL + now).messages)
    return core, out


def with_seq(messages: list[Outgoing]) -> list[tuple[Outgoing, dict[str, Any]]]:
    """Each message with the payload the outbox stores: ``seq`` added per stream."""
    seqs: collections.Counter[str] = collections.Counter()
    out = []
    for m in messages:
        payload = json.loads(json.dumps(m.payload))  # as it goes over the wire
        if m.seq_stream:
            seqs[m.seq_stream] += 1
            payload["seq"] = seqs[m.seq_stream]
        out.append((m, payload))
    return out


@pytest.fixture(scope="module")
def scenario() -> tuple[GatewayCore, list[Outgoing]]:
    return run_scenario()


def test_the_scenario_raises_every_moment_kind_through_its_lifecycle(
        scenario: tuple[GatewayCore, list[Outgoing]]) -> None:
    _core, messages = scenario
    seen = {(m.payload["schema"], m.payload.get("kind"), m.payload.get("status"))
            for m in messages}
    for kind in contract.RULE_KINDS:
        for status in ("opened", "resolved"):
            assert (SCHEMA_MOMENT, kind, status) in seen, (kind, status)
    assert (SCHEMA_MOMENT, "wait_short", "updated") in seen
    for kind in ("queue_long", "queue_rising", "zone_crowded", "reader_down"):
        assert (SCHEMA_DISPATCH, kind, "opened") in seen
        assert (SCHEMA_DISPATCH, kind, "resolved") in seen
    assert any(s == SCHEMA_NUDGE for s, _k, _st in seen)


def test_every_payload_the_gateway_core_produces_validates(
        scenario: tuple[GatewayCore, list[Outgoing]]) -> None:
    _core, messages = scenario
    counts: collections.Counter[str] = collections.Counter()
    for m, payload in with_seq(messages):
        channel = assert_valid(m.topic, payload)
        counts[channel.key] += 1
        # ...and it is published the way the contract's bindings say
        assert (m.qos, m.retain) == (channel.qos, channel.retain), m.topic
        assert (m.expiry_s is not None) == channel.expiry, m.topic
    assert set(counts) == {"zoneState", "moment", "dispatch", "nudge"}, counts
    states = [p for m, p in with_seq(messages) if m.payload["schema"] == SCHEMA_ZONE_STATE]
    # both kinds of zone, and numbers that are null while unknown, then known
    assert {p["kind"] for p in states} == {"queue", "area"}
    assert any(p["wait_s"] is None for p in states) and any(p["wait_s"] for p in states)


def test_status_payloads_validate(scenario: tuple[GatewayCore, list[Outgoing]]) -> None:
    core, _messages = scenario
    for online, reason in ((True, "started"), (False, "shutdown"),
                           (False, "connection lost")):
        assert_valid(core.topics.status, core.status_payload(online, reason, WALL + 5))


def test_the_health_payload_of_a_real_agent_validates(tmp_path: Path) -> None:
    from agent.runtime import Agent
    from agent.topics import SCHEMA_HEALTH as HEALTH

    text = SCENARIO_CONFIG.replace('[broker]', f'[storage]\npath = "{tmp_path / "a.db"}"\n'
                                                '[broker]')
    agent = Agent(parse_config(text))
    try:
        agent.core.accept_reads("ride-in", agent.clock(), [_em(1)])
        agent.tick(agent.clock())
        payload = agent.topics.envelope(HEALTH, agent.wall(), **agent.health())
        assert_valid(agent.topics.health, json.dumps(payload))
        assert payload["readers"]["ride-in"]["reads"] == 1
        # the session's ahead-of-time kernels (conftest.py), named for a fleet view
        assert payload["kernels"] == agent.core.engine.kernels.backend == "aot"
    finally:
        agent.outbox.close()


def test_the_check_names_what_is_wrong(scenario: tuple[GatewayCore, list[Outgoing]]) -> None:
    _core, messages = scenario
    m, payload = next((m, p) for m, p in with_seq(messages)
                      if m.payload["schema"] == SCHEMA_MOMENT)
    assert_valid(m.topic, payload)
    for mutate, says in (
        (lambda p: p.pop("seq"), "'seq' is a required property"),
        (lambda p: p.update(status="closed"), "'closed' is not one of"),
        (lambda p: p.update(at="2025-06-15 15:06:40"), "does not match"),
        (lambda p: p.update(zone="nowhere"), "but the payload says 'nowhere'"),
        (lambda p: p.update(schema=SCHEMA_DISPATCH), "was expected"),
        (lambda p: p["metrics"].pop("wait_s"), "'wait_s' is a required property"),
    ):
        broken = copy.deepcopy(payload)
        mutate(broken)
        with pytest.raises(AssertionError, match=re.escape(says)):
            assert_valid(m.topic, broken)
    with pytest.raises(AssertionError, match="on no channel"):
        assert_valid("venue/park/unknown", payload)
