"""The gateway core: what one gateway publishes, driven in-process (no I/O)."""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import EstimationConfig, parse_config
from agent.gateway import GatewayCore, engine_params, rule_values
from agent.topics import SCHEMA_DISPATCH, SCHEMA_MOMENT, SCHEMA_ZONE_STATE, SEQ_GUARANTEED
from firmware_bridge.records import RawRead

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))

CONFIG = """
[venue]
id = "park"
[gateway]
id = "gw-1"
[moments]
hold_s = 0
reader_down_after_s = 5
[[readers]]
id = "dino-in"
protocol = "em4100"
port = "socket://127.0.0.1:7001"
zone = "dino-queue"
role = "entry"
[[readers]]
id = "dino-out"
protocol = "em4100"
port = "socket://127.0.0.1:7002"
zone = "dino-queue"
role = "exit"
[[readers]]
id = "plaza-ble"
protocol = "ble"
zone = "plaza"
[[zones]]
id = "dino-queue"
kind = "queue"
capacity = 100
[[zones]]
id = "plaza"
kind = "area"
capacity = 4
"""


def core() -> GatewayCore:
    c = GatewayCore(parse_config(CONFIG), key=KEY, max_tags=1024, started_at=0.0)
    for rid in c.readers:
        c.reader_state(rid, True, None, 0.0)
    return c


def tag(i: int) -> bytes:
    return bytes([0x10, 0, 0, 0, i])


def test_every_tick_publishes_each_zone_state_first() -> None:
    c = core()
    res = c.step(1000.0, wall=1_700_000_000.0)
    states = [m for m in res.messages if m.payload["schema"] == SCHEMA_ZONE_STATE]
    assert [m.payload["zone"] for m in states] == ["dino-queue", "plaza"]
    assert res.messages[: len(states)] == states
    for m in states:
        assert m.retain and m.coalesce_key == m.topic
        assert m.payload["at"].startswith("2023-11-14T22:13:20")  # the wall clock, not now
    assert states[1].payload["queue_length"] is None  # an area has no queue


def test_reads_become_occupancy_and_a_crowded_moment_with_its_dispatch() -> None:
    c = core()
    reads = [RawRead("ble", tag(i), -60.0) for i in range(5)]
    for t in range(1, 6):  # BLE needs a few adverts before a zone is assigned
        c.accept_reads("plaza-ble", float(t), reads)
    res = c.step(6.0)
    assert res.values["plaza"]["occupancy"] == 5
    assert res.values["plaza"]["fill_pct"] == 125.0
    kinds = [(m.payload["schema"], m.payload.get("kind")) for m in res.messages]
    assert (SCHEMA_MOMENT, "zone_crowded") in kinds
    assert (SCHEMA_DISPATCH, "zone_crowded") in kinds
    for m in res.messages:
        if m.payload["schema"] in (SCHEMA_MOMENT, SCHEMA_DISPATCH):
            assert m.seq_stream == SEQ_GUARANTEED
        text = json.dumps(m.payload)
        assert tag(1).hex() not in text  # raw ids never leave the core


def test_a_reader_offline_long_enough_opens_reader_down_for_the_technical_team() -> None:
    c = core()
    assert c.reader_state("dino-out", False, "port vanished", 10.0)
    assert not c.reader_state("dino-out", False, "again", 11.0)  # no news
    assert not [e for e in c.step(12.0).events if e.kind == "reader_down"]
    res = c.step(16.0)
    assert [e.kind for e in res.events] == ["reader_down"]
    dispatch = [m for m in res.messages if m.payload["schema"] == SCHEMA_DISPATCH]
    assert dispatch[0].topic == "venue/park/dispatch/technical"
    moment = [m for m in res.messages if m.payload["schema"] == SCHEMA_MOMENT][0]
    assert moment.payload["error"] == "port vanished"


def test_reads_of_unknown_readers_are_counted_not_used() -> None:
    c = core()
    assert c.accept_reads("nobody", 1.0, [RawRead("em4100", tag(1))]) == 0
    assert c.dropped_unknown == 1


def test_the_engine_gets_every_estimation_setting() -> None:
    """One config -> engine mapping: a new estimation key cannot be forgotten by it."""
    params = engine_params(parse_config(CONFIG))
    assert {f.name for f in fields(EstimationConfig)} <= set(params)


def test_a_nudge_never_promises_a_wait_at_a_stopped_ride() -> None:
    z = parse_config(CONFIG).zone("dino-queue")
    moving = rule_values(z, {"wait_s": 60.0, "wait_joining_s": 90.0, "throughput_per_min": 2.0})
    assert moving["wait_s_flowing"] == 90.0  # what a guest joining now will wait
    stopped = rule_values(z, {"wait_s": 60.0, "throughput_per_min": 0.0})
    assert stopped["wait_s_flowing"] != stopped["wait_s_flowing"]  # NaN


def test_the_accuracy_harness_builds_no_engine_or_rules_of_its_own() -> None:
    """bench/accuracy.py must measure the gateway itself: it drives GatewayCore."""
    tree = ast.parse((ROOT / "bench" / "accuracy.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "GatewayCore" in names
    for forbidden in ("ZoneEngine", "Topology", "EngineParams", "MomentRules",
                      "ThresholdRule", "ReferenceEngine"):
        assert forbidden not in names, forbidden


def test_what_the_store_dropped_becomes_one_valid_data_dropped_moment(tmp_path: Path) -> None:
    from agent.outbox import Outbox
    from tests.contract_check import assert_valid

    c = core()
    with Outbox(tmp_path / "agent.db", max_bytes=256 * 1024) as box:
        for i in range(3000):  # far more than 256 KiB of moments: the oldest go
            with box.batch():
                box.enqueue(c.topics.moment("plaza", "zone_crowded"),
                            {"schema": SCHEMA_MOMENT, "n": i, "pad": "x" * 200},
                            seq_stream=SEQ_GUARANTEED)
        report = box.take_drop_report()
    assert report is not None and report.total > 0
    msg = c.data_dropped(report.ranges, wall=1_700_000_000.0)
    assert msg.topic == "venue/park/gateway/gw-1/moment/data_dropped"
    assert msg.seq_stream == SEQ_GUARANTEED
    body = dict(msg.payload, seq=1)
    assert_valid(msg.topic, body)
    assert body["value"] == report.total and body["status"] == "resolved"
    first = body["dropped"][0]
    assert first["stream"] == SEQ_GUARANTEED and first["first_seq"] == 1


def _crowd(c: GatewayCore, n: int, until: int, start: int = 1) -> list[Any]:
    """Keep ``n`` bands in the plaza from ``start`` to ``until`` (s); all step results."""
    out = []
    for t in range(start, until):
        c.accept_reads("plaza-ble", float(t), [RawRead("ble", tag(i), -60.0) for i in range(n)])
        out.append(c.step(float(t)))
    return out


def test_an_alert_nobody_takes_is_escalated_once_to_the_escalation_team() -> None:
    c = core()
    results = _crowd(c, 5, 400)
    esc = [m for r in results for m in r.messages
           if m.topic == "venue/park/dispatch/supervisors"]
    assert len(esc) == 1
    p = esc[0].payload
    from tests.contract_check import assert_valid

    assert_valid(esc[0].topic, dict(p, seq=1))
    assert p["escalated"] is True and p["kind"] == "zone_crowded" and p["priority"] == "high"
    opened = [e for r in results for e in r.events if e.status == "opened"][0]
    assert p["moment_id"] == opened.moment_id
    escalated_at = next(r.now for r in results if esc[0] in r.messages)
    assert escalated_at - opened.at == 300.0  # zones.escalate_after_s, default 5 min


def test_a_taken_alert_is_not_escalated_and_its_next_update_says_who_took_it() -> None:
    c = core()
    results = _crowd(c, 5, 10)
    mid = [e for r in results for e in r.events if e.status == "opened"][0].moment_id
    assert not c.acknowledge("someone-elses-moment", "ana", "2026-01-01T00:00:00.000Z")
    assert c.acknowledge(mid, "ana", "2026-01-01T00:00:00.000Z")
    assert not c.acknowledge(mid, "bo", "2026-01-01T00:00:01.000Z")  # the first taker keeps it
    results = _crowd(c, 5, 400, start=10)
    assert not [m for r in results for m in r.messages if "supervisors" in m.topic]
    # the crowd leaves: the resolve carries who took it
    results = _crowd(c, 0, 700, start=400)
    resolved = [m.payload for r in results for m in r.messages
                if m.payload.get("status") == "resolved" and m.payload["schema"] == SCHEMA_MOMENT]
    assert resolved and resolved[0]["taken_by"] == "ana"
    from tests.contract_check import assert_valid

    assert_valid("venue/park/moment/plaza/zone_crowded", dict(resolved[0], seq=1))
    assert c.acks == {}  # forgotten with its moment


def test_acks_and_escalations_survive_a_checkpoint() -> None:
    c = core()
    results = _crowd(c, 5, 10)
    mid = [e for r in results for e in r.events if e.status == "opened"][0].moment_id
    c.acknowledge(mid, "ana", "2026-01-01T00:00:00.000Z")
    fresh = core()
    fresh.restore(c.checkpoint(), 10.0)
    assert fresh.acks == {mid: {"by": "ana", "at": "2026-01-01T00:00:00.000Z"}}


def test_per_reader_filters_and_departure_reach_the_kernels() -> None:
    from agent.gateway import topology_for

    cfg = parse_config(CONFIG.replace('protocol = "ble"', 'protocol = "ble"\n'
                                      'rssi_floor_dbm = -80\nmin_reads = 2').replace(
        'id = "plaza"\nkind = "area"', 'id = "plaza"\nkind = "area"\n'
        'departure_missed_reads = 6'))
    topo = topology_for(cfg)
    assert list(topo.reader_rssi_floor) == [-127.0, -127.0, -80.0]
    assert list(topo.reader_min_reads) == [1, 1, 2]
    assert list(topo.zone_missed_reads) == [4.0, 6.0]


def test_a_batch_is_pseudonymised_as_read_by_read() -> None:
    """accept_reads works column by column; the buffer holds what one call per read gives:
    a one-protocol batch without RSSI, a mixed batch, and a generator."""
    c, ref = core(), core()
    plain = [RawRead("em4100", tag(i % 7)) for i in range(40)]
    mixed = [RawRead("ble", tag(1), -61.0), RawRead("em4100", tag(2)),
             RawRead("ble", tag(3), None), RawRead("uhf-m100", tag(4), -70.5)]
    for batch in (plain, mixed):
        assert c.accept_reads("plaza-ble", 5.0, batch) == len(batch)
        assert c.accept_reads("plaza-ble", 6.0, iter(batch)) == len(batch)
    for ts, batch in ((5.0, plain), (6.0, plain), (5.0, mixed), (6.0, mixed)):
        for rd in batch:
            ref.buffer.append(ts, ref.pseudonym.at(ts)(rd.protocol, rd.tag_id), 2, rd.rssi_dbm)
    got, want = c.buffer.take(), ref.buffer.take()
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w, equal_nan=True)
    assert c.readers["plaza-ble"].reads == 2 * (len(plain) + len(mixed))
    assert c.accept_reads("plaza-ble", 7.0, []) == 0
