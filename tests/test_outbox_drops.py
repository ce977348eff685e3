"""Bounded disk with an honest drop policy, dead letters, health figures, schema upgrade.

Before: at ``max_bytes`` the *newest* message was refused (parked in memory, then an
exception with a log line), and ``seq`` was assigned at write time, so a consumer never saw
a gap for what was lost. Now the oldest data goes first, every drop is counted per stream
with its seq and time range, the dropped rows leave a visible seq gap, and ``enqueue``
never raises because the store is full.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.outbox import SCHEMA_VERSION, DropReport, Outbox

MOMENT = "venue/park/moment/dino-queue/queue_long"
HEALTH = "venue/park/gateway/gw-01/health"
STATE = "venue/park/zone/{}/state"
CAP = 96 * 1024
PAD = "x" * 400


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def moment_seqs(ob: Outbox) -> list[int]:
    return [m.seq for m in ob.pending(1_000_000) if m.topic == MOMENT and m.seq is not None]


def tick(ob: Outbox, n: int, count: int = 10) -> tuple[int, DropReport | None]:
    """One tick's worth of moments (n+1 ... n+count) and the drop report, in one batch."""
    with ob.batch():
        for _ in range(count):
            n += 1
            assert ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="g") > 0
        return n, ob.take_drop_report()


def reported_seqs(report: DropReport | None) -> set[int]:
    out: set[int] = set()
    for rng in report.ranges if report else ():
        assert rng.first_seq is not None and rng.last_seq is not None
        out.update(range(rng.first_seq, rng.last_seq + 1))
    return out


def file_pages(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


def test_at_the_cap_the_oldest_go_first_and_the_newest_is_always_stored(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=CAP, clock=clock) as ob:
        times: dict[int, float] = {}
        for n in range(1, 2001):
            row = ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="guaranteed")
            assert row > 0  # stored, never refused, never raised
            times[n] = clock.t
            assert moment_seqs(ob)[-1] == n  # the newest is there
        kept = moment_seqs(ob)
        first = kept[0]
        assert kept == list(range(first, 2001))  # only the oldest went
        assert 50 < len(kept) < 250
        report = ob.take_drop_report()
        assert report is not None
        (rng,) = report.ranges
        assert (rng.stream, rng.reason, rng.count) == ("guaranteed", "storage_full", first - 1)
        assert (rng.first_seq, rng.last_seq) == (1, first - 1)
        assert (rng.first_at, rng.last_at) == (times[1], times[first - 1])
        assert report.total == first - 1 and report.by_stream() == {"guaranteed": first - 1}
        assert ob.take_drop_report() is None  # taken
        stats = ob.stats()
        assert stats.dropped == first - 1 and stats.refused == 0
        assert stats.size_bytes <= CAP
        # The next message continues the counter: the gap is the dropped range only.
        ob.enqueue(MOMENT, {"n": 2001}, seq_stream="guaranteed")
        assert moment_seqs(ob)[-1] == 2001
    assert file_pages(path) * 4096 <= CAP


def test_old_call_forms_never_raise_at_the_cap(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=64 * 1024, overflow_limit=0) as ob:
        for n in range(500):
            assert ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="g") > 0
        assert ob.overflow_depth == 0 and ob.flush_overflow() == 0


def test_health_goes_before_the_stream_and_current_state_is_kept(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=CAP) as ob:
        zones = ("a", "b", "c")
        for n in range(1, 11):
            ob.enqueue(HEALTH, {"n": n, "pad": PAD}, qos=0)
            ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="guaranteed")
        assert ob.take_drop_report() is None  # still room
        n = 10
        health_left = 10
        while health_left:
            n += 1
            ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="guaranteed")
            for z in zones:
                ob.enqueue(STATE.format(z), {"v": n, "pad": PAD}, retain=True,
                           seq_stream="state", coalesce_key=f"state/{z}")
            health_left = sum(1 for m in ob.pending(10_000) if m.topic == HEALTH)
            if health_left:  # not one moment goes while there is health to drop
                assert moment_seqs(ob) == list(range(1, n + 1))
        # Now the oldest moments go, and each zone's current state stays.
        for m in range(n + 1, n + 400):
            ob.enqueue(MOMENT, {"n": m, "pad": PAD}, seq_stream="guaranteed")
            for z in zones:
                ob.enqueue(STATE.format(z), {"v": m, "pad": PAD}, retain=True,
                           seq_stream="state", coalesce_key=f"state/{z}")
        assert moment_seqs(ob)[0] > 1 and moment_seqs(ob)[-1] == n + 399
        states = [m for m in ob.pending(10_000) if m.kind == "state"]
        assert sorted(m.topic for m in states) == [STATE.format(z) for z in zones]
        assert all(json.loads(m.payload)["v"] == n + 399 for m in states)
        report = ob.take_drop_report()
        assert report is not None and set(report.by_stream()) == {"health", "guaranteed"}
        assert report.by_stream()["health"] == 10


def test_a_message_too_large_for_the_store_is_refused_counted_and_its_seq_burnt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", max_bytes=CAP, clock=clock) as ob:
        ob.enqueue(MOMENT, {"n": 1}, seq_stream="guaranteed")
        assert ob.enqueue(MOMENT, {"n": 2, "pad": "x" * 20_000}, seq_stream="guaranteed") == 0
        at = clock.t
        ob.enqueue(MOMENT, {"n": 3}, seq_stream="guaranteed")
        assert moment_seqs(ob) == [1, 3]  # the refused message left a visible gap
        report = ob.take_drop_report()
        assert report is not None
        (rng,) = report.ranges
        assert (rng.reason, rng.count, rng.first_seq, rng.first_at) == ("too_large", 1, 2, at)
        assert ob.stats().refused == 1 and ob.stats().dropped == 0
        assert "max_message_bytes" in caplog.text


def test_seq_is_never_reused_after_drops_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=CAP) as ob:
        for n in range(600):
            ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="guaranteed")
        last = moment_seqs(ob)[-1]
        ob.ack_many(m.row for m in ob.pending(1_000_000))  # even with nothing left
    with Outbox(path, max_bytes=CAP) as ob:
        ob.enqueue(MOMENT, {"n": -1}, seq_stream="guaranteed")
        assert moment_seqs(ob) == [last + 1]
        report = ob.take_drop_report()  # drops survive the restart until reported
        assert report is not None and report.total == last - 0 - (last - report.total)


def test_a_report_taken_in_a_batch_commits_with_it(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=CAP) as ob:
        for n in range(600):
            ob.enqueue(MOMENT, {"n": n, "pad": PAD}, seq_stream="guaranteed")
        with pytest.raises(RuntimeError), ob.batch():
            assert ob.take_drop_report() is not None
            ob.enqueue(MOMENT, {"kind": "data_dropped"}, seq_stream="guaranteed")
            raise RuntimeError("crash before the tick committed")
        report = ob.take_drop_report()
        assert report is not None  # not lost with the rolled-back tick
        with ob.batch():
            ob.enqueue(MOMENT, {"kind": "data_dropped", "count": report.total},
                       seq_stream="guaranteed")
        assert ob.take_drop_report() is None


def test_ticks_at_the_cap_account_for_every_seq(tmp_path: Path) -> None:
    """Every seq handed out is delivered (acked), still pending, or in a drop report."""
    with Outbox(tmp_path / "o.db", max_bytes=CAP) as ob:
        delivered: set[int] = set()
        reported: set[int] = set()
        counted = 0
        n = 0
        for i in range(120):
            n, report = tick(ob, n)
            reported |= reported_seqs(report)
            counted += report.total if report else 0
            if i % 7 == 0:  # the broker is back for a moment: 15 acks
                sent = ob.pending(15)
                delivered.update(m.seq for m in sent if m.seq is not None)
                ob.ack_many(m.row for m in sent)
        pending = set(moment_seqs(ob))
        assert max(pending) == n
        assert delivered | reported | pending == set(range(1, n + 1))
        assert not (delivered & pending) and not (reported & pending)
        assert not (delivered & reported) and counted == len(reported)  # exactly once


# -- model check -----------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("moment"), st.integers(10, 3000)),
        st.tuples(st.just("health"), st.integers(10, 3000)),
        st.tuples(st.just("state"), st.integers(0, 3)),
        st.tuples(st.just("ack"), st.integers(1, 30)),
        st.tuples(st.just("report"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_drop_accounting_matches_a_model(script: list[tuple[str, int]]) -> None:
    """Whatever happens: enqueue never raises, the newest guaranteed message is stored,
    and every guaranteed seq is pending, acked or reported dropped, exactly once."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "o.db"
        ob = Outbox(path, max_bytes=64 * 1024)
        issued = 0
        acked: set[int] = set()
        dropped: list[int] = []

        def take(report: DropReport | None) -> None:
            for rng in report.ranges if report else ():
                if rng.stream == "g":
                    assert rng.first_seq is not None and rng.last_seq is not None
                    assert rng.count <= rng.last_seq - rng.first_seq + 1
                    gone = [s for s in range(rng.first_seq, rng.last_seq + 1)
                            if s not in acked and s not in dropped]
                    dropped.extend(gone[: rng.count])

        try:
            for op, arg in script:
                if op == "moment":
                    issued += 1
                    assert ob.enqueue(MOMENT, {"pad": "m" * arg}, seq_stream="g") > 0
                    assert moment_seqs(ob)[-1] == issued
                elif op == "health":
                    ob.enqueue(HEALTH, {"pad": "h" * arg}, qos=0)
                elif op == "state":
                    ob.enqueue(STATE.format(arg), {"z": arg}, retain=True,
                               coalesce_key=f"state/{arg}")
                elif op == "ack":
                    sent = ob.pending(arg)
                    acked.update(m.seq for m in sent if m.topic == MOMENT and m.seq)
                    ob.ack_many(m.row for m in sent)
                elif op == "report":
                    take(ob.take_drop_report())
                else:
                    ob.close()
                    ob = Outbox(path, max_bytes=64 * 1024)
            take(ob.take_drop_report())
            pending = moment_seqs(ob)
            assert sorted([*acked, *dropped, *pending]) == list(range(1, issued + 1))
        finally:
            ob.close()


# -- dead letters, health figures ---------------------------------------------------------


def test_dead_letters_keep_reason_and_time_are_reported_and_bounded(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", dead_letter_limit=3, clock=clock) as ob:
        rows = [ob.enqueue(f"venue/bad/{i}/#", {"i": i}, seq_stream="g") for i in range(5)]
        ok = ob.enqueue(MOMENT, {"ok": True}, seq_stream="g")
        for row in rows:
            assert ob.dead_letter(row, "refused by the MQTT client: wildcard") is True
        assert ob.dead_letter(rows[0], "again") is False  # already moved
        assert [m.row for m in ob.pending(10)] == [ok]  # nothing blocks the good row
        assert ob.dead_letter_count() == 3  # only the latest are kept
        latest = ob.dead_letters()
        assert [d.topic for d in latest] == [f"venue/bad/{i}/#" for i in (4, 3, 2)]
        assert latest[0].reason.startswith("refused by the MQTT client")
        assert latest[0].dead_at > latest[0].created_at and latest[0].seq == 5
        report = ob.take_drop_report()
        assert report is not None
        (rng,) = report.ranges
        assert (rng.reason, rng.count, rng.first_seq, rng.last_seq) == ("dead_letter", 5, 1, 5)


def test_oldest_age_and_stats_for_health(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", clock=clock) as ob:
        assert ob.oldest_age_s() is None
        first = ob.enqueue(MOMENT, {}, seq_stream="g")  # at t0 + 1
        ob.enqueue(STATE.format("a"), {}, retain=True, coalesce_key="a")
        assert ob.oldest_age_s(now=clock.t + 100) == 101.0
        ob.ack(first)
        assert ob.oldest_age_s(now=clock.t + 100) == 100.0
        stats = ob.stats(now=clock.t + 100)
        assert (stats.depth, stats.oldest_age_s, stats.dead_letters) == (1, 100.0, 0)
        assert stats.max_bytes is None and stats.size_bytes > 0


def test_lanes_and_replay_boundary(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        m1 = ob.enqueue(MOMENT, {"n": 1}, seq_stream="g")
        s1 = ob.enqueue(STATE.format("a"), {"v": 1}, retain=True, coalesce_key="a")
        m2 = ob.enqueue(MOMENT, {"n": 2}, seq_stream="g")
        assert ob.last_row() == m2
        assert [m.row for m in ob.pending(10, lane="state")] == [s1]
        assert [m.row for m in ob.pending(10, lane="normal")] == [m1, m2]
        assert [m.row for m in ob.pending(10, lane="normal", max_row=m1)] == [m1]
        assert ob.pending(10, lane="state")[0].lane == "state"
        assert [m.kind for m in ob.pending(10)] == ["stream", "state", "stream"]


# -- schema upgrade, sqlite-utils ----------------------------------------------------------

V1_SCHEMA = (
    "CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE outbox_seq (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
    """CREATE TABLE outbox_messages (row INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
       payload TEXT NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, expiry_s INTEGER,
       created_at REAL NOT NULL, seq INTEGER, coalesce_key TEXT)""",
    "CREATE INDEX outbox_messages_coalesce ON outbox_messages (coalesce_key)"
    " WHERE coalesce_key IS NOT NULL",
    "INSERT INTO outbox_meta VALUES ('schema_version', '1')",
    "INSERT INTO outbox_seq VALUES ('guaranteed', 7)",
    "INSERT INTO outbox_messages VALUES (NULL, 'venue/p/moment/z/k', '{\"seq\":7}', 1, 0, NULL,"
    " 1.0, 7, NULL)",
    "INSERT INTO outbox_messages VALUES (NULL, 'venue/p/zone/z/state', '{}', 1, 1, NULL, 2.0,"
    " NULL, 'venue/p/zone/z/state')",
)


def test_a_schema_1_outbox_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with sqlite3.connect(path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
    with Outbox(path) as ob:
        pending = ob.pending(10)
        assert [(m.seq, m.kind) for m in pending] == [(7, "stream"), (None, "state")]
        ob.enqueue(MOMENT, {}, seq_stream="guaranteed")
        assert ob.pending(10)[-1].seq == 8  # the counter carried over
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM outbox_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)


def test_sqlite_utils_atomic_nests_with_savepoints_as_the_outbox_needs(tmp_path: Path) -> None:
    """The outbox relies on ``Database.atomic()`` (sqlite-utils >= 4.0): a nested block is
    a savepoint whose failure undoes only itself, inside a transaction opened by hand."""
    db = sqlite_utils.Database(tmp_path / "t.db", execute_plugins=False)
    db.execute("CREATE TABLE t (v INTEGER)")
    db.conn.execute("BEGIN")  # what Outbox.batch() does
    with db.atomic():
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError), db.atomic():
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError("undo only this block")
    assert db.conn.in_transaction
    db.conn.commit()
    assert [r[0] for r in db.execute("SELECT v FROM t")] == [1]
    db.close()


def test_a_full_disk_without_a_page_estimate_still_drops_oldest_and_accounts(
    tmp_path: Path,
) -> None:
    """When SQLite itself reports the disk full (no page estimate to act on first), the
    write is retried after dropping the oldest rows, and a batch whose transaction SQLite
    rolled back is stored again: nothing unaccounted, the newest kept, no exception."""
    with Outbox(tmp_path / "o.db", max_bytes=CAP) as ob:
        ob._free_pages = lambda: None  # type: ignore[method-assign]  # act like a full disk
        reported: set[int] = set()
        n = 0
        for _ in range(60):
            n, report = tick(ob, n)
            assert report is None or {r.reason for r in report.ranges} == {"storage_full"}
            reported |= reported_seqs(report)
        assert ob.full_events > 0  # SQLite really said "full"
        pending = moment_seqs(ob)
        assert pending[-1] == n and pending == sorted(pending)
        assert reported | set(pending) == set(range(1, n + 1))
        payloads = [json.loads(m.payload) for m in ob.pending(10_000)]
        assert all(p["seq"] == p["n"] for p in payloads)  # a re-stored batch kept its seq
