"""SQLite outbox: ordering, persistent seq, coalescing, crash safety, one transaction per tick."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.outbox import SCHEMA_VERSION, Outbox, OutboxError

REPO = Path(__file__).resolve().parent.parent
MOMENT = "venue/park/moment/dino-queue/queue_long"
STATE = "venue/park/zone/dino-queue/state"


def seqs(outbox: Outbox, stream_topic: str = MOMENT) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in outbox.pending(100_000) if m.topic == stream_topic]


def test_enqueue_pending_ack_in_row_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        rows = [ob.enqueue(MOMENT, {"n": i}, retain=i == 1, expiry_s=60 if i == 2 else None)
                for i in range(5)]
        assert rows == sorted(rows) and rows[0] > 0
        pending = ob.pending(3)
        assert [json.loads(m.payload)["n"] for m in pending] == [0, 1, 2]
        assert pending[1].retain and not pending[0].retain
        assert pending[2].expiry_s == 60 and pending[0].expiry_s is None
        assert pending[0].qos == 1
        assert [m.row for m in ob.pending(10, after_row=rows[2])] == rows[3:]
        assert ob.ack(rows[0]) is True
        assert ob.ack(rows[0]) is False  # a duplicate PUBACK is harmless
        assert ob.depth() == 4


def test_enqueue_does_not_modify_the_callers_payload(tmp_path: Path) -> None:
    payload = {"id": "x"}
    with Outbox(tmp_path / "o.db") as ob:
        ob.enqueue(MOMENT, payload, seq_stream="g")
        assert payload == {"id": "x"}
        assert json.loads(ob.pending(1)[0].payload) == {"id": "x", "seq": 1}


def test_seq_continues_across_reopen_and_streams_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        for _ in range(3):
            ob.enqueue(MOMENT, {}, seq_stream="g")
        ob.enqueue(STATE, {}, seq_stream="zone/dino-queue")
        ob.ack_many(m.row for m in ob.pending(10))  # acked rows must not free their seq
        assert ob.next_seq("g") == 4
    with Outbox(path) as ob:
        assert ob.next_seq("g") == 4
        assert ob.next_seq("never-used") == 1
        ob.enqueue(MOMENT, {}, seq_stream="g")
        ob.enqueue(STATE, {}, seq_stream="zone/dino-queue")
        assert seqs(ob) == [4]
        assert seqs(ob, STATE) == [2]


def test_rows_are_never_reused_after_the_newest_row_is_acked(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        row = ob.enqueue(MOMENT, {})
        ob.ack(row)
    with Outbox(path) as ob:
        assert ob.enqueue(MOMENT, {}) > row


def test_coalescing_keeps_only_the_latest_and_moves_it_to_the_end(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        a = ob.enqueue(STATE, {"v": 1}, retain=True, coalesce_key="state/dino")
        ob.enqueue(MOMENT, {"v": "m"})
        in_flight = ob.pending(10)  # the publisher has sent a and the moment
        c = ob.enqueue(STATE, {"v": 2}, retain=True, coalesce_key="state/dino")
        assert [json.loads(m.payload)["v"] for m in ob.pending(10)] == ["m", 2]
        # The PUBACK for the replaced row arrives: it deletes nothing and c stays pending.
        assert in_flight[0].row == a
        assert ob.ack(a) is False
        assert [m.row for m in ob.pending(10, after_row=in_flight[-1].row)] == [c]
        assert ob.depth() == 2


def test_newer_schema_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE outbox_meta SET value = ? WHERE key = 'schema_version'",
            [str(SCHEMA_VERSION + 1)],
        )
    with pytest.raises(OutboxError, match=str(path)):
        Outbox(path)


def test_corrupt_file_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(OutboxError, match=str(path)):
        Outbox(path)


def test_unusable_paths_are_refused_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match=str(tmp_path)):
        Outbox(tmp_path)  # a directory, not a file
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OutboxError, match="does not exist"):
        Outbox(not_a_dir / "o.db")


def test_uses_wal_and_full_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_acks_commit_without_their_own_fsync(tmp_path: Path) -> None:
    # Deleting acknowledged rows needs no fsync of its own: a power cut that undoes it
    # brings back rows the broker had (same id and seq: a duplicate, never a gap), and
    # the next FULL commit syncs the WAL with it. Storing stays FULL.
    with Outbox(tmp_path / "o.db") as ob:
        rows = [ob.enqueue("t/a", {"n": i}, seq_stream="s") for i in range(3)]
        statements: list[str] = []
        ob._db.conn.set_trace_callback(statements.append)
        assert ob.ack_many(rows[:2]) == 2
        ob._db.conn.set_trace_callback(None)
        text = [s.upper().replace(" ", "") for s in statements]
        first_delete = next(i for i, s in enumerate(text) if s.startswith("DELETE"))
        relaxed = [i for i, s in enumerate(text) if s == "PRAGMASYNCHRONOUS=NORMAL"]
        assert relaxed and relaxed[0] < first_delete, statements
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        assert [m.row for m in ob.pending(10)] == rows[2:]
        ob.enqueue("t/a", {"n": 3}, seq_stream="s")
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    with Outbox(tmp_path / "o.db") as ob:  # the deletes were kept
        assert [json.loads(m.payload)["seq"] for m in ob.pending(10)] == [3, 4]


# -- full storage: see test_outbox_drops.py (the cap drops the oldest, never the newest) --


# -- crash safety ----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.outbox import Outbox

    ob = Outbox(Path(sys.argv[1]))
    i = 0
    while True:
        ob.enqueue("venue/park/zone/dino-queue/state", {"i": i}, retain=True,
                   seq_stream="zone", coalesce_key="state/dino")
        ob.enqueue("venue/park/moment/dino-queue/queue_long", {"i": i, "pad": "x" * 200},
                   seq_stream="g")
        # enqueue() returned, so the row is committed: report it.
        print(i, ob.next_seq("g") - 1, flush=True)
        i += 1
    """
)


def test_sigkill_mid_write_keeps_committed_rows_and_never_reuses_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    reported: list[tuple[int, int]] = []
    for line in child.stdout:
        i, seq = map(int, line.split())
        reported.append((i, seq))
        if len(reported) >= 400:
            break
    child.send_signal(signal.SIGKILL)  # while it keeps writing
    child.wait()
    child.stdout.close()

    with sqlite3.connect(path) as conn:  # recovery from the WAL, then a full check
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Outbox(path) as ob:
        moments = [json.loads(m.payload) for m in ob.pending(100_000) if m.topic == MOMENT]
        states = [m for m in ob.pending(100_000) if m.coalesce_key == "state/dino"]
        got = {p["i"]: p["seq"] for p in moments}
        for i, seq in reported:  # every reported commit survived with its seq
            assert got[i] == seq == i + 1
        top = len(moments)
        assert [p["seq"] for p in moments] == list(range(1, top + 1))  # no gap, no repeat
        assert len(states) == 1
        assert ob.next_seq("g") == top + 1
        ob.enqueue(MOMENT, {"after": "crash"}, seq_stream="g")
        assert seqs(ob)[-1] == top + 1


# -- model check -----------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("moment"), st.integers(0, 2)),
        st.tuples(st.just("state"), st.integers(0, 2)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_outbox_matches_a_simple_model(script: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "o.db"
        ob = Outbox(path)
        model: list[tuple[str | None, dict[str, object]]] = []  # (coalesce key, payload)
        next_seq: dict[str, int] = {}
        try:
            for op, arg in script:
                if op == "moment":
                    stream = f"s{arg}"
                    next_seq[stream] = next_seq.get(stream, 0) + 1
                    ob.enqueue(MOMENT, {"k": arg}, seq_stream=stream)
                    model.append((None, {"k": arg, "seq": next_seq[stream]}))
                elif op == "state":
                    key = f"z{arg}"
                    ob.enqueue(STATE, {"z": arg}, coalesce_key=key)
                    model = [m for m in model if m[0] != key] + [(key, {"z": arg})]
                elif op == "ack":
                    pending = ob.pending(100)
                    if arg < len(pending):
                        ob.ack(pending[arg].row)
                        del model[arg]
                else:
                    ob.close()
                    ob = Outbox(path)
                assert [json.loads(m.payload) for m in ob.pending(100)] == [p for _, p in model]
                assert ob.depth() == len(model)
        finally:
            ob.close()


def test_batch_is_one_transaction(tmp_path: Path) -> None:
    import sqlite3 as _sqlite3

    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        with ob.batch():
            for i in range(5):
                ob.enqueue(f"t/{i}", {"i": i}, seq_stream="s")
            # another connection sees nothing until the batch commits
            with _sqlite3.connect(path) as other:
                assert other.execute("select count(*) from outbox_messages").fetchone()[0] == 0
        with _sqlite3.connect(path) as other:
            assert other.execute("select count(*) from outbox_messages").fetchone()[0] == 5
        assert [m.seq for m in ob.pending(10)] == [1, 2, 3, 4, 5]
