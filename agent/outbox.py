"""Durable outbox for MQTT messages: SQLite (WAL) between the moment engine and the broker.

Every guaranteed message is committed here before anything tries to publish it, and a row
is deleted only when the broker acknowledged it (PUBACK). A crash, a power cut or a broker
outage therefore costs at most duplicates, never a lost message.

Durability choice: ``journal_mode=WAL`` with ``synchronous=FULL``. With NORMAL a power cut
can roll back the last commits, and the publisher may already have sent one of them; the
restored stream counter would then hand the same ``seq`` to a different message, which a
consumer reads as a duplicate and silently drops. FULL fsyncs the WAL on every commit, so
anything the publisher can read is on the card. Commits are a few per second (moments,
zone states and batched acks), well within what an SD card does.

Ownership: one thread (the agent's asyncio loop) owns an ``Outbox``; SQLite enforces that
with ``check_same_thread``.

Full storage: when SQLite reports SQLITE_FULL (disk full, or the ``max_bytes`` cap), a
message is kept in a bounded in-memory overflow, in order, and written as soon as space
comes back (acks free pages; see ``flush_overflow``). While anything waits in the overflow,
new messages queue behind it, so order is kept. Its ``seq`` is assigned when the row is
finally written, so a message lost from memory in a crash never burns a number that a
consumer saw. Only when the overflow is full too does ``enqueue`` raise
``OutboxFullError``; the message was then not accepted and the caller still holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

__all__ = ["OutMessage", "Outbox", "OutboxError", "OutboxFullError", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox_seq (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
    # AUTOINCREMENT: a row number is never reused, even after the newest row was acked and
    # deleted, so the publisher's "after_row" cursor and a late PUBACK never hit another
    # message.
    """CREATE TABLE IF NOT EXISTS outbox_messages (
        row INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        expiry_s INTEGER,
        created_at REAL NOT NULL,
        seq INTEGER,
        coalesce_key TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_messages_coalesce"
    " ON outbox_messages (coalesce_key) WHERE coalesce_key IS NOT NULL",
)


class OutboxError(RuntimeError):
    """The outbox file cannot be used (unwritable, corrupt, newer schema)."""


class OutboxFullError(OutboxError):
    """Storage is full and the memory overflow too: the message was not accepted."""


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One stored message, as the publisher sends it."""

    row: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None
    created_at: float
    seq: int | None
    coalesce_key: str | None


@dataclass(slots=True)
class _Parked:
    """A message waiting in memory for storage space; payload is a JSON snapshot."""

    topic: str
    payload_json: str
    qos: int
    retain: bool
    expiry_s: int | None
    created_at: float
    seq_stream: str | None
    coalesce_key: str | None


class Outbox:
    """SQLite outbox with per-stream persistent ``seq`` counters and latest-wins coalescing.

    ``max_bytes`` caps the database file (SQLite ``max_page_count``) so a long broker outage
    cannot fill the card the OS and logs live on. ``overflow_limit`` bounds the in-memory
    overflow used while storage is full; 0 disables it (``enqueue`` then raises at once).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        overflow_limit: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._overflow: deque[_Parked] = deque()
        self._overflow_limit = overflow_limit
        self._full_logged = False
        self.full_events = 0
        self._batch: list[_Parked] | None = None  # messages written in the open batch()
        self._db = self._open(max_bytes)

    # -- opening -------------------------------------------------------------------------

    def _open(self, max_bytes: int | None) -> sqlite_utils.Database:
        where = str(self.path)
        if not self.path.parent.is_dir():
            raise OutboxError(f"outbox {where}: directory {self.path.parent} does not exist")
        try:
            db = sqlite_utils.Database(self.path, execute_plugins=False)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {where}: {exc}") from exc
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            # Reading the header here turns "not a database" into a clear error early.
            db.execute("PRAGMA schema_version").fetchone()
            db.enable_wal()
            db.execute("PRAGMA synchronous = FULL")
            # Truncate the WAL after checkpoints, so disk space freed by acks comes back.
            db.execute("PRAGMA journal_size_limit = 4194304")
            if max_bytes is not None:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {max(2, max_bytes // page)}")
            with db.atomic():
                for statement in _SCHEMA:
                    db.execute(statement)
                self._check_version(db)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(f"outbox {where} is corrupt ({check}); move it aside")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise OutboxError(
                f"cannot use outbox {where}: {exc} (unwritable, or not an outbox database)"
            ) from exc
        except OutboxError:
            db.close()
            raise
        return db

    def _check_version(self, db: sqlite_utils.Database) -> None:
        row = db.execute("SELECT value FROM outbox_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO outbox_meta (key, value) VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema version {row[0]}, newer than this "
                f"venue-agent understands ({SCHEMA_VERSION}); upgrade venue-agent"
            )

    def close(self) -> None:
        """Close the database; parked overflow messages are lost (and were never sent)."""
        if self._overflow:
            log.error(
                "outbox %s closed with %d messages still waiting for disk space; they are lost",
                self.path,
                len(self._overflow),
            )
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write every ``enqueue`` inside the block in one transaction: one fsync per tick
        instead of one per message (20 zone states a second would otherwise be 20 fsyncs
        on an SD card).

        Nothing is lost if storage fills up: a message that no longer fits waits in the
        memory overflow as usual, and if the final commit itself fails for lack of space,
        the whole batch is rolled back and its messages go to the front of the overflow,
        in order, to be written (and given their ``seq``) when space returns.
        """
        if self._batch is not None:  # nested: part of the outer batch
            yield
            return
        self._batch = []
        try:
            self._db.conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.conn.rollback()
                raise
            try:
                self._db.conn.commit()
            except sqlite3.OperationalError as exc:
                self._db.conn.rollback()
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise OutboxError(f"outbox {self.path}: write failed: {exc}") from exc
                for msg in reversed(self._batch):
                    self._overflow.appendleft(msg)
                self.full_events += 1
                log.warning("outbox %s is full; %d messages of this tick wait in memory",
                            self.path, len(self._batch))
        finally:
            self._batch = None

    def enqueue(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        seq_stream: str | None = None,
        coalesce_key: str | None = None,
    ) -> int:
        """Store a message; return its row number, or 0 if it waits in the memory overflow.

        With ``seq_stream`` the stream's persistent counter is incremented and written into
        the stored payload as ``seq`` in the same transaction as the row. With
        ``coalesce_key`` any stored message with that key is replaced (latest wins). The
        caller's ``payload`` dict is not modified.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        parked = _Parked(
            topic=topic,
            payload_json=json.dumps(payload, separators=(",", ":")),
            qos=qos,
            retain=retain,
            expiry_s=expiry_s,
            created_at=self._clock(),
            seq_stream=seq_stream,
            coalesce_key=coalesce_key,
        )
        if self._overflow:
            self.flush_overflow()
        if not self._overflow:
            try:
                row = self._insert(parked)
            except OutboxFullError:
                self._recover_batch()
            else:
                if self._batch is not None:
                    self._batch.append(parked)
                return row
        return self._park(parked)

    def _insert(self, msg: _Parked) -> int:
        try:
            with self._db.atomic():
                seq = self._next_seq_in_tx(msg.seq_stream) if msg.seq_stream else None
                body = msg.payload_json
                if seq is not None:
                    body = json.dumps({**json.loads(body), "seq": seq}, separators=(",", ":"))
                if msg.coalesce_key is not None:
                    self._db.execute(
                        "DELETE FROM outbox_messages WHERE coalesce_key = ?", [msg.coalesce_key]
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox_messages (topic, payload, qos, retain, expiry_s,"
                    " created_at, seq, coalesce_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        msg.topic,
                        body,
                        msg.qos,
                        int(msg.retain),
                        msg.expiry_s,
                        msg.created_at,
                        seq,
                        msg.coalesce_key,
                    ],
                )
                row = cur.lastrowid
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise OutboxFullError(f"outbox {self.path} is full: {exc}") from exc
            raise OutboxError(f"outbox {self.path}: write failed: {exc}") from exc
        if self._full_logged and not self._overflow:
            log.warning("outbox %s has space again; all held messages are stored", self.path)
            self._full_logged = False
        assert row is not None
        return row

    def _recover_batch(self) -> None:
        """After SQLITE_FULL inside a batch: SQLite may have rolled back the whole
        transaction, not just the failed statement. Then the batch's earlier messages are
        no longer stored: put them back at the front of the overflow, in order, and open a
        new transaction for the rest of the batch."""
        if self._batch is None or self._db.conn.in_transaction:
            return
        for msg in reversed(self._batch):
            self._overflow.appendleft(msg)
        self._batch.clear()
        self._db.conn.execute("BEGIN")

    def _next_seq_in_tx(self, stream: str) -> int:
        self._db.execute(
            "INSERT INTO outbox_seq (stream, last_seq) VALUES (?, 1)"
            " ON CONFLICT (stream) DO UPDATE SET last_seq = last_seq + 1",
            [stream],
        )
        return int(
            self._db.execute(
                "SELECT last_seq FROM outbox_seq WHERE stream = ?", [stream]
            ).fetchone()[0]
        )

    def _park(self, msg: _Parked) -> int:
        self.full_events += 1
        if msg.coalesce_key is not None:
            # Latest wins in memory too, so zone states do not eat the overflow.
            for i, old in enumerate(self._overflow):
                if old.coalesce_key == msg.coalesce_key:
                    del self._overflow[i]
                    break
        if len(self._overflow) >= self._overflow_limit:
            raise OutboxFullError(
                f"outbox {self.path} is full and {len(self._overflow)} messages already wait "
                f"in memory; message for {msg.topic} not accepted"
            )
        if not self._full_logged:
            log.warning(
                "outbox %s is full (disk or max_bytes); holding messages in memory "
                "(up to %d) until acks free space",
                self.path,
                self._overflow_limit,
            )
            self._full_logged = True
        self._overflow.append(msg)
        return 0

    def flush_overflow(self) -> int:
        """Write messages waiting in memory, in order, as far as space allows; return count."""
        written = 0
        while self._overflow:
            try:
                self._insert(self._overflow[0])
            except OutboxFullError:
                self._recover_batch()
                break
            msg = self._overflow.popleft()
            if self._batch is not None:
                self._batch.append(msg)
            written += 1
        return written

    def ack(self, row: int) -> bool:
        """Delete an acknowledged row; False if it was already gone (replaced or acked)."""
        return self.ack_many([row]) == 1

    def ack_many(self, rows: Iterable[int]) -> int:
        """Delete acknowledged rows in one transaction (one fsync); return how many existed."""
        rows = list(rows)
        if not rows:
            return 0
        with self._db.atomic():
            deleted = 0
            for row in rows:
                deleted += self._db.execute(
                    "DELETE FROM outbox_messages WHERE row = ?", [row]
                ).rowcount
        if self._overflow:
            # Acks free pages: the first chance to store what waits in memory. The deletes
            # are committed; a failure here leaves the overflow for the next try.
            try:
                self.flush_overflow()
            except OutboxError as exc:
                log.error("%s", exc)
        return deleted

    # -- reading -------------------------------------------------------------------------

    def pending(self, limit: int, after_row: int = 0) -> list[OutMessage]:
        """Return up to ``limit`` stored messages with row > ``after_row``, in row order."""
        cur = self._db.execute(
            "SELECT row, topic, payload, qos, retain, expiry_s, created_at, seq, coalesce_key"
            " FROM outbox_messages WHERE row > ? ORDER BY row LIMIT ?",
            [after_row, limit],
        )
        return [
            OutMessage(
                row=r[0],
                topic=r[1],
                payload=r[2].encode(),
                qos=r[3],
                retain=bool(r[4]),
                expiry_s=r[5],
                created_at=r[6],
                seq=r[7],
                coalesce_key=r[8],
            )
            for r in cur.fetchall()
        ]

    def depth(self) -> int:
        """Messages not yet acknowledged: stored rows plus those waiting in memory."""
        stored = self._db.execute("SELECT count(*) FROM outbox_messages").fetchone()[0]
        return int(stored) + len(self._overflow)

    @property
    def overflow_depth(self) -> int:
        """Messages waiting in memory for storage space."""
        return len(self._overflow)

    def next_seq(self, stream: str) -> int:
        """The ``seq`` the next stored message of ``stream`` will get (a peek for status)."""
        row = self._db.execute(
            "SELECT last_seq FROM outbox_seq WHERE stream = ?", [stream]
        ).fetchone()
        return (int(row[0]) if row else 0) + 1
