"""Central consumers that share the load: ``venue-agent tail [--share GROUP]``.

A *group* of consumers reads the venues' guaranteed stream (moments, dispatches, nudges)
so that the broker hands each message to one member only: an MQTT 5 shared subscription
(``$share/GROUP/<filter>``) on an MQTT broker, a queue group on NATS (``nats://``), through
its own client library, over the subjects its MQTT listener maps topics to (``/`` -> ``.``,
``+`` -> ``*``, ``#`` -> ``>``).

Each member then sees only part of each gateway's ``seq``: alone it cannot tell a gap from a
message its peer got, nor a redelivery that went to the other member. So the members keep
one ledger between them (docs/central.md, "Consumers that share the load"):

- :class:`GroupLedger` (pure: no I/O, no clock; ``now`` is passed in, monotonic seconds)
  holds, per ``venue/gateway``, the ``seq`` numbers the *group* handled as ranges, the seqs
  it reported missing, recent message ids, and the members heard lately. It is a
  grow-only set, so merging a peer's ledger is a union and every order of merges agrees.
- Every ``sync_s`` each member publishes its ledger on the group's coordination topic
  (``central/{group}/ledger``; subject ``central.{group}.ledger`` on NATS) and merges its
  peers'. A missing seq becomes a gap only after ``grace_s`` with no member having handled
  it, and only the member that owns the gateway (rendezvous hashing over the live members)
  reports it; the report enters the ledger, so it is made once by the group, also when
  members join or leave and ownership moves.
- Duplicates: a message whose ``id`` (or, on the guaranteed stream, ``gateway`` + ``seq``)
  the ledger already holds is not printed again; a ``duplicate`` line says so.

:func:`run_tail` is the thin asyncio shell: one loop, the transports' callbacks only hand
messages over, JSON lines go to ``out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from agent.topics import (
    SCHEMA_DISPATCH,
    SCHEMA_MOMENT,
    SCHEMA_NUDGE,
    SEQ_GUARANTEED,
    Topics,
    share_ledger_topic,
)

__all__ = ["GroupLedger", "RangeSet", "TailError", "TailOptions", "Unreachable", "default_filters",
           "mqtt_to_nats", "nats_to_mqtt", "run_tail"]

LEDGER_VERSION = 1
# Schemas of the guaranteed stream: one seq counter per gateway over all three (agent.gateway).
GUARANTEED_SCHEMAS = frozenset({SCHEMA_MOMENT, SCHEMA_DISPATCH, SCHEMA_NUDGE})
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TailError(RuntimeError):
    """The consumer cannot run; the message says why (the command exits 1)."""


class Unreachable(TailError):
    """The broker did not accept a connection within the connect timeout."""


# ---------------------------------------------------------------------------------------------
# Ranges of seq numbers


class RangeSet:
    """A set of integers kept as sorted, disjoint, non-adjacent inclusive ranges ``[lo, hi]``.

    A gateway's seq stream is mostly contiguous, so a group's ledger of a whole day is a
    handful of ranges: one per gap."""

    __slots__ = ("_r",)

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self._r: list[list[int]] = []
        for lo, hi in ranges:
            self.add_range(int(lo), int(hi))

    def __contains__(self, n: int) -> bool:
        i = self._index(n)
        return i < len(self._r) and self._r[i][0] <= n

    def __bool__(self) -> bool:
        return bool(self._r)

    def _index(self, n: int) -> int:
        """Index of the first range whose ``hi`` >= ``n``."""
        lo, hi = 0, len(self._r)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._r[mid][1] < n:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def add(self, n: int) -> bool:
        """Add ``n``; False when it was already there."""
        if n in self:
            return False
        self.add_range(n, n)
        return True

    def add_range(self, lo: int, hi: int) -> None:
        if hi < lo:
            return
        i = self._index(lo - 1)  # the first range that touches or follows [lo, hi]
        j = i
        while j < len(self._r) and self._r[j][0] <= hi + 1:
            lo, hi = min(lo, self._r[j][0]), max(hi, self._r[j][1])
            j += 1
        self._r[i:j] = [[lo, hi]]

    def update(self, other: RangeSet) -> None:
        for lo, hi in other._r:
            self.add_range(lo, hi)

    @property
    def low(self) -> int | None:
        return self._r[0][0] if self._r else None

    @property
    def high(self) -> int | None:
        return self._r[-1][1] if self._r else None

    def holes(self) -> list[tuple[int, int]]:
        """The ranges missing between the lowest and the highest member."""
        return [(a[1] + 1, b[0] - 1) for a, b in zip(self._r, self._r[1:], strict=False)]

    def outside(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of ``[lo, hi]`` not in this set."""
        out: list[tuple[int, int]] = []
        cur = lo
        for a, b in self._r:
            if b < cur or a > hi:
                continue
            if a > cur:
                out.append((cur, a - 1))
            cur = max(cur, b + 1)
        if cur <= hi:
            out.append((cur, hi))
        return out

    def as_list(self) -> list[list[int]]:
        return [list(r) for r in self._r]


# ---------------------------------------------------------------------------------------------
# The group's ledger (pure)


@dataclass
class _Stream:
    """One gateway's guaranteed stream as the group knows it."""

    seen: RangeSet = field(default_factory=RangeSet)  # seqs some member handled
    reported: RangeSet = field(default_factory=RangeSet)  # seqs reported missing (a gap)
    # seqs the gateway said it dropped (data_dropped moments), per reason
    dropped: dict[str, RangeSet] = field(default_factory=dict)
    # holes of ``seen`` not yet reported, with the time (monotonic s) this member first saw
    # each of them open: the grace period runs from there
    holes: list[tuple[int, int, float]] = field(default_factory=list)


def _owner(key: str, members: Iterable[str]) -> str:
    """Rendezvous hashing: the member that reports ``key``'s gaps. Every member computes the
    same owner from the same live set, and when a member leaves only its keys move."""
    return max(members, key=lambda m: hashlib.blake2b(f"{m}\0{key}".encode(),
                                                      digest_size=8).digest())


class GroupLedger:
    """What a group of consumers handled, merged over its members (see the module doc).

    ``receive`` turns one message into output lines (the message, or a ``duplicate``
    report); ``announcement`` is this member's ledger to publish on the coordination
    topic, ``merge`` takes a peer's; ``check`` returns the ``gap`` reports this member owns.
    Times are monotonic seconds passed in by the caller. ``liveness_s``: a member not heard
    for that long has gone (and a new member waits that long before it reports anything,
    so that it has heard its peers first). ``id_memory``: recent ids kept for dedupe."""

    def __init__(self, group: str, member: str, *, now: float, grace_s: float = 10.0,
                 liveness_s: float = 3.0, id_memory: int = 100_000) -> None:
        self.group, self.member = group, member
        self.grace_s, self.liveness_s, self.id_memory = grace_s, liveness_s, id_memory
        self.started = now
        self.streams: dict[str, _Stream] = {}
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._new_ids: list[str] = []  # handled here since the last announcement
        self.peers: dict[str, float] = {}  # member -> when last heard (monotonic s)
        self.handled = self.duplicates = self.gaps = 0

    # -- messages ------------------------------------------------------------------------

    def _stream(self, key: str) -> _Stream:
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = _Stream()
        return s

    def _remember(self, msg_id: str) -> None:
        self._ids[msg_id] = None
        while len(self._ids) > self.id_memory:
            self._ids.popitem(last=False)

    def receive(self, topic: str, raw: bytes) -> list[dict[str, Any]]:
        """One message from the broker -> the lines to print (JSON-ready dicts)."""
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return [{"topic": topic, "payload": raw.decode("utf-8", "replace"),
                     "member": self.member, "error": "payload is not JSON"}]
        if not isinstance(payload, dict):
            return [{"topic": topic, "payload": payload, "member": self.member,
                     "error": "payload is not a JSON object"}]
        msg_id = payload.get("id")
        msg_id = msg_id if isinstance(msg_id, str) and msg_id else None
        seq = payload.get("seq")
        key = f"{payload.get('venue')}/{payload.get('gateway')}"
        guaranteed = (payload.get("schema") in GUARANTEED_SCHEMAS and isinstance(seq, int)
                      and not isinstance(seq, bool))
        stream = self._stream(key) if guaranteed else None
        if (msg_id is not None and msg_id in self._ids) or (
                stream is not None and isinstance(seq, int) and seq in stream.seen):
            self.duplicates += 1
            return [{"duplicate": {"id": msg_id, "venue": payload.get("venue"),
                                   "gateway": payload.get("gateway"), "seq": seq,
                                   "topic": topic, "member": self.member}}]
        self.handled += 1
        line: dict[str, Any] = {"topic": topic, "payload": payload, "member": self.member}
        if msg_id is not None:
            self._remember(msg_id)
            self._new_ids.append(msg_id)
        if stream is not None:
            assert isinstance(seq, int)
            stream.seen.add(seq)
            self._note_dropped(stream, payload)
            if seq in stream.reported:
                line["late"] = True  # reported as a gap, then it came (a replay, say)
        return [line]

    @staticmethod
    def _note_dropped(stream: _Stream, payload: dict[str, Any]) -> None:
        """A ``data_dropped`` moment: the gateway's own account of the guaranteed-stream seqs
        it dropped (outbox full, refused, dead letters), so their gap can say why."""
        if payload.get("kind") != "data_dropped" or not isinstance(payload.get("dropped"), list):
            return
        for d in payload["dropped"]:
            if not isinstance(d, dict) or d.get("stream") != SEQ_GUARANTEED:
                continue
            lo, hi, why = d.get("first_seq"), d.get("last_seq"), d.get("reason")
            if isinstance(lo, int) and isinstance(hi, int) and isinstance(why, str):
                stream.dropped.setdefault(why, RangeSet()).add_range(lo, hi)

    # -- the coordination topic ----------------------------------------------------------

    def announcement(self, *, leaving: bool = False) -> dict[str, Any]:
        """This member's ledger, to publish on the group's coordination topic: the union of
        what it knows (so it stays a few ranges per gateway) and the ids it handled since
        the last announcement."""
        ids, self._new_ids = self._new_ids, []
        return {"v": LEDGER_VERSION, "group": self.group, "member": self.member,
                "leaving": leaving,
                "seen": {k: s.seen.as_list() for k, s in self.streams.items() if s.seen},
                "reported": {k: s.reported.as_list() for k, s in self.streams.items()
                             if s.reported},
                "dropped": {k: {why: r.as_list() for why, r in s.dropped.items()}
                            for k, s in self.streams.items() if s.dropped},
                "ids": ids}

    def merge(self, msg: Any, now: float) -> bool:
        """Merge a peer's announcement; False (and nothing changed) when it is not one."""
        try:
            if msg.get("v") != LEDGER_VERSION or msg.get("group") != self.group:
                return False
            member = msg["member"]
            if not isinstance(member, str) or member == self.member:
                return False
            seen = {str(k): RangeSet(v) for k, v in msg.get("seen", {}).items()}
            reported = {str(k): RangeSet(v) for k, v in msg.get("reported", {}).items()}
            dropped = {str(k): {str(why): RangeSet(r) for why, r in v.items()}
                       for k, v in msg.get("dropped", {}).items()}
            ids = [i for i in msg.get("ids", []) if isinstance(i, str)]
        except (AttributeError, KeyError, TypeError, ValueError):
            return False
        for k, r in seen.items():
            self._stream(k).seen.update(r)
        for k, r in reported.items():
            self._stream(k).reported.update(r)
        for k, by_reason in dropped.items():
            for why, r in by_reason.items():
                self._stream(k).dropped.setdefault(why, RangeSet()).update(r)
        for i in ids:
            self._remember(i)
        if msg.get("leaving"):
            self.peers.pop(member, None)
        else:
            self.peers[member] = now
        return True

    def live_members(self, now: float) -> list[str]:
        return sorted({self.member, *(m for m, t in self.peers.items()
                                      if now - t <= self.liveness_s)})

    # -- gaps ----------------------------------------------------------------------------

    def check(self, now: float) -> list[dict[str, Any]]:
        """``gap`` reports due now: seqs missing from the group's ledger for ``grace_s``,
        of the gateways this member owns. Each is reported once (it enters the ledger)."""
        reports: list[dict[str, Any]] = []
        live = self.live_members(now)
        warm = now - self.started >= self.liveness_s
        for key, s in self.streams.items():
            old = s.holes
            holes: list[tuple[int, int, float]] = []
            for lo, hi in s.seen.holes():
                for a, b in s.reported.outside(lo, hi):
                    since = min((t for x, y, t in old if x <= b and a <= y), default=now)
                    holes.append((a, b, since))
            s.holes = holes
            if not warm or _owner(key, live) != self.member:
                continue
            for a, b, since in holes:
                if now - since < self.grace_s:
                    continue
                venue, _, gateway = key.partition("/")
                s.reported.add_range(a, b)
                self.gaps += 1
                gap: dict[str, Any] = {
                    "venue": venue, "gateway": gateway, "first_seq": a, "last_seq": b,
                    "missing": b - a + 1, "waited_s": round(now - since, 1),
                    "group": self.group, "member": self.member, "members": len(live)}
                # the gateway's data_dropped moments that cover the whole gap say why
                why = sorted(r for r, rs in s.dropped.items() if not rs.outside(a, b))
                if why:
                    gap["dropped_by_gateway"] = why
                reports.append({"gap": gap})
            s.holes = [h for h in s.holes if h[0] not in s.reported]
        return reports


# ---------------------------------------------------------------------------------------------
# Topics and subjects


def default_filters(venue: str) -> list[str]:
    """The whole guaranteed stream of ``venue`` (``+``: every venue): zone moments,
    gateway moments (``data_dropped``), dispatches and nudges. Gap reports need all of it,
    since the three share one seq counter per gateway."""
    t = Topics(venue)
    return [f"{t.prefix}/moment/#", f"{t.prefix}/gateway/+/moment/#",
            f"{t.prefix}/dispatch/#", f"{t.prefix}/nudge/#"]


def mqtt_to_nats(topic_filter: str) -> str:
    """The NATS subject NATS's MQTT listener maps an MQTT topic (filter) to."""
    return ".".join(">" if lvl == "#" else "*" if lvl == "+" else lvl
                    for lvl in topic_filter.split("/"))


def nats_to_mqtt(subject: str) -> str:
    """An MQTT topic from a NATS subject (topic levels hold no dots in this contract)."""
    return subject.replace(".", "/")


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r}: use 1-64 letters, digits, '-' or '_' (it becomes a "
                         "topic level and a NATS queue name)")
    return name


def _check_filter(f: str) -> str:
    levels = f.split("/")
    if not f or any(("#" in lvl and (lvl != "#" or i != len(levels) - 1))
                    or ("+" in lvl and lvl != "+") for i, lvl in enumerate(levels)):
        raise ValueError(f"--filter {f!r}: not an MQTT topic filter ('+' is one whole level, "
                         "'#' the whole last level)")
    if f.startswith("$"):
        raise ValueError(f"--filter {f!r}: give the plain filter; --share adds $share/GROUP/")
    return f


def default_member() -> str:
    return f"{socket.gethostname().split('.')[0][:40]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


# ---------------------------------------------------------------------------------------------
# Transports: hand (kind, topic, payload) to the loop; kind is "msg" or "ledger"

Handoff = Callable[[str, str, bytes], None]


@dataclass(frozen=True)
class TailOptions:
    """What ``venue-agent tail`` was asked for (validated by :meth:`check`)."""

    broker: str
    venue: str
    group: str | None = None  # --share
    filters: tuple[str, ...] = ()  # () = default_filters(venue)
    member: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    grace_s: float = 10.0  # a missing seq is a gap after this long unseen by the group
    sync_s: float = 1.0  # ledger announcements
    connect_timeout_s: float = 10.0
    duration_s: float | None = None

    @property
    def nats(self) -> bool:
        return urlsplit(self.broker).scheme.lower() in ("nats", "tls")

    def check(self) -> None:
        """ValueError naming the option that is wrong."""
        if self.group is not None:
            _check_name("--share", self.group)
        if self.member is not None:
            _check_name("--member", self.member)
        if self.venue != "+":
            _check_name("--venue", self.venue)
        for f in self.filters:
            _check_filter(f)
        for name, v in (("--gap-grace", self.grace_s), ("--sync", self.sync_s),
                        ("--connect-timeout", self.connect_timeout_s)):
            if not v > 0:
                raise ValueError(f"{name} must be more than 0 seconds, not {v:g}")
        if self.nats:
            _nats_address(self.broker)


def _password(opts: TailOptions) -> str | None:
    if not opts.password_file:
        return None
    try:
        with open(opts.password_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read --password-file {opts.password_file}: {e}") from None


class MqttShared:
    """A paho client (MQTT 5) that subscribes to ``$share/GROUP/<filter>`` (or the plain
    filters without a group) and to the group's coordination topic. TLS, client certificate
    and credentials as the gateway and the staff console have them (``BrokerSettings``)."""

    def __init__(self, opts: TailOptions, member: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.console import broker_settings

        self.opts = opts
        self.settings = broker_settings(opts.broker, client_id=f"venue-agent-tail-{member}",
                                        username=opts.username,
                                        password_file=opts.password_file, ca_file=opts.ca_file,
                                        cert_file=opts.cert_file, key_file=opts.key_file,
                                        protocol="5")
        filters = list(opts.filters) or default_filters(opts.venue)
        self.data = [f"$share/{opts.group}/{f}" if opts.group else f for f in filters]
        self.ledger_topic = share_ledger_topic(opts.group) if opts.group else None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self.refused: list[str] = []  # filters whose SUBACK was a failure
        self.error: str | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.settings.client_id,
                        protocol=mqtt.MQTTv5)
        if self.settings.username is not None:
            c.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.tls:
            c.tls_set_context(self.settings.ssl_context())
        c.reconnect_delay_set(1, 5)
        c.on_connect = self._on_connect
        c.on_connect_fail = lambda *_a: self._fail("no connection")
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = lambda *_a: self._unsubscribed.set()
        self.client = c
        self._subs: list[str] = []
        self._leaving = False
        self._handoff: Handoff | None = None

    def _fail(self, why: str) -> None:
        self.error = why

    def _on_connect(self, c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            self.error = f"refused: {rc}"
            return
        # after leave() a reconnect takes the group's ledger only, no new messages
        subs = [] if self._leaving else [(t, 1) for t in self.data]
        if self.ledger_topic:
            subs.append((self.ledger_topic, 1))
        self._subs = [t for t, _ in subs]
        if subs:
            c.subscribe(subs)
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any = None) -> None:
        self.refused = [f"{t} ({rc})" for t, rc in zip(self._subs, codes, strict=False)
                        if rc.is_failure]
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        assert self._handoff is not None
        kind = "ledger" if m.topic == self.ledger_topic else "msg"
        self._handoff(kind, m.topic, bytes(m.payload))

    async def start(self, handoff: Handoff) -> None:
        self._handoff = handoff
        self.client.on_message = self._on_message
        self.client.connect_async(self.settings.host, self.settings.port,
                                  keepalive=self.settings.keepalive_s)
        self.client.loop_start()
        ok = await asyncio.get_running_loop().run_in_executor(
            None, self._subscribed.wait, self.opts.connect_timeout_s)
        if not ok:
            self.client.loop_stop()
            raise Unreachable(f"no connection to the broker at {self.opts.broker} within "
                              f"{self.opts.connect_timeout_s:g} s ({self.error or 'no answer'})")
        if self.refused:
            await self.close(None)
            raise TailError(f"the broker at {self.opts.broker} refused the subscription to "
                            f"{', '.join(self.refused)}: shared subscriptions need MQTT 5 and "
                            "the ACL must let this user read the topics")

    @property
    def where(self) -> str:
        return f"{', '.join(self.data)} on {self.opts.broker}"

    async def announce(self, payload: bytes) -> None:
        if self.ledger_topic:
            self.client.publish(self.ledger_topic, payload, qos=1)

    async def leave(self) -> None:
        """Stop taking new messages (UNSUBSCRIBE; the broker gives them to the others);
        what was already sent to this member still arrives and is handled."""
        self._unsubscribed.clear()
        self._leaving = True
        self.client.unsubscribe(self.data)
        await asyncio.get_running_loop().run_in_executor(None, self._unsubscribed.wait, 5.0)

    async def close(self, last: bytes | None) -> None:
        if last is not None and self.ledger_topic:
            info = self.client.publish(self.ledger_topic, last, qos=1)
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, info.wait_for_publish, 2)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def _nats_address(url: str) -> tuple[str, bool]:
    """``nats://host[:port]`` or ``tls://host[:port]`` -> (URL for nats-py, TLS)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("nats", "tls") or not parts.hostname:
        raise ValueError(f"broker url {url!r}: expected nats://host:port or tls://host:port")
    if "@" in parts.netloc:
        raise ValueError(f"broker url {url!r}: put credentials in --username/--password-file, "
                         "not the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker url {url!r}: unexpected path or query after host:port")
    try:
        port = parts.port or 4222
    except ValueError:
        raise ValueError(f"broker url {url!r}: bad port") from None
    tls = parts.scheme.lower() == "tls"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{'tls' if tls else 'nats'}://{host}:{port}", tls


class NatsQueue:
    """A nats-py connection that subscribes to the subjects of the filters in the queue group
    ``GROUP`` (each message to one member; members joining and leaving rebalance) and to
    the group's coordination subject."""

    def __init__(self, opts: TailOptions, member: str) -> None:
        self.opts, self.member = opts, member
        self.url, self.tls = _nats_address(opts.broker)
        self.password = _password(opts)
        if self.password is not None and not opts.username:
            raise ValueError("--password-file is set without --username")
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            from agent.publisher import BrokerSettings

            # The same certificate checks and TLS context as an MQTT broker's.
            host = urlsplit(self.url).netloc
            self.ssl = BrokerSettings(f"mqtts://{host}", client_id=member,
                                      ca_file=opts.ca_file, cert_file=opts.cert_file,
                                      key_file=opts.key_file).ssl_context()
        elif opts.ca_file or opts.cert_file or opts.key_file:
            raise ValueError(f"--ca-file/--cert-file/--key-file need a tls:// url, not "
                             f"{opts.broker!r}")
        filters = list(opts.filters) or default_filters(opts.venue)
        self.subjects = [mqtt_to_nats(f) for f in filters]
        self.ledger_subject = (mqtt_to_nats(share_ledger_topic(opts.group))
                               if opts.group else None)
        self.nc: Any = None
        self.subs: list[Any] = []
        self.error: str | None = None

    async def start(self, handoff: Handoff) -> None:
        import nats

        async def on_error(e: Exception) -> None:
            self.error = str(e) or type(e).__name__

        async def on_msg(m: Any) -> None:
            handoff("msg", nats_to_mqtt(m.subject), m.data)

        async def on_ledger(m: Any) -> None:
            handoff("ledger", m.subject, m.data)

        try:
            self.nc = await asyncio.wait_for(nats.connect(
                servers=[self.url], user=self.opts.username, password=self.password,
                tls=self.ssl, name=f"venue-agent-tail-{self.member}", error_cb=on_error,
                connect_timeout=min(2.0, self.opts.connect_timeout_s),
                reconnect_time_wait=0.5, max_reconnect_attempts=-1),
                self.opts.connect_timeout_s)
        except (TimeoutError, OSError, Exception) as e:
            why = self.error or str(e) or type(e).__name__
            raise Unreachable(f"no connection to the NATS server at {self.opts.broker} within "
                              f"{self.opts.connect_timeout_s:g} s ({why})") from None
        for subject in self.subjects:
            self.subs.append(await self.nc.subscribe(subject, queue=self.opts.group or "",
                                                     cb=on_msg))
        if self.ledger_subject:
            await self.nc.subscribe(self.ledger_subject, cb=on_ledger)
        await self.nc.flush()

    @property
    def where(self) -> str:
        group = f" (queue group {self.opts.group})" if self.opts.group else ""
        return f"{', '.join(self.subjects)}{group} on {self.opts.broker}"

    async def announce(self, payload: bytes) -> None:
        if self.ledger_subject and self.nc is not None and self.nc.is_connected:
            await self.nc.publish(self.ledger_subject, payload)

    async def leave(self) -> None:
        """Drain the queue subscriptions: the server stops routing to this member, and what
        it already routed here is delivered and handled first."""
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.drain()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)

    async def close(self, last: bytes | None) -> None:
        if self.nc is None:
            return
        with contextlib.suppress(Exception):
            if last is not None and self.ledger_subject:
                await self.nc.publish(self.ledger_subject, last)
                await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()


# ---------------------------------------------------------------------------------------------
# The shell


_QUIET_S = 0.3  # leaving: no data for this long after the broker stopped sending = all in


def _dumps(line: dict[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


async def run_tail(opts: TailOptions, out: TextIO, *, err: TextIO | None = None,
                   stop: asyncio.Event | None = None) -> GroupLedger:
    """Consume until ``duration_s`` passes, ``stop`` is set, or SIGTERM/SIGINT: one JSON
    line per message on ``out``, ``duplicate`` and ``gap`` reports as their own lines. On
    the way out the member leaves the group cleanly: it stops taking messages, handles what
    was already sent to it, and publishes its last ledger. Progress notes (subscribed,
    left) go to ``err``. Raises :class:`Unreachable` (broker not reachable within
    ``connect_timeout_s``), :class:`TailError` (subscription refused) or ValueError (bad
    options)."""
    opts.check()
    member = opts.member or default_member()
    loop = asyncio.get_running_loop()
    transport: MqttShared | NatsQueue = (NatsQueue(opts, member) if opts.nats
                                         else MqttShared(opts, member))
    ledger = GroupLedger(opts.group or "-", member, now=time.monotonic(), grace_s=opts.grace_s,
                         liveness_s=max(3 * opts.sync_s, 1.0))
    inbox: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()

    def handoff(kind: str, topic: str, payload: bytes) -> None:
        # paho calls this on its own thread; nats-py on the loop: either way, only hand over
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            inbox.put_nowait((kind, topic, payload))
        else:
            loop.call_soon_threadsafe(inbox.put_nowait, (kind, topic, payload))

    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    def emit(lines: list[dict[str, Any]]) -> None:
        for line in lines:
            out.write(_dumps(line) + "\n")
        if lines:
            out.flush()

    def take(kind: str, topic: str, payload: bytes) -> None:
        if kind == "ledger":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                ledger.merge(json.loads(payload), time.monotonic())
        else:
            emit(ledger.receive(topic, payload))

    def note(text: str) -> None:
        if err is not None:
            err.write(f"venue-agent tail: member {member}: {text}\n")
            err.flush()

    await transport.start(handoff)
    note(f"subscribed to {transport.where}")
    deadline = None if opts.duration_s is None else time.monotonic() + opts.duration_s
    next_sync = time.monotonic()
    data_at = time.monotonic()  # when the last data message arrived

    async def step(until: float) -> None:
        """Announce and check when due, then wait for one inbox item (or ``until``, or the
        next sync, or ``stop``) and take everything waiting."""
        nonlocal next_sync, data_at
        now = time.monotonic()
        if now >= next_sync:
            if opts.group:
                await transport.announce(_dumps(ledger.announcement()).encode())
            emit(ledger.check(now))
            next_sync = now + opts.sync_s
        timeout = max(0.0, min(next_sync, until) - time.monotonic())
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(inbox.get())}
        if not stop.is_set():
            waits.add(asyncio.ensure_future(stop.wait()))
        done, pending = await asyncio.wait(waits, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()
        items = [fut.result() for fut in done if isinstance(fut.result(), tuple)]
        while not inbox.empty():
            items.append(inbox.get_nowait())
        for item in items:
            take(*item)
            if item[0] == "msg":
                data_at = time.monotonic()

    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            await step(float("inf") if deadline is None else deadline)
        # Leave: stop taking new messages, handle what the broker already sent here (until a
        # short quiet spell), and keep announcing meanwhile so the peers neither take this
        # member for gone nor report what it holds as a gap.
        leaving = asyncio.ensure_future(transport.leave())
        give_up = time.monotonic() + 5.0
        left_at: float | None = None
        while time.monotonic() < give_up:
            if left_at is None and leaving.done():
                left_at = time.monotonic()
            if left_at is not None and time.monotonic() - max(left_at, data_at) >= _QUIET_S:
                break
            await step(time.monotonic() + 0.05)
        if not leaving.done():
            leaving.cancel()
        last = _dumps(ledger.announcement(leaving=True)).encode() if opts.group else None
        await transport.close(last)
        note(f"left after {ledger.handled} messages, {ledger.duplicates} duplicates, "
             f"{ledger.gaps} gaps reported")
    except BaseException:
        await transport.close(None)
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return ledger
