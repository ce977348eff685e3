"""Durable outbox for MQTT messages: SQLite (WAL) between the moment engine and the broker.

Every guaranteed message is committed here before anything tries to publish it, and a row
is deleted only when the broker acknowledged it (PUBACK). A crash, a power cut or a broker
outage therefore costs at most duplicates, never a silent loss.

Durability choice: ``journal_mode=WAL`` with ``synchronous=FULL``. With NORMAL a power cut
can roll back the last commits, and the publisher may already have sent one of them; the
restored stream counter would then hand the same ``seq`` to a different message, which a
consumer reads as a duplicate and silently drops. FULL fsyncs the WAL on every commit, so
anything the publisher can read is on the card. Commits are a few per second (one per tick
with ``batch()``, and batched acks), well within what an SD card does. Deleting acknowledged
rows (``ack_many``) commits without an fsync of its own: undoing it can only bring back
rows the broker already had (duplicates), and the next FULL commit syncs it too.

Ownership: one thread (the agent's asyncio loop) owns an ``Outbox``; SQLite enforces that
with ``check_same_thread``.

Bounded disk, honest drops: ``max_bytes`` caps the database file (SQLite
``max_page_count``). A message always gets its ``seq`` when it is enqueued. When the store
is at its cap, room is made *before* writing, oldest first, in this order: dead letters,
health rows (QoS 0), then the guaranteed stream, and a zone's current state only as a last
resort (superseded zone state never piles up: latest wins at enqueue). A dropped row keeps
the ``seq`` it had, so a consumer sees a gap, and every drop is counted per stream with the
``seq`` and time range of what went (``take_drop_report()``), so the gateway can say so in
a ``data_dropped`` moment. Only a message that cannot fit at all (larger than
``max_message_bytes``, or the disk itself is full and nothing more can be freed) is
refused: ``enqueue`` returns 0, the refusal is counted and its ``seq`` is burnt, so that
gap is visible too. ``enqueue`` never raises because storage is full.

Dead letters: a row the client or the broker refuses (invalid topic, too large, MQTT 5
PUBACK "not authorized") is moved by the publisher to ``outbox_dead`` with the reason and
the time (``dead_letter()``), so it never blocks the rows behind it. That table keeps the
latest ``dead_letter_limit`` rows for inspection.

Lanes (for the publisher's replay order): rows with a ``coalesce_key`` (retained zone
state, latest wins) form the *state* lane and are sent before anything else; all other
rows form the *normal* lane, in row order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

__all__ = [
    "SCHEMA_VERSION",
    "DeadLetter",
    "DropRange",
    "DropReport",
    "Lane",
    "OutMessage",
    "Outbox",
    "OutboxError",
    "OutboxFullError",
    "OutboxStats",
]

SCHEMA_VERSION = 2

log = logging.getLogger(__name__)

Lane = Literal["state", "normal"]

# Row kinds. A superseded state row is deleted when its successor is enqueued (latest
# wins), so at the cap it has already gone first; what remains is dropped in this order:
# health, then the oldest stream rows, and a zone's current state only when nothing else
# is left (one row per zone, and the next tick replaces it anyway).
KIND_HEALTH = "health"  # QoS 0 rows: a later health message says the same, newer
KIND_STATE = "state"  # rows with a coalesce_key: retained zone state, latest wins
KIND_STREAM = "stream"  # everything else, above all the guaranteed stream
_DROP_ORDER = (KIND_HEALTH, KIND_STREAM, KIND_STATE)

REASON_FULL = "storage_full"  # dropped (oldest first) to make room at the cap
REASON_TOO_LARGE = "too_large"  # refused: larger than max_message_bytes
REASON_NO_SPACE = "no_space"  # refused: nothing more could be freed (disk full)
REASON_DEAD = "dead_letter"  # refused by the MQTT client or the broker; see outbox_dead

_TABLES = (
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox_seq (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
    # AUTOINCREMENT: a row number is never reused, even after the newest row was acked and
    # deleted, so the publisher's cursors and a late PUBACK never hit another message.
    """CREATE TABLE IF NOT EXISTS outbox_messages (
        row INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        expiry_s INTEGER,
        created_at REAL NOT NULL,
        seq INTEGER,
        coalesce_key TEXT,
        kind TEXT NOT NULL DEFAULT 'stream',
        stream TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS outbox_dead (
        row INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created_at REAL NOT NULL,
        seq INTEGER,
        stream TEXT,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL
    )""",
    # Drops not yet reported (take_drop_report), one row per stream and reason.
    """CREATE TABLE IF NOT EXISTS outbox_drops (
        stream TEXT NOT NULL,
        reason TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_seq INTEGER,
        last_seq INTEGER,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        PRIMARY KEY (stream, reason)
    )""",
)
_MIGRATE_V1 = (
    "ALTER TABLE outbox_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'stream'",
    "ALTER TABLE outbox_messages ADD COLUMN stream TEXT",
    "UPDATE outbox_messages SET kind = 'state' WHERE coalesce_key IS NOT NULL",
    "UPDATE outbox_messages SET kind = 'health' WHERE qos = 0 AND coalesce_key IS NULL",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS outbox_messages_coalesce"
    " ON outbox_messages (coalesce_key) WHERE coalesce_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS outbox_messages_kind ON outbox_messages (kind, row)",
)
_COLUMNS = "row, topic, payload, qos, retain, expiry_s, created_at, seq, coalesce_key, kind, stream"

# Pages kept free beyond a message's own estimate: index entries, a b-tree split, the
# drop bookkeeping written in the same transaction.
_RESERVE_PAGES = 4


class OutboxError(RuntimeError):
    """The outbox file cannot be used (unwritable, corrupt, newer schema)."""


class OutboxFullError(OutboxError):
    """Kept for callers written against the old API; ``enqueue`` no longer raises it."""


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
    kind: str = KIND_STREAM  # health | state | stream
    stream: str | None = None  # the seq stream, if any

    @property
    def lane(self) -> Lane:
        return "state" if self.coalesce_key is not None else "normal"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the MQTT client or broker refused, kept for inspection."""

    row: int
    topic: str
    payload: bytes
    seq: int | None
    stream: str | None
    created_at: float
    reason: str
    dead_at: float


@dataclass(frozen=True, slots=True)
class DropRange:
    """What was dropped from one stream for one reason since the last report.

    ``stream`` is the seq stream name (``guaranteed``, ``state``) or, for rows without
    one, their kind (``health``, ``stream``). ``first_seq``/``last_seq`` bound the ``seq``
    values that went (None without a seq stream; not every seq inside the range went, a
    dropped range may have holes where messages were delivered). ``first_at``/``last_at``
    are the wall-clock times (Unix seconds) the first and last dropped message were
    enqueued.
    """

    stream: str
    reason: str  # storage_full | too_large | no_space | dead_letter
    count: int
    first_seq: int | None
    last_seq: int | None
    first_at: float
    last_at: float


@dataclass(frozen=True, slots=True)
class DropReport:
    """Everything dropped or refused since the previous ``take_drop_report()``."""

    ranges: tuple[DropRange, ...]

    @property
    def total(self) -> int:
        return sum(r.count for r in self.ranges)

    def by_stream(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.ranges:
            out[r.stream] = out.get(r.stream, 0) + r.count
        return out


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot for health."""

    depth: int  # rows waiting for a PUBACK
    oldest_age_s: float | None  # age of the oldest waiting row; None when empty
    dead_letters: int  # rows in the dead-letter table
    dropped: int  # rows dropped at the cap since this Outbox was opened
    refused: int  # messages refused (too large / no space) since opened
    size_bytes: int  # database pages in use (without the WAL)
    max_bytes: int | None


@dataclass(slots=True)
class _Msg:
    """A message on its way in; payload is a JSON snapshot without ``seq``."""

    topic: str
    payload_json: str
    qos: int
    retain: bool
    expiry_s: int | None
    created_at: float
    seq_stream: str | None
    coalesce_key: str | None

    @property
    def kind(self) -> str:
        if self.coalesce_key is not None:
            return KIND_STATE
        return KIND_HEALTH if self.qos == 0 else KIND_STREAM

    @property
    def size(self) -> int:
        return len(self.payload_json) + len(self.topic) + len(self.coalesce_key or "")


class _StorageFull(Exception):
    """SQLITE_FULL inside a write; SQLite may have rolled back the whole transaction."""


class Outbox:
    """SQLite outbox with per-stream persistent ``seq`` counters, latest-wins coalescing,
    a byte cap with an oldest-first drop policy, and a dead-letter table.

    ``max_bytes`` caps the database file (SQLite ``max_page_count``; the WAL adds up to
    4 MiB) so a long broker outage cannot fill the card the OS and logs live on.
    ``max_message_bytes`` refuses a single message larger than that (default: an eighth of
    ``max_bytes``; no limit without ``max_bytes``). ``overflow_limit`` is accepted for
    old callers and ignored: nothing waits in memory any more.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        max_message_bytes: int | None = None,
        dead_letter_limit: int = 1000,
        overflow_limit: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        del overflow_limit  # the memory overflow is gone; see the module docstring
        self.path = Path(path)
        self._clock = clock
        self._max_bytes = max_bytes
        if max_message_bytes is None and max_bytes is not None:
            max_message_bytes = max(1024, max_bytes // 8)
        self._max_message_bytes = max_message_bytes
        self._dead_letter_limit = max(0, dead_letter_limit)
        self._batch: list[_Msg] | None = None  # messages stored in the open batch()
        self._max_pages: int | None = None
        self._page_size = 4096
        self._dropped_total = 0
        self._refused_total = 0
        self._unrecorded: list[tuple[str, str, int | None, float]] = []  # drops not in the db
        self.full_events = 0  # times SQLite reported the disk (or the cap) full
        self._drop_logged_at = -math.inf
        self._drops_unlogged = 0
        self._drop_streams: set[str] = set()
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
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            if max_bytes is not None:
                self._max_pages = max(16, max_bytes // self._page_size)
                db.execute(f"PRAGMA max_page_count = {self._max_pages}")
            with db.atomic():
                for statement in _TABLES:
                    db.execute(statement)
                self._check_version(db)
                for statement in _INDEXES:
                    db.execute(statement)
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
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema version {row[0]}, newer than this "
                f"venue-agent understands ({SCHEMA_VERSION}); upgrade venue-agent"
            )
        if version == 1:
            # v1 rows stay pending and keep their seq; they only lack kind and stream.
            for statement in _MIGRATE_V1:
                db.execute(statement)
            log.info("outbox %s upgraded from schema 1 to %d", self.path, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            db.execute(
                "UPDATE outbox_meta SET value = ? WHERE key = 'schema_version'",
                [str(SCHEMA_VERSION)],
            )

    def close(self) -> None:
        """Close the database. Nothing waits in memory: what was accepted is on disk."""
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
        on an SD card). ``take_drop_report()`` inside the block commits with it, so a
        report taken and the ``data_dropped`` moment enqueued for it are stored together.

        If the final commit fails for lack of disk space, the batch is rolled back and its
        messages are stored again one by one, with the usual drop policy.
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
                self.full_events += 1
                again, self._batch = self._batch, None
                log.warning("outbox %s: disk full at commit; storing %d messages one by one",
                            self.path, len(again))
                for msg in again:
                    self._store(msg)
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
        """Store a message; return its row number, or 0 if it was refused (too large for
        the store, or no space could be freed: counted in the drop report).

        With ``seq_stream`` the stream's persistent counter is incremented and written into
        the stored payload as ``seq`` in the same transaction as the row. With
        ``coalesce_key`` any stored message with that key is replaced (latest wins). QoS 0
        rows are *health* (dropped first at the cap), rows with a ``coalesce_key`` are
        *state*, all others the *stream*. The caller's ``payload`` dict is not modified.
        Never raises because storage is full.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        msg = _Msg(
            topic=topic,
            payload_json=json.dumps(payload, separators=(",", ":")),
            qos=qos,
            retain=retain,
            expiry_s=expiry_s,
            created_at=self._clock(),
            seq_stream=seq_stream,
            coalesce_key=coalesce_key,
        )
        return self._store(msg)

    def _store(self, msg: _Msg, *, depth: int = 0) -> int:
        if self._max_message_bytes is not None and msg.size > self._max_message_bytes:
            log.error("outbox %s: message for %s is %d bytes, more than max_message_bytes "
                      "(%d); refused", self.path, msg.topic, msg.size, self._max_message_bytes)
            return self._refuse(msg, REASON_TOO_LARGE)
        for attempt in range(3):
            try:
                row = self._write(msg, attempt)
            except _StorageFull:
                self.full_events += 1
                if depth < 2:
                    self._recover_batch(depth)
                continue
            if self._batch is not None:
                self._batch.append(msg)
            return row
        log.error("outbox %s: no space for a message for %s even after dropping old data; "
                  "refused", self.path, msg.topic)
        return self._refuse(msg, REASON_NO_SPACE)

    def _write(self, msg: _Msg, attempt: int) -> int:
        """One savepoint: make room, assign seq, coalesce, insert. Raises _StorageFull."""
        try:
            with self._db.atomic():
                if msg.coalesce_key is not None:
                    self._db.execute(
                        "DELETE FROM outbox_messages WHERE coalesce_key = ?", [msg.coalesce_key]
                    )
                # attempt > 0: the page estimate was not enough (or there is no cap and the
                # disk is full): free more than the estimate says.
                self._make_room(msg, extra_bytes=attempt * max(64 * 1024, 4 * msg.size))
                seq = self._bump_seq(msg.seq_stream) if msg.seq_stream else None
                body = msg.payload_json
                if seq is not None:
                    body = json.dumps({**json.loads(body), "seq": seq}, separators=(",", ":"))
                cur = self._db.execute(
                    f"INSERT INTO outbox_messages ({_COLUMNS}) VALUES"
                    " (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        msg.topic,
                        body,
                        msg.qos,
                        int(msg.retain),
                        msg.expiry_s,
                        msg.created_at,
                        seq,
                        msg.coalesce_key,
                        msg.kind,
                        msg.seq_stream,
                    ],
                )
                row = cur.lastrowid
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise _StorageFull from exc
            raise OutboxError(f"outbox {self.path}: write failed: {exc}") from exc
        assert row is not None
        return row

    def _recover_batch(self, depth: int) -> None:
        """After SQLITE_FULL inside a batch SQLite may have rolled back the whole
        transaction, not just the failed statement: then the batch's earlier messages are
        gone. Open a new transaction and store them again (same seq values: the counters
        were rolled back with them)."""
        if self._batch is None or self._db.conn.in_transaction:
            return
        again, self._batch = self._batch, []
        self._db.conn.execute("BEGIN")
        for msg in again:
            self._store(msg, depth=depth + 1)

    def _bump_seq(self, stream: str) -> int:
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

    def _free_pages(self) -> int | None:
        if self._max_pages is None:
            return None
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(self._max_pages - pages + free)

    def _make_room(self, msg: _Msg, *, extra_bytes: int = 0) -> None:
        """Inside the write's savepoint: drop the oldest droppable rows until the message
        fits with a margin (by page count under ``max_bytes``), and at least
        ``extra_bytes`` when asked. Dropped rows are recorded for the drop report."""
        usable = self._page_size - 64
        need = math.ceil((msg.size + 64) / usable) + _RESERVE_PAGES
        freed = 0
        dropped: list[tuple[str, int | None, float]] = []  # (stream, seq, created_at)
        while True:
            free = self._free_pages()
            if (free is None or free >= need) and freed >= extra_bytes:
                break
            victim = self._next_victim()
            if victim is None:
                break  # nothing left to drop; the insert may still fit
            table, row, size, stream, seq, created_at = victim
            self._db.execute(f"DELETE FROM {table} WHERE row = ?", [row])
            freed += size
            if table == "outbox_messages":
                dropped.append((stream, seq, created_at))
        if dropped:
            self._dropped_total += len(dropped)
            self._record_drops(REASON_FULL, dropped)
            self._log_drops(len(dropped), {s for s, _, _ in dropped})

    def _log_drops(self, count: int, streams: set[str]) -> None:
        """At the cap every few enqueues drop something: log once, then once a minute."""
        self._drops_unlogged += count
        self._drop_streams |= streams
        now = time.monotonic()
        if now - self._drop_logged_at < 60.0:
            return
        log.warning(
            "outbox %s is at its cap (%s bytes): dropped the %d oldest messages (%s) to "
            "keep the newest; see the data_dropped report",
            self.path, self._max_bytes or "disk full", self._drops_unlogged,
            ", ".join(sorted(self._drop_streams)),
        )
        self._drop_logged_at = now
        self._drops_unlogged = 0
        self._drop_streams = set()

    def _next_victim(self) -> tuple[str, int, int, str, int | None, float] | None:
        r = self._db.execute(
            "SELECT row, length(payload) + length(topic) FROM outbox_dead ORDER BY row LIMIT 1"
        ).fetchone()
        if r is not None:
            return ("outbox_dead", r[0], r[1], "", None, 0.0)
        for kind in _DROP_ORDER:
            r = self._db.execute(
                "SELECT row, length(payload) + length(topic), coalesce(stream, kind), seq,"
                " created_at FROM outbox_messages WHERE kind = ? ORDER BY row LIMIT 1",
                [kind],
            ).fetchone()
            if r is not None:
                return ("outbox_messages", r[0], r[1], r[2], r[3], r[4])
        return None

    def _record_drops(self, reason: str, dropped: Iterable[tuple[str, int | None, float]]) -> None:
        """Add drops to ``outbox_drops`` (in the caller's transaction)."""
        for stream, seq, at in dropped:
            self._db.execute(
                "INSERT INTO outbox_drops (stream, reason, count, first_seq, last_seq,"
                " first_at, last_at) VALUES (?, ?, 1, ?, ?, ?, ?)"
                " ON CONFLICT (stream, reason) DO UPDATE SET count = count + 1,"
                " first_seq = min(coalesce(first_seq, excluded.first_seq),"
                "                 coalesce(excluded.first_seq, first_seq)),"
                " last_seq = max(coalesce(last_seq, excluded.last_seq),"
                "                coalesce(excluded.last_seq, last_seq)),"
                " first_at = min(first_at, excluded.first_at),"
                " last_at = max(last_at, excluded.last_at)",
                [stream, reason, seq, seq, at, at],
            )

    def _refuse(self, msg: _Msg, reason: str) -> int:
        """Count a message that is not stored; burn its seq so the gap is visible."""
        self._refused_total += 1
        stream = msg.seq_stream or msg.kind
        try:
            with self._db.atomic():
                seq = self._bump_seq(msg.seq_stream) if msg.seq_stream else None
                self._record_drops(reason, [(stream, seq, msg.created_at)])
        except sqlite3.OperationalError as exc:
            # Not even the bookkeeping fits: keep the count in memory for the next report.
            log.error("outbox %s: cannot record a refused message (%s)", self.path, exc)
            self._unrecorded.append((stream, reason, None, msg.created_at))
        return 0

    # -- acknowledging -------------------------------------------------------------------

    def ack(self, row: int) -> bool:
        """Delete an acknowledged row; False if it was already gone (replaced, dropped,
        dead-lettered or acked)."""
        return self.ack_many([row]) == 1

    def ack_many(self, rows: Iterable[int]) -> int:
        """Delete acknowledged rows in one transaction; return how many existed.

        The commit does not fsync (``synchronous=NORMAL`` for this transaction only): a
        power cut right after it can undo the deletes, and those rows are sent again with
        their ``id`` and ``seq`` (a duplicate, which consumers drop, never a gap); the next
        FULL commit (the next tick's) makes them durable with it. PUBACKs come one by one,
        so this halves a gateway's fsyncs."""
        rows = list(rows)
        if not rows:
            return 0
        relax = not self._db.conn.in_transaction  # a PRAGMA inside one would be ignored
        if relax:
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._db.atomic():
                deleted = 0
                for row in rows:
                    deleted += self._db.execute(
                        "DELETE FROM outbox_messages WHERE row = ?", [row]
                    ).rowcount
        finally:
            if relax:
                self._db.execute("PRAGMA synchronous = FULL")
        return deleted

    def dead_letter(self, row: int, reason: str) -> bool:
        """Move a row the client or broker refused to the dead-letter table, with the
        reason and the time; it is counted in the drop report (reason ``dead_letter``).
        False if the row was already gone."""
        now = self._clock()
        with self._db.atomic():
            r = self._db.execute(
                "SELECT coalesce(stream, kind), seq, created_at FROM outbox_messages"
                " WHERE row = ?",
                [row],
            ).fetchone()
            if r is None:
                return False
            if self._dead_letter_limit:
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox_dead (row, topic, payload, qos, retain,"
                    " created_at, seq, stream, reason, dead_at) SELECT row, topic, payload,"
                    " qos, retain, created_at, seq, stream, ?, ? FROM outbox_messages"
                    " WHERE row = ?",
                    [reason, now, row],
                )
                self._db.execute(
                    "DELETE FROM outbox_dead WHERE row <= (SELECT row FROM outbox_dead"
                    " ORDER BY row DESC LIMIT 1 OFFSET ?)",
                    [self._dead_letter_limit],
                )
            self._db.execute("DELETE FROM outbox_messages WHERE row = ?", [row])
            self._record_drops(REASON_DEAD, [(r[0], r[1], r[2])])
        return True

    def purge_dead_letters(self, before: float) -> int:
        """Delete dead letters that died before ``before`` (wall-clock seconds): the
        retention limit (``privacy.retention_days``). Returns how many went."""
        with self._db.atomic():
            return int(self._db.execute("DELETE FROM outbox_dead WHERE dead_at < ?",
                                        [before]).rowcount)

    # -- reading -------------------------------------------------------------------------

    def pending(
        self,
        limit: int,
        after_row: int = 0,
        *,
        lane: Lane | None = None,
        max_row: int | None = None,
    ) -> list[OutMessage]:
        """Up to ``limit`` stored messages with ``after_row < row <= max_row``, in row
        order; ``lane`` picks the state lane (rows with a coalesce_key) or the normal lane
        (all others)."""
        where = ["row > ?"]
        args: list[Any] = [after_row]
        if max_row is not None:
            where.append("row <= ?")
            args.append(max_row)
        if lane == "state":
            where.append("kind = 'state'")
        elif lane == "normal":
            where.append("kind != 'state'")
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox_messages WHERE {' AND '.join(where)}"
            " ORDER BY row LIMIT ?",
            [*args, limit],
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
                kind=r[9],
                stream=r[10],
            )
            for r in cur.fetchall()
        ]

    def last_row(self) -> int:
        """The highest stored row number, 0 when empty (the publisher's replay boundary)."""
        r = self._db.execute("SELECT max(row) FROM outbox_messages").fetchone()
        return int(r[0] or 0)

    def depth(self) -> int:
        """Messages not yet acknowledged."""
        return int(self._db.execute("SELECT count(*) FROM outbox_messages").fetchone()[0])

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the oldest waiting message was enqueued; None when empty."""
        r = self._db.execute(
            "SELECT created_at FROM outbox_messages ORDER BY row LIMIT 1"
        ).fetchone()
        if r is None:
            return None
        return max(0.0, (self._clock() if now is None else now) - float(r[0]))

    def dead_letter_count(self) -> int:
        """Rows in the dead-letter table (at most ``dead_letter_limit``)."""
        return int(self._db.execute("SELECT count(*) FROM outbox_dead").fetchone()[0])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The latest dead letters, newest first."""
        cur = self._db.execute(
            "SELECT row, topic, payload, seq, stream, created_at, reason, dead_at"
            " FROM outbox_dead ORDER BY row DESC LIMIT ?",
            [limit],
        )
        return [
            DeadLetter(row=r[0], topic=r[1], payload=r[2].encode(), seq=r[3], stream=r[4],
                       created_at=r[5], reason=r[6], dead_at=r[7])
            for r in cur.fetchall()
        ]

    def take_drop_report(self) -> DropReport | None:
        """What was dropped or refused since the last call, then forget it; None if
        nothing was. Call it inside ``batch()`` together with enqueueing the
        ``data_dropped`` moment, so both commit (or neither does)."""
        with self._db.atomic():
            rows = self._db.execute(
                "SELECT stream, reason, count, first_seq, last_seq, first_at, last_at"
                " FROM outbox_drops ORDER BY stream, reason"
            ).fetchall()
            if rows:
                self._db.execute("DELETE FROM outbox_drops")
        ranges = [DropRange(*r) for r in rows]
        for stream, reason, seq, at in self._unrecorded:
            ranges.append(DropRange(stream, reason, 1, seq, seq, at, at))
        self._unrecorded.clear()
        return DropReport(tuple(ranges)) if ranges else None

    def stats(self, now: float | None = None) -> OutboxStats:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return OutboxStats(
            depth=self.depth(),
            oldest_age_s=self.oldest_age_s(now),
            dead_letters=self.dead_letter_count(),
            dropped=self._dropped_total,
            refused=self._refused_total,
            size_bytes=(pages - free) * self._page_size,
            max_bytes=self._max_bytes,
        )

    def next_seq(self, stream: str) -> int:
        """The ``seq`` the next stored message of ``stream`` will get (a peek for status)."""
        row = self._db.execute(
            "SELECT last_seq FROM outbox_seq WHERE stream = ?", [stream]
        ).fetchone()
        return (int(row[0]) if row else 0) + 1

    # -- kept for old callers ------------------------------------------------------------

    @property
    def overflow_depth(self) -> int:
        """Always 0: nothing waits in memory any more (old API)."""
        return 0

    def flush_overflow(self) -> int:
        """Nothing to flush (old API)."""
        return 0
