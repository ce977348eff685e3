"""The consumer group's ledger (agent.share, pure): ranges, dedupe, merged gaps, ownership."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.share import (
    GroupLedger,
    RangeSet,
    TailOptions,
    default_filters,
    mqtt_to_nats,
    nats_to_mqtt,
)
from agent.topics import SCHEMA_MOMENT, SCHEMA_ZONE_STATE


def moment(gateway: str, seq: int, *, msg_id: str | None = None, venue: str = "v1") -> bytes:
    return json.dumps({"schema": SCHEMA_MOMENT, "id": msg_id or f"{gateway}-{seq}",
                       "venue": venue, "gateway": gateway, "at": "2026-01-01T00:00:00.000Z",
                       "seq": seq, "kind": "queue_long"}).encode()


def gaps(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line["gap"] for line in lines if "gap" in line]


@given(st.lists(st.integers(0, 60), max_size=40))
def test_rangeset_is_the_set_it_was_given(values: list[int]) -> None:
    r = RangeSet()
    seen: set[int] = set()
    for v in values:
        assert r.add(v) == (v not in seen)
        seen.add(v)
    assert [n for n in range(-1, 62) if n in r] == sorted(set(values))
    ranges = r.as_list()
    assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # disjoint
    expected_holes = [n for n in range(min(values), max(values) + 1)
                      if n not in set(values)] if values else []
    assert [n for a, b in r.holes() for n in range(a, b + 1)] == expected_holes


def test_rangeset_outside_and_merge() -> None:
    r = RangeSet([[3, 5], [9, 9]])
    assert r.outside(1, 10) == [(1, 2), (6, 8), (10, 10)]
    r.update(RangeSet([[6, 8]]))
    assert r.as_list() == [[3, 9]]


def test_one_member_dedupes_on_id_and_on_seq() -> None:
    led = GroupLedger("g", "a", now=0.0)
    assert led.receive("t", moment("gw1", 1))[0]["payload"]["seq"] == 1
    dup = led.receive("t", moment("gw1", 1))
    assert dup == [{"duplicate": {"id": "gw1-1", "venue": "v1", "gateway": "gw1", "seq": 1,
                                  "topic": "t", "member": "a"}}]
    # same seq, id forgotten (or re-minted): the guaranteed stream's seq is never reused
    assert "duplicate" in led.receive("t", moment("gw1", 1, msg_id="other"))[0]
    # messages outside the guaranteed stream dedupe on id only
    state = json.dumps({"schema": SCHEMA_ZONE_STATE, "id": "s1", "venue": "v1",
                        "gateway": "gw1", "seq": 1}).encode()
    assert "payload" in led.receive("t", state)[0]
    assert "duplicate" in led.receive("t", state)[0]
    assert led.receive("t", b"\xff")[0]["error"] == "payload is not JSON"


def test_a_gap_waits_for_the_grace_period_then_is_reported_once() -> None:
    led = GroupLedger("g", "a", now=0.0, grace_s=2.0, liveness_s=1.0)
    for s in (1, 2, 5):
        led.receive("t", moment("gw1", s))
    assert gaps(led.check(1.0)) == []  # hole 3..4 seen open at t=1
    assert gaps(led.check(2.9)) == []
    [g] = gaps(led.check(3.0))
    assert (g["gateway"], g["first_seq"], g["last_seq"], g["missing"]) == ("gw1", 3, 4, 2)
    assert gaps(led.check(10.0)) == []
    late = led.receive("t", moment("gw1", 3))
    assert late[0]["late"] is True


def test_a_hole_a_peer_filled_is_no_gap() -> None:
    """Two members of one group, each given every other message: neither alone sees a
    contiguous stream, merged they do; nothing is reported."""
    a = GroupLedger("g", "a", now=0.0, grace_s=1.0, liveness_s=1.0)
    b = GroupLedger("g", "b", now=0.0, grace_s=1.0, liveness_s=1.0)
    for s in range(1, 21):
        (a if s % 2 else b).receive("t", moment("gw1", s))
    t = 0.0
    out = []
    while t < 5.0:
        a.merge(json.loads(json.dumps(b.announcement())), t)
        b.merge(json.loads(json.dumps(a.announcement())), t)
        out += a.check(t) + b.check(t)
        t += 0.25
    assert gaps(out) == []
    assert a.streams["v1/gw1"].seen.as_list() == [[1, 20]]
    # a redelivery to the member that did not handle it is still a duplicate
    assert "duplicate" in a.receive("t", moment("gw1", 2))[0]


def test_a_gap_is_reported_by_one_member_of_the_group() -> None:
    members = [GroupLedger("g", m, now=0.0, grace_s=1.0, liveness_s=1.0) for m in "abc"]
    for s in (*range(1, 10), *range(12, 20)):
        members[s % 3].receive("t", moment("gw1", s))
        members[(s + 1) % 3].receive("t", moment("gw2", s))
    out: list[dict[str, Any]] = []
    t = 0.0
    while t < 4.0:
        for m in members:
            ann = json.loads(json.dumps(m.announcement()))
            for peer in members:
                peer.merge(ann, t)
        for m in members:
            out += m.check(t)
        t += 0.2
    reported = sorted((g["gateway"], g["first_seq"], g["last_seq"]) for g in gaps(out))
    assert reported == [("gw1", 10, 11), ("gw2", 10, 11)]


def test_ownership_moves_when_the_owner_leaves_without_a_second_report() -> None:
    a = GroupLedger("g", "a", now=0.0, grace_s=1.0, liveness_s=1.0)
    b = GroupLedger("g", "b", now=0.0, grace_s=1.0, liveness_s=1.0)
    for s in (1, 2, 4, 5, 8):
        a.receive("t", moment("gw1", s))
    out: list[dict[str, Any]] = []
    t = 0.0
    while t < 3.0:
        b.merge(a.announcement(), t)
        a.merge(b.announcement(), t)
        out += a.check(t) + b.check(t)
        t += 0.2
    assert sorted((g["first_seq"], g["last_seq"]) for g in gaps(out)) == [(3, 3), (6, 7)]
    # the reporter leaves; the other one now owns every gateway and reports only new gaps
    reporter = {g["member"] for g in gaps(out)}.pop()
    leaver, stays = (a, b) if reporter == "a" else (b, a)
    stays.merge(leaver.announcement(leaving=True), t)
    assert stays.live_members(t) == [stays.member]
    stays.receive("t", moment("gw1", 10))
    later: list[dict[str, Any]] = []
    while t < 6.0:
        later += stays.check(t)
        t += 0.2
    assert [(g["first_seq"], g["last_seq"], g["member"]) for g in gaps(later)] == [
        (9, 9, stays.member)]


def test_a_silent_member_stops_counting_after_liveness() -> None:
    a = GroupLedger("g", "a", now=0.0, liveness_s=1.0)
    b = GroupLedger("g", "b", now=0.0, liveness_s=1.0)
    a.merge(b.announcement(), 0.5)
    assert a.live_members(1.0) == ["a", "b"]
    assert a.live_members(1.6) == ["a"]


def test_merge_ignores_what_is_not_a_ledger_of_the_group() -> None:
    a = GroupLedger("g", "a", now=0.0)
    other = GroupLedger("h", "b", now=0.0)
    other.receive("t", moment("gw1", 1))
    assert not a.merge(other.announcement(), 0.0)
    assert not a.merge({"v": 1, "group": "g", "member": "b", "seen": {"x": [[1]]}}, 0.0)
    assert not a.merge("nonsense", 0.0)
    assert not a.merge(a.announcement(), 0.0)  # its own
    assert a.streams == {}


def test_subjects_and_filters() -> None:
    assert mqtt_to_nats("venue/+/moment/#") == "venue.*.moment.>"
    assert nats_to_mqtt("venue.v1.moment.z1.queue_long") == "venue/v1/moment/z1/queue_long"
    assert default_filters("v1") == ["venue/v1/moment/#", "venue/v1/gateway/+/moment/#",
                                     "venue/v1/dispatch/#", "venue/v1/nudge/#"]


@pytest.mark.parametrize("opts, word", [
    (TailOptions("mqtt://127.0.0.1:1", "v1", group="a/b"), "--share"),
    (TailOptions("mqtt://127.0.0.1:1", "v1", group="g", member="x y"), "--member"),
    (TailOptions("mqtt://127.0.0.1:1", "v/1"), "--venue"),
    (TailOptions("mqtt://127.0.0.1:1", "v1", filters=("a/#/b",)), "--filter"),
    (TailOptions("mqtt://127.0.0.1:1", "v1", filters=("$share/g/a",)), "--filter"),
    (TailOptions("mqtt://127.0.0.1:1", "v1", grace_s=0), "--gap-grace"),
    (TailOptions("nats://", "v1"), "broker url"),
    (TailOptions("nats://u:p@h:4222", "v1"), "credentials"),
])
def test_bad_options_name_the_option(opts: TailOptions, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        opts.check()


def test_a_gap_the_gateway_explained_says_why_whichever_member_got_the_explanation() -> None:
    a = GroupLedger("g", "a", now=0.0, grace_s=1.0, liveness_s=1.0)
    b = GroupLedger("g", "b", now=0.0, grace_s=1.0, liveness_s=1.0)
    for s in (1, 2, 5, 8, 10):
        b.receive("t", moment("gw1", s))
    dropped = json.dumps({
        "schema": SCHEMA_MOMENT, "id": "dd", "venue": "v1", "gateway": "gw1", "seq": 11,
        "kind": "data_dropped", "dropped": [
            {"stream": "guaranteed", "reason": "storage_full", "count": 2, "first_seq": 3,
             "last_seq": 4},
            {"stream": "health", "reason": "storage_full", "count": 9, "first_seq": None,
             "last_seq": None}]}).encode()
    a.receive("t", dropped)
    out: list[dict[str, Any]] = []
    t = 0.0
    while t < 3.0:
        b.merge(json.loads(json.dumps(a.announcement())), t)
        a.merge(json.loads(json.dumps(b.announcement())), t)
        out += a.check(t) + b.check(t)
        t += 0.2
    found = {(g["first_seq"], g["last_seq"]): g.get("dropped_by_gateway") for g in gaps(out)}
    assert found == {(3, 4): ["storage_full"], (6, 7): None, (9, 9): None}
