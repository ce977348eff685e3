"""MQTT publisher: drains the outbox to the broker, at least once, in row order.

Threading follows aiomqtt's split: paho-mqtt does the network I/O in its own thread
(``loop_start``) and its callbacks only hand plain data to the asyncio loop with
``call_soon_threadsafe``. Everything else (deciding what to send, publishing, touching the
outbox) happens on the asyncio loop, so the outbox keeps one owner.

One paho client per connection: paho re-sends its own in-flight messages after a
reconnect, and so do we, from the outbox. A fresh client for every connection leaves
exactly one source of retransmission (the outbox rows) and makes message ids (mids)
unambiguous: each connection's PUBACKs are matched against that connection's table only.

Guarantees: a row is deleted only on a successful PUBACK for it (reason code < 0x80).
Rows in flight when the connection drops are sent again on the next connection, so
consumers see duplicates (same ``id``), never gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import random
import socket
import ssl
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.brokerurl import BrokerAddress, parse_broker_url, plain_needs_tls
from agent.outbox import Outbox, OutMessage

__all__ = [
    "REASON_LOST",
    "REASON_SHUTDOWN",
    "BrokerSettings",
    "Protocol",
    "Publisher",
    "PublisherStats",
]

Protocol = Literal["auto", "5", "3.1.1"]

# MQTT 5 CONNACK reason "Unsupported Protocol Version"; MQTT 3.1.1 return code 1 means the
# same, and some 3.1.1-only brokers (amqtt) answer a v5 CONNECT with it.
_V5_UNSUPPORTED = 0x84
_V3_UNACCEPTABLE_PROTOCOL = 1


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect.

    ``url`` is ``mqtt://host:port`` or ``mqtts://host:port``; ``urls`` is a failover list
    (``url`` is then ``urls[0]``; pass either). ``host``, ``port`` and ``tls`` are those of
    the first broker, ``addresses`` all of them in order.

    TLS (``mqtts://``): the server certificate is always verified, against ``ca_file`` or
    the system trust store, host name included; TLS 1.2 at least. ``cert_file`` and
    ``key_file`` (together) are a client certificate; a key file its group or others may
    read is refused. ``require_tls`` refuses any ``mqtt://`` URL; None (the default) refuses
    it whenever a username is set, unless that broker is on this machine (loopback), where
    a password never crosses a network.

    Everything refused raises :class:`ValueError` naming the setting (``ca_file``,
    ``cert_file``, ``key_file``, ``require_tls``, ``url``...): ``check-config`` shares it.
    """

    url: str = ""
    client_id: str = ""
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    protocol: Protocol = "auto"
    cert_file: str | None = None
    key_file: str | None = None
    require_tls: bool | None = None
    urls: tuple[str, ...] = ()
    host: str = field(init=False)
    port: int = field(init=False)
    tls: bool = field(init=False)
    addresses: tuple[BrokerAddress, ...] = field(init=False)

    def __post_init__(self) -> None:
        urls = tuple(self.urls)
        if not urls:
            if not self.url:
                raise ValueError("broker url: none given (expected mqtt://host:port)")
            urls = (self.url,)
        elif self.url and self.url != urls[0]:
            raise ValueError(f"broker url {self.url!r} must be urls[0] ({urls[0]!r}); "
                             "pass one of url or urls")
        if len(set(urls)) != len(urls):
            raise ValueError(f"broker url: each broker once in the failover list {list(urls)}")
        addresses = tuple(parse_broker_url(u) for u in urls)  # ValueError naming what is wrong
        object.__setattr__(self, "urls", urls)
        object.__setattr__(self, "url", urls[0])
        if not self.client_id:
            raise ValueError("broker client_id must not be empty")
        if not 0 < self.keepalive_s <= 65535:
            raise ValueError(f"broker keepalive_s must be 1..65535, not {self.keepalive_s}")
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(
                f"broker protocol must be 'auto', '5' or '3.1.1', not {self.protocol!r}"
            )
        if self.password is not None and self.username is None:
            raise ValueError("broker password is set without a username")
        plain = [a.url for a in addresses if not a.tls]
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is None:
                continue
            if plain:
                raise ValueError(f"broker {name} is set but url {plain[0]!r} is not mqtts://")
            if not Path(value).is_file():
                raise ValueError(f"broker {name} {value!r} does not exist")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("broker cert_file and key_file go together (a client "
                             "certificate and its private key, both PEM)")
        if self.key_file is not None:
            mode = stat.S_IMODE(Path(self.key_file).stat().st_mode)
            if mode & 0o077:
                raise ValueError(
                    f"broker key_file {self.key_file}: its mode {mode:04o} lets the group or "
                    f"others read it; the agent refuses a private key others can read. Fix: "
                    f"chmod 600 {self.key_file}")
        refused = [a.url for a in addresses if not a.tls and self._needs_tls(a)]
        if refused:
            raise ValueError(
                f"broker url {refused[0]!r} is plain MQTT but require_tls is on"
                + (f" (the password of user {self.username!r} would cross the network in "
                   "clear)" if self.require_tls is None else "")
                + ": use mqtts://, or set broker.require_tls = false to allow it")
        if self.cert_file is not None and self.key_file is not None and all(
                os.access(f, os.R_OK) for f in (self.cert_file, self.key_file)):
            # A certificate and key that do not belong together can never work. Files this
            # user cannot read are doctor's question (check-config may run as another user
            # than the agent). A damaged ca_file is reported on every connection attempt.
            _load_client_cert(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self.cert_file,
                              self.key_file)
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "host", addresses[0].host)
        object.__setattr__(self, "port", addresses[0].port)
        object.__setattr__(self, "tls", addresses[0].tls)

    def _needs_tls(self, address: BrokerAddress) -> bool:
        if self.require_tls is not None:
            return self.require_tls
        return plain_needs_tls(address, self.username)

    @property
    def tls_required(self) -> bool:
        """Some broker of the list may only be reached over TLS (``require_tls``, or its
        default: with a username, every broker off this machine)."""
        return any(self._needs_tls(a) for a in self.addresses)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: server verified (``ca_file`` or the system store, host name
        checked), TLS 1.2 or later, the client certificate when set. Built per connection,
        so renewed certificate files are picked up on the next one. ValueError when a file
        does not load."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"broker ca_file {self.ca_file}: not a PEM CA certificate "
                             f"this agent can load ({exc})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            _load_client_cert(ctx, self.cert_file, self.key_file)
        return ctx


def _load_client_cert(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"broker cert_file {cert_file} / key_file {key_file}: not a PEM "
                         f"certificate and its matching unencrypted key ({exc})") from None


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot for the health topic and the status line."""

    connected: bool
    protocol: str | None  # "5" or "3.1.1" while connected or after the last connection
    sent: int  # outbox rows handed to the network (re-sends included)
    acked: int  # successful PUBACKs; those rows were deleted
    rejected: int  # PUBACKs with a transient failure (0x91, 0x97); kept, retried next connection
    expired: int  # rows dropped unsent because their expiry_s had passed
    reconnects: int  # successful connections after the first
    inflight: int
    outbox_depth: int
    volatile_sent: int
    volatile_dropped: int  # QoS 0 health messages dropped while offline
    dead_lettered: int = 0  # rows the client or broker refused, moved to the dead letters
    restarts: int = 0  # times the publisher failed inside and restarted itself (backoff)
    replayed: int = 0  # backlog rows sent with "replayed": true (re-sends included)
    replaying: bool = False  # the current connection still has backlog to send
    oldest_age_s: float | None = None  # age of the oldest message waiting in the outbox
    dead_letters: int = 0  # rows in the outbox's dead-letter table
    dropped: int = 0  # outbox rows dropped at the storage cap since start
    refused: int = 0  # messages the outbox refused (too large / no space) since start


class _ConnectFailed(Exception):
    def __init__(self, reason: str, *, maybe_v5_refused: bool = False,
                 refused_tcp: bool = False) -> None:
        super().__init__(reason)
        self.maybe_v5_refused = maybe_v5_refused
        self.refused_tcp = refused_tcp  # nothing listened there (down, or not up yet)


@dataclass(frozen=True, slots=True)
class _Flight:
    row: int
    backlog: bool  # sent from the replay lane
    sent_at: float  # monotonic


@dataclass(eq=False)
class _Session:
    """One network connection: its paho client and what is in flight on it."""

    client: mqtt.Client
    protocol: Literal["5", "3.1.1"]
    url: str
    connack: asyncio.Future[ReasonCode | str]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""
    net_error: str = ""  # the last socket or TLS error paho met (a TLS alert names the cause)
    max_packet: int | None = None  # MQTT 5 CONNACK Maximum Packet Size
    inflight: dict[int, _Flight] = field(default_factory=dict)  # mid -> outbox row
    control: dict[int, asyncio.Future[bool]] = field(default_factory=dict)  # status messages
    # Replay: rows up to ``boundary`` were pending when the connection came up.
    boundary: int = 0
    state_cursor: int = 0  # highest state-lane row handed to this connection
    live_cursor: int = 0  # highest normal-lane row above the boundary handed over
    backlog_cursor: int = 0  # highest normal-lane row up to the boundary handed over
    backlog_done: bool = False
    backlog_sent: int = 0
    tokens: float = 0.0
    tokens_at: float = 0.0
    started: float = 0.0
    timer: asyncio.TimerHandle | None = None

    @property
    def backlog_inflight(self) -> int:
        return sum(1 for f in self.inflight.values() if f.backlog)


# MQTT 5 PUBACK failures that say "not now" rather than "never": kept and retried on the
# next connection. Every other failure (0x80 unspecified, 0x83 implementation specific,
# 0x87 not authorized, 0x90 topic name invalid, 0x99 payload format invalid, ...) moves
# the row to the dead letters.
_TRANSIENT = frozenset({0x91, 0x97})  # packet identifier in use, quota exceeded
# A row that was the only one in flight when the broker closed the connection, this soon
# after it was sent, this many times in a row, is taken to be what the broker refuses
# (see Publisher._after_loss).
_POISON_WINDOW_S = 2.0
_POISON_STRIKES = 3

REASON_LOST = "connection lost"  # the Last Will's reason
REASON_SHUTDOWN = "shutdown"  # the clean stop's reason

Message = tuple[str, bytes]
WillSpec = Message | Callable[[str], Message]


class Publisher:
    """Owns the MQTT connection; call ``run()`` as a task, ``kick()`` after each enqueue.

    ``will`` is either a fixed ``(topic, payload)`` (old form) or a callable
    ``will(reason) -> (topic, payload)``: it is called for every connection with
    ``"connection lost"`` to build that connection's Last Will (fresh ``id`` and ``at``),
    and with ``"shutdown"`` for the retained status a clean ``stop()`` publishes.
    ``birth() -> (topic, payload)`` is called for every connection; both go out retained,
    QoS 1, ahead of anything from the outbox. ``announce() -> [(topic, payload)]`` (e.g.
    Home Assistant discovery configs) is called for every connection too, and its messages
    go out retained, QoS 1, right after the birth.

    ``subscriptions`` (``[(filter, qos)]``) are subscribed on every connection (each one
    starts a clean session) before the birth; every message they bring is handed to
    ``on_message(topic, payload)`` ON THE EVENT LOOP (paho's thread only posts it). The
    callable may return an awaitable, which is run as a task. What arrives while no
    connection is up is not seen (a consumer that must see everything re-reads retained
    state or asks again).

    ``replay_per_s`` is the rate (messages per second) at which the backlog (rows pending
    when the connection came up) is sent; None for no limit. Zone state goes first, live
    messages are never queued behind the backlog, and each backlog message goes out with
    ``"replayed": true`` added to its payload (its ``at`` is the original).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        outbox: Outbox,
        *,
        will: WillSpec,
        birth: Callable[[], Message],
        max_inflight: int = 20,
        logger: logging.Logger | None = None,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        stop_timeout_s: float = 5.0,
        replay_per_s: float | None = 50.0,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], object] | None = None,
        announce: Callable[[], Sequence[Message]] | None = None,
    ) -> None:
        subscriptions = tuple((f, q) for f, q in subscriptions)
        for topic_filter, qos in subscriptions:
            _check_filter(topic_filter, qos)
        if subscriptions and on_message is None:
            raise ValueError("subscriptions need an on_message callable")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if replay_per_s is not None and not replay_per_s > 0:
            raise ValueError(f"replay_per_s must be > 0 (or None), not {replay_per_s!r}")
        self.settings = settings
        self._outbox = outbox
        self._will = will
        self._birth = birth
        self._announce = announce
        self._max_inflight = max_inflight
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._handler_tasks: set[asyncio.Future[Any]] = set()
        self._said_handler_error = False
        self._replay_per_s = replay_per_s
        self._log = logger or logging.getLogger(__name__)
        self._backoff_min = backoff_min_s
        self._backoff_max = backoff_max_s
        self._connect_timeout = connect_timeout_s
        self._stop_timeout = stop_timeout_s

        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._graceful = True
        self._running = False
        # Brokers (urls) that speak only MQTT 3.1.1: all of them when so configured.
        self._v311: set[str] = set(settings.urls) if settings.protocol == "3.1.1" else set()
        self._said_v311 = False
        self._index = 0  # the broker of the failover list in use (or tried next)
        self._last_protocol: str | None = None
        self._ack_queue: list[int] = []
        self._ack_flush_scheduled = False
        self._probe_left = 0  # after a loss with rows in flight: send one at a time
        self._strikes: dict[int, int] = {}  # row -> losses while it alone was in flight
        self._connects = 0
        self._sent = 0
        self._acked = 0
        self._rejected = 0
        self._expired = 0
        self._dead_lettered = 0
        self._restarts = 0
        self._replayed = 0
        self._volatile_sent = 0
        self._volatile_dropped = 0

    # -- public API ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is up (CONNACK received, not lost)."""
        s = self._session
        return s is not None and s.connack.done() and not s.lost.is_set()

    @property
    def broker_url(self) -> str:
        """The broker of ``broker.url``'s list in use (or to be tried next when offline)."""
        return self.settings.addresses[self._index].url

    def kick(self) -> None:
        """Tell the publisher new rows are in the outbox (call from the event loop)."""
        self._wake.set()

    def publish_volatile(self, topic: str, payload: bytes) -> bool:
        """Publish QoS 0 (health); dropped and counted when offline. True if handed over."""
        s = self._session
        if s is None or not self.connected:
            self._volatile_dropped += 1
            return False
        try:
            info = s.client.publish(topic, payload, qos=0)
        except ValueError as exc:
            self._log.error("MQTT client refused a volatile message for %r: %s", topic, exc)
            self._volatile_dropped += 1
            return False
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._volatile_dropped += 1
            return False
        self._volatile_sent += 1
        return True

    def publish_retained(self, topic: str, payload: bytes) -> bool:
        """Publish retained, QoS 1, outside the outbox, on the current connection only (e.g.
        the empty payload that clears a retained message). True if handed over; False when
        offline (nothing is kept: the caller decides again on the next connection)."""
        s = self._session
        if s is None or not self.connected:
            return False
        try:
            self._publish_control(s, topic, payload)
        except ValueError as exc:
            self._log.error("MQTT client refused a retained message for %r: %s", topic, exc)
            return False
        return True

    def stats(self) -> PublisherStats:
        """Counters since construction, plus the outbox's depth, age and drops."""
        s = self._session
        ob = self._outbox.stats()
        return PublisherStats(
            connected=self.connected,
            protocol=self._last_protocol,
            sent=self._sent,
            acked=self._acked,
            rejected=self._rejected,
            expired=self._expired,
            reconnects=max(0, self._connects - 1),
            inflight=len(s.inflight) if s else 0,
            outbox_depth=ob.depth,
            volatile_sent=self._volatile_sent,
            volatile_dropped=self._volatile_dropped,
            dead_lettered=self._dead_lettered,
            restarts=self._restarts,
            replayed=self._replayed,
            replaying=bool(s is not None and self.connected and not s.backlog_done),
            oldest_age_s=None if ob.oldest_age_s is None else round(ob.oldest_age_s, 3),
            dead_letters=ob.dead_letters,
            dropped=ob.dropped,
            refused=ob.refused,
        )

    async def stop(self, graceful: bool = True) -> None:
        """Stop ``run()`` and wait for it.

        graceful: wait (bounded) for in-flight PUBACKs, publish the status "offline"
        message retained (``will("shutdown")``), then DISCONNECT. Not graceful: drop the
        connection without DISCONNECT, so the broker itself publishes the Last Will.
        """
        self._graceful = graceful
        self._stop_requested.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Connect, publish birth, drain the outbox; reconnect with backoff until ``stop()``.

        Never raises because the broker is down, unreachable or refuses a message, nor
        because something inside the publisher failed: that is logged, the connection is
        dropped and the publisher starts again after a backoff (counted in ``restarts``).
        Only cancellation ends it early.
        """
        self._loop = asyncio.get_running_loop()
        self._running = True
        delay = self._backoff_min
        last_failure = -math.inf
        try:
            while not self._stop_requested.is_set():
                try:
                    await self._connect_loop()
                except Exception as exc:  # noqa: BLE001 - the supervisor: log and restart
                    now = time.monotonic()
                    if now - last_failure > 4 * self._backoff_max:
                        delay = self._backoff_min  # the last failure is long past
                    last_failure = now
                    self._restarts += 1
                    self._log.error(
                        "MQTT publisher failed (%s: %s); restarting in %.1f s",
                        type(exc).__name__, exc, delay, exc_info=True,
                    )
                    await self._sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self._backoff_max)
        finally:
            s = self._session
            if s is not None and not s.lost.is_set() and s.connack.done():
                # Cancelled while connected: drop the socket so the will tells the truth.
                self._abort(s)
            self._flush_acks()
            self._running = False
            self._done.set()

    async def _connect_loop(self) -> None:
        """Connections one after another until ``stop()``, through the failover list.

        A broker that refuses or cannot be reached sends us to the next one at once; a lost
        connection is retried once on the same broker, then the next. Only when every broker
        of the list has failed in a row does the publisher back off, and the next round
        starts with the brokers that answered (even with a refusal): one that refused TCP
        is down, or a cluster node just restarted, the last to be ready (it catches up with
        the others), so it is tried last.
        """
        outage = _Outage(self._log, len(self.settings.addresses))
        addresses = self.settings.addresses
        delay = self._backoff_min
        try_v311_now = False
        failed_in_a_row = 0
        refused_tcp: set[int] = set()  # brokers of this round that refused TCP
        while not self._stop_requested.is_set():
            addr = addresses[self._index]
            protocol: Literal["5", "3.1.1"] = (
                "3.1.1" if (addr.url in self._v311 or try_v311_now) else "5"
            )
            try:
                session = await self._open_session(addr, protocol)
            except _ConnectFailed as exc:
                if self._stop_requested.is_set():
                    break
                if (
                    self.settings.protocol == "auto"
                    and protocol == "5"
                    and exc.maybe_v5_refused
                ):
                    # The broker may only speak 3.1.1: try that at once.
                    try_v311_now = True
                    self._log.info(
                        "MQTT broker %s did not accept MQTT 5 (%s); trying MQTT 3.1.1",
                        addr.url,
                        exc,
                    )
                    continue
                try_v311_now = False
                outage.failed(addr.url, str(exc), self._outbox.depth())
                failed_in_a_row += 1
                if exc.refused_tcp:
                    refused_tcp.add(self._index)
                if len(addresses) > 1:
                    self._index = (self._index + 1) % len(addresses)
                    if failed_in_a_row < len(addresses):
                        continue  # the next broker at once
                    # Every broker failed: the next round starts at one that answered.
                    n = len(addresses)
                    self._index = next((i % n for i in range(self._index, self._index + n)
                                        if i % n not in refused_tcp), self._index)
                failed_in_a_row = 0
                refused_tcp.clear()
                await self._sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._backoff_max)
                continue
            if try_v311_now:
                self._v311.add(addr.url)
            if protocol == "3.1.1" and not self._said_v311:
                self._said_v311 = True
                self._log.warning(
                    "MQTT broker %s: using MQTT 3.1.1 (%s). MQTT 5 features are "
                    "unavailable: nudges go without MQTT message expiry (their payload's "
                    "at + valid_for_s still says until when they hold), and PUBACKs carry "
                    "no reason codes, so a message the broker refuses (its ACL) is "
                    "acknowledged and lost without a trace",
                    addr.url,
                    "configured" if self.settings.protocol == "3.1.1"
                    else "the broker speaks only 3.1.1",
                )
            try_v311_now = False
            delay = self._backoff_min
            failed_in_a_row = 0
            refused_tcp.clear()
            self._connects += 1
            self._last_protocol = protocol
            outage.connected(addr.url, self._index, protocol, self._outbox.depth())
            self._session = session
            try:
                await self._serve(session)
                if self._stop_requested.is_set():
                    await self._shutdown(session)
                else:
                    self._after_loss(session)
                    outage.lost(addr.url, session.lost_reason, len(session.inflight))
                    await self._close(session)
            except Exception:
                await self._close(session)
                raise
            finally:
                if session.timer is not None:
                    session.timer.cancel()
                self._flush_acks()

    # -- connection ----------------------------------------------------------------------

    def _will_message(self, reason: str) -> Message:
        return self._will(reason) if callable(self._will) else self._will

    def _new_client(self, addr: BrokerAddress, protocol: Literal["5", "3.1.1"]) -> mqtt.Client:
        st = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=st.client_id,
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            clean_session=None if protocol == "5" else True,
            # Reconnecting is ours: on connection loss paho's thread simply ends.
            reconnect_on_failure=False,
        )
        # Our window (max_inflight) is the limit; paho must not queue behind its own.
        client.max_inflight_messages_set(0)
        client.connect_timeout = self._connect_timeout
        if st.username is not None:
            client.username_pw_set(st.username, st.password)
        if addr.tls:
            # Verified against ca_file or the system store, host name checked, TLS >= 1.2.
            client.tls_set_context(st.ssl_context())  # ValueError: a file does not load
        # Built for this connection: its id and at are fresh, its reason "connection lost".
        topic, payload = self._will_message(REASON_LOST)
        client.will_set(topic, payload, qos=1, retain=True)
        return client

    def _bind(self, session: _Session) -> None:
        """Wire paho callbacks; they run on paho's thread and only post to our loop."""
        loop = self._loop
        assert loop is not None

        def post(fn: Callable[..., None], *args: Any) -> None:
            # A late callback after the loop closed has nobody to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
            max_packet = getattr(props, "MaximumPacketSize", None) if props else None
            post(self._on_connack, session, rc, max_packet)

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(self._on_lost, session, str(rc))

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(self._on_puback, session, mid, rc)

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            post(self._deliver, msg.topic, bytes(msg.payload))

        def on_subscribe(_c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
            post(self._on_suback, session, [(rc.value, str(rc)) for rc in rcs])

        def net_error(text: str) -> None:
            post(self._on_net_error, session, text)

        session.client.enable_logger(_ErrorTap(net_error))
        session.client.on_connect = on_connect
        session.client.on_message = on_message
        session.client.on_subscribe = on_subscribe
        session.client.on_disconnect = on_disconnect
        session.client.on_publish = on_publish

    async def _open_session(
        self, addr: BrokerAddress, protocol: Literal["5", "3.1.1"]
    ) -> _Session:
        loop = self._loop
        assert loop is not None
        try:
            client = self._new_client(addr, protocol)
        except ValueError as exc:  # a certificate file that no longer loads: fixable live
            raise _ConnectFailed(str(exc)) from None
        session = _Session(client=client, protocol=protocol, url=addr.url,
                           connack=loop.create_future())
        self._bind(session)
        st = self.settings
        kwargs: dict[str, Any] = {"clean_start": True} if protocol == "5" else {}
        try:
            # connect() resolves, opens TCP (and TLS) and sends CONNECT: blocking, so not
            # on the loop.
            await loop.run_in_executor(
                None, lambda: client.connect(addr.host, addr.port, st.keepalive_s, **kwargs)
            )
        except (OSError, ValueError) as exc:
            raise _ConnectFailed(_describe(exc, st.ca_file),
                                 refused_tcp=isinstance(exc, ConnectionRefusedError)) from None
        client.loop_start()
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        waiters: set[asyncio.Future[Any]] = {session.connack, stop_wait}
        await asyncio.wait(
            waiters,
            timeout=self._connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        stop_wait.cancel()
        result: ReasonCode | str
        if session.connack.done():
            result = session.connack.result()
        elif self._stop_requested.is_set():
            result = "stopped while connecting"
        else:
            # amqtt, for one, never answers an MQTT 5 CONNECT that carries a will.
            result = f"no CONNACK within {self._connect_timeout:g} s"
        if isinstance(result, ReasonCode) and not result.is_failure:
            return session
        self._abort(session)
        await loop.run_in_executor(None, client.loop_stop)
        if isinstance(result, ReasonCode):
            refused_v5 = result.value in (_V5_UNSUPPORTED, _V3_UNACCEPTABLE_PROTOCOL)
            raise _ConnectFailed(f"refused: {result}", maybe_v5_refused=refused_v5)
        # Closed before CONNACK: what a 3.1.1-only broker may do to an MQTT 5 CONNECT; not
        # when a TLS alert said why (a client certificate missing or refused).
        raise _ConnectFailed(result, maybe_v5_refused="_ALERT_" not in session.net_error)

    def _on_connack(self, session: _Session, rc: ReasonCode, max_packet: int | None) -> None:
        if not session.connack.done():
            session.max_packet = max_packet
            session.connack.set_result(rc)

    def _on_net_error(self, session: _Session, text: str) -> None:
        session.net_error = text

    def _on_lost(self, session: _Session, reason: str) -> None:
        if session.net_error:
            reason = f"{reason}: {session.net_error}"
        if not session.connack.done():
            session.connack.set_result(f"connection closed before CONNACK ({reason})")
        session.lost_reason = reason
        session.lost.set()
        self._wake.set()

    def _abort(self, session: _Session) -> None:
        """Drop the TCP connection without DISCONNECT (the broker then sends the will)."""
        sock = session.client.socket()
        if isinstance(sock, socket.socket):  # also ssl.SSLSocket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _close(self, session: _Session) -> None:
        loop = self._loop
        assert loop is not None
        self._abort(session)
        # The thread ends by itself once the connection is gone; join it off the loop.
        await loop.run_in_executor(None, session.client.loop_stop)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    def _after_loss(self, session: _Session) -> None:
        """Poison check after a lost connection.

        A broker that cannot take a message may close the connection instead of refusing
        it (Mosquitto over its max_packet_size with MQTT 3.1.1, or over message_size_limit
        with MQTT 5). After a loss with rows in flight, the next connection sends one row
        at a time for a while; a row that is the only one in flight when the connection
        drops, within 2 s of being sent and after the broker acknowledged the birth on that
        connection (so the link itself worked), three times in a row, goes to the dead
        letters instead of killing every connection.
        """
        if not session.inflight:
            return
        if len(session.inflight) == 1 and self._probe_left and not session.control:
            (flight,) = session.inflight.values()
            if time.monotonic() - flight.sent_at <= _POISON_WINDOW_S:
                strikes = self._strikes[flight.row] = self._strikes.get(flight.row, 0) + 1
                if strikes >= _POISON_STRIKES:
                    del self._strikes[flight.row]
                    self._dead_letter(
                        flight.row,
                        f"the broker closed the connection each of {strikes} times it was "
                        f"sent ({session.lost_reason})",
                    )
                    session.inflight.clear()
        self._probe_left = max(self._probe_left, min(len(session.inflight), self._max_inflight))
        self._probe_left = max(self._probe_left, 1)

    # -- sending -------------------------------------------------------------------------

    async def _serve(self, session: _Session) -> None:
        """Birth, then keep the in-flight window full until the connection ends or stop."""
        s = session
        s.boundary = self._outbox.last_row()
        s.live_cursor = s.boundary
        s.started = time.monotonic()
        s.tokens_at = s.started
        # No burst at the start: the set rate holds from the first replayed message.
        s.tokens = math.inf if self._replay_per_s is None else 1.0
        if not s.boundary:
            s.backlog_done = True
        elif self._connects > 1 or self._outbox.depth() > 20:  # not the few rows of a start
            self._log.info(
                "MQTT: %d messages pending since before this connection (oldest %.0f s); "
                "zone state first, then the backlog at %s/s beside live messages",
                self._outbox.depth(),
                self._outbox.oldest_age_s() or 0.0,
                "unlimited" if self._replay_per_s is None else f"{self._replay_per_s:g}",
            )
        if self._subscriptions:
            s.client.subscribe(list(self._subscriptions))
        topic, payload = self._birth()
        self._publish_control(s, topic, payload)
        for topic, payload in self._announce() if self._announce is not None else ():
            self._publish_control(s, topic, payload)
        while not self._stop_requested.is_set() and not s.lost.is_set():
            self._wake.clear()
            self._fill_window(s)
            await self._wake.wait()

    def _bucket_size(self) -> float:
        return math.inf if self._replay_per_s is None else max(1.0, self._replay_per_s)

    def _fill_window(self, s: _Session) -> None:
        """State first, then live rows, then the backlog at its rate, in that order."""
        window = 1 if self._probe_left else self._max_inflight
        # The state lane: the latest retained state of each zone, whatever its age. Then
        # live rows (enqueued since the connection came up): never behind the backlog.
        if not self._fill_lane(s, window, "state") or not self._fill_lane(s, window, "live"):
            return
        if not s.backlog_done:
            self._fill_backlog(s, window)

    def _fill_lane(self, s: _Session, window: int, lane: Literal["state", "live"]) -> bool:
        """Send what the lane has while the window has room; False if the connection is
        going away."""
        while (room := window - len(s.inflight)) > 0:
            if lane == "state":
                batch = self._outbox.pending(room, s.state_cursor, lane="state")
            else:
                batch = self._outbox.pending(room, s.live_cursor, lane="normal")
            if not batch:
                return True
            for msg in batch:
                if not self._send(s, msg, lane):
                    return False
        return True

    def _fill_backlog(self, s: _Session, window: int) -> None:
        now = time.monotonic()
        if self._replay_per_s is not None:
            s.tokens = min(
                self._bucket_size(), s.tokens + (now - s.tokens_at) * self._replay_per_s
            )
        s.tokens_at = now
        # At most half the window, so live rows always find room.
        share = max(1, window // 2)
        while True:
            room = min(window - len(s.inflight), share - s.backlog_inflight, s.tokens)
            if room < 1:
                break
            batch = self._outbox.pending(
                int(min(room, 1000)), s.backlog_cursor, lane="normal", max_row=s.boundary
            )
            if not batch:
                break
            for msg in batch:
                s.tokens -= 1
                if not self._send(s, msg, "backlog"):
                    return
        if not self._outbox.pending(1, s.backlog_cursor, lane="normal", max_row=s.boundary):
            s.backlog_done = True
            if s.backlog_sent:
                self._log.info("MQTT: backlog replayed (%d messages in %.1f s)",
                               s.backlog_sent, now - s.started)
        elif s.tokens < 1 and self._replay_per_s is not None:
            self._wake_later(s, (1 - s.tokens) / self._replay_per_s)

    def _wake_later(self, s: _Session, delay: float) -> None:
        """One pending timer per connection to come back when the bucket has a token."""
        loop = self._loop
        if loop is None or (s.timer is not None and s.timer.when() > loop.time()):
            return
        s.timer = loop.call_later(delay, self._wake.set)

    def _send(self, s: _Session, msg: OutMessage, lane: str) -> bool:
        """Hand one row to paho; False if the connection is going away."""
        if lane == "state":
            s.state_cursor = msg.row
        elif lane == "live":
            s.live_cursor = msg.row
        else:
            s.backlog_cursor = msg.row
        props = None
        if msg.expiry_s is not None:
            remaining = msg.expiry_s - max(0.0, time.time() - msg.created_at)
            if remaining <= 0:
                # Too late to matter (a nudge for a queue that has moved on).
                self._expired += 1
                self._queue_ack(msg.row)
                return True
            if s.protocol == "5":
                props = Properties(PacketTypes.PUBLISH)
                props.MessageExpiryInterval = math.ceil(remaining)
        replayed = msg.row <= s.boundary
        payload = _mark_replayed(msg.payload) if replayed else msg.payload
        refusal = _refusal(msg.topic, payload, s.max_packet)
        if refusal is not None:
            self._dead_letter(msg.row, refusal)
            return True
        was_up = s.client.is_connected()
        try:
            info = s.client.publish(
                msg.topic, payload, qos=msg.qos, retain=msg.retain, properties=props
            )
        except ValueError as exc:  # paho's own checks: topic, QoS, payload size
            self._dead_letter(msg.row, f"refused by the MQTT client: {exc}")
            return True
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The connection is going away; the next one starts over from the outbox. If it
            # was up until this publish, the broker reset it while paho wrote this very row
            # (Mosquitto over max_packet_size): the row counts as in flight for the poison
            # check (_after_loss), as if the reset had come a moment later.
            if was_up:
                s.inflight[info.mid] = _Flight(msg.row, lane == "backlog", time.monotonic())
            self._log.debug("MQTT: row %d not sent (%s); the connection is going away",
                            msg.row, info.rc)
            return False
        s.inflight[info.mid] = _Flight(msg.row, lane == "backlog", time.monotonic())
        self._sent += 1
        if replayed:
            self._replayed += 1
        if lane == "backlog":
            s.backlog_sent += 1
        return True

    def _on_suback(self, session: _Session, codes: list[tuple[int, str]]) -> None:
        for (topic_filter, _qos), (value, text) in zip(self._subscriptions, codes, strict=False):
            if value >= 0x80:
                self._log.error("MQTT broker %s refused the subscription to %r (%s, 0x%02X)",
                                session.url, topic_filter, text, value)

    def _deliver(self, topic: str, payload: bytes) -> None:
        """On the loop: one received message to ``on_message``; its failure is logged."""
        handler = self._on_message
        if handler is None:
            return
        try:
            result = handler(topic, payload)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_done)
        except Exception:  # noqa: BLE001 - a consumer's bug must not stop delivery
            self._handler_failed(topic)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._handler_failed("(task)", task.exception())

    def _handler_failed(self, topic: str, exc: BaseException | None = None) -> None:
        # Logged in full once, then at debug: a handler failing on every message must
        # not flood the journal.
        level = logging.DEBUG if self._said_handler_error else logging.ERROR
        self._said_handler_error = True
        self._log.log(level, "MQTT: on_message failed for a message on %s", topic,
                      exc_info=exc if exc is not None else True)

    def _dead_letter(self, row: int, reason: str) -> None:
        try:
            moved = self._outbox.dead_letter(row, reason)
        except Exception:  # noqa: BLE001 - kept; tried again on the next connection
            self._log.exception("could not move outbox row %d to the dead letters", row)
            return
        if moved:
            self._dead_lettered += 1
            self._log.error("MQTT: outbox row %d moved to the dead letters: %s", row, reason)

    def _publish_control(self, session: _Session, topic: str, payload: bytes) -> None:
        """Publish a retained QoS 1 status message outside the outbox."""
        assert self._loop is not None
        info = session.client.publish(topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            session.control[info.mid] = self._loop.create_future()

    def _on_puback(self, session: _Session, mid: int, rc: ReasonCode) -> None:
        flight = session.inflight.pop(mid, None)
        if flight is None:
            fut = session.control.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(not rc.is_failure)
            return
        self._strikes.pop(flight.row, None)
        if self._probe_left:
            self._probe_left -= 1
        if not rc.is_failure:
            self._acked += 1
            self._queue_ack(flight.row)
        elif rc.value in _TRANSIENT:
            self._rejected += 1
            self._log.warning(
                "MQTT broker %s refused outbox row %d for now (%s); retried on the next "
                "connection",
                session.url,
                flight.row,
                rc,
            )
        else:
            self._dead_letter(flight.row, f"refused by the broker: {rc} (0x{rc.value:02X})")
        self._wake.set()

    def _queue_ack(self, row: int) -> None:
        # PUBACKs arrive in bursts; one transaction (one fsync) for each burst.
        self._ack_queue.append(row)
        if not self._ack_flush_scheduled and self._loop is not None:
            self._ack_flush_scheduled = True
            self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_flush_scheduled = False
        rows, self._ack_queue = self._ack_queue, []
        if not rows:
            return
        try:
            self._outbox.ack_many(rows)
        except Exception:  # noqa: BLE001
            # The rows stay and are sent again: a duplicate, not a loss.
            self._log.exception("could not delete %d acknowledged outbox rows", len(rows))

    async def _shutdown(self, session: _Session) -> None:
        if not self._graceful:
            await self._close(session)
            return
        deadline = time.monotonic() + self._stop_timeout
        while session.inflight and not session.lost.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        if not session.lost.is_set():
            try:
                topic, payload = self._will_message(REASON_SHUTDOWN)
            except Exception:  # noqa: BLE001 - the Last Will still tells the truth
                self._log.exception("could not build the shutdown status; leaving it to the will")
                await self._close(session)
                return
            self._publish_control(session, topic, payload)
            pending = list(session.control.values())
            if pending:
                await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
            session.client.disconnect()
        assert self._loop is not None
        await self._loop.run_in_executor(None, session.client.loop_stop)
        self._log.info("disconnected from MQTT broker %s", session.url)


def _check_filter(topic_filter: str, qos: int) -> None:
    """ValueError unless ``topic_filter`` is a valid MQTT topic filter and qos 0..2."""
    if qos not in (0, 1, 2):
        raise ValueError(f"subscription {topic_filter!r}: qos must be 0, 1 or 2, not {qos!r}")
    if not topic_filter or "\x00" in topic_filter or len(topic_filter.encode()) > 65535:
        raise ValueError(f"subscription {topic_filter!r}: not a valid MQTT topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
                "+" in level and level != "+"):
            raise ValueError(f"subscription {topic_filter!r}: '+' must be a whole level and "
                             "'#' the whole last level")


def _mark_replayed(payload: bytes) -> bytes:
    """The payload with ``"replayed": true`` added (JSON objects only; others unchanged)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict):
        return payload
    obj["replayed"] = True
    return json.dumps(obj, separators=(",", ":")).encode()


def _refusal(topic: str, payload: bytes, max_packet: int | None) -> str | None:
    """Why no broker would take this message (None if it looks fine).

    paho refuses wildcards itself, but over MQTT 5 it sends an empty topic (meant for
    topic aliases) and it sends NUL characters; a broker answers both by closing the
    connection, which would kill every connection the row is retried on.
    """
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return f"wildcard in topic {topic!r}"
    if "\x00" in topic:
        return f"NUL character in topic {topic!r}"
    topic_len = len(topic.encode())
    if topic_len > 65535:
        return f"topic is {topic_len} bytes, more than MQTT's 65535"
    if max_packet is not None:
        # Fixed header (up to 5 bytes), topic, packet id, properties (expiry: up to 6).
        size = 5 + 2 + topic_len + 2 + 6 + len(payload)
        if size > max_packet:
            return (
                f"message of about {size} bytes is larger than the broker's maximum "
                f"packet size ({max_packet} bytes)"
            )
    return None


class _ErrorTap(logging.Logger):
    """A logger for paho that hands its error lines (socket and TLS errors, such as the
    broker's alert for a missing client certificate) to ``sink`` and formats nothing else."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__("agent.publisher.paho", logging.ERROR)
        self._sink = sink

    def log(self, level: int, msg: object, *args: Any, **_kw: Any) -> None:
        if level >= logging.ERROR:
            with contextlib.suppress(Exception):
                self._sink(str(msg) % args if args else str(msg))


class _Outage:
    """Logs an outage once when it starts (per broker of the list), then at most once a
    minute, then its end; with a failover list, every connection names its broker."""

    REPEAT_S = 60.0

    def __init__(self, log: logging.Logger, brokers: int) -> None:
        self._log = log
        self._brokers = brokers
        self._since: float | None = None
        self._last_log = 0.0
        self._attempts = 0
        self._ever_connected = False
        self._said: set[str] = set()  # brokers whose failure this outage has logged

    def failed(self, url: str, error: str, depth: int) -> None:
        now = time.monotonic()
        self._attempts += 1
        if self._since is None:
            self._since = now
        if url not in self._said:
            self._said.add(url)
            self._last_log = now
            self._log.warning(
                "MQTT broker %s unreachable: %s; buffering in the outbox (%d messages), "
                "%s",
                url,
                error,
                depth,
                "trying the next broker of the list" if self._brokers > 1
                else "retrying with backoff",
            )
        elif now - self._last_log >= self.REPEAT_S:
            self._last_log = now
            self._log.warning(
                "MQTT broker %s still unreachable after %d attempts in %.0f s: %s; "
                "%d messages buffered",
                url if self._brokers == 1 else f"{url} (and the other brokers of the list)",
                self._attempts,
                now - self._since,
                error,
                depth,
            )
        else:
            self._log.debug("MQTT broker %s: connect failed: %s", url, error)

    def lost(self, url: str, reason: str, inflight: int) -> None:
        self._since = time.monotonic()
        self._last_log = self._since
        self._attempts = 0
        self._said.clear()
        self._log.warning(
            "lost connection to MQTT broker %s (%s); %d messages in flight will be re-sent",
            url,
            reason,
            inflight,
        )

    def connected(self, url: str, index: int, protocol: str, depth: int) -> None:
        where = f"MQTT {protocol}" if self._brokers == 1 else (
            f"MQTT {protocol}; broker {index + 1} of {self._brokers} in broker.url")
        if self._since is not None:
            self._log.info(
                "connected to MQTT broker %s (%s) after %.0f s; %d messages to send",
                url,
                where,
                time.monotonic() - self._since,
                depth,
            )
        elif not self._ever_connected or self._brokers > 1:
            self._log.info("connected to MQTT broker %s (%s)", url, where)
        self._since = None
        self._attempts = 0
        self._said.clear()
        self._ever_connected = True


# OpenSSL's X509_V_ERR_* codes of the verification failures a venue meets, with the fix.
_VERIFY_FIX = {
    9: "its validity starts in the future: is this gateway's clock right (NTP)?",
    10: "renew the broker's certificate (or is this gateway's clock wrong?)",
    62: "the URL's host is not a name the certificate holds: use one it holds",
}


def describe_verify_error(exc: ssl.SSLCertVerificationError, ca_file: str | None) -> str:
    """What a failed verification of the broker's certificate means, for a log line: the
    cause OpenSSL names (``certificate has expired``, ``Hostname mismatch``...) and the fix."""
    cause = exc.verify_message or exc.reason or str(exc)
    fix = _VERIFY_FIX.get(exc.verify_code or 0,
                          f"is it signed by a CA in {ca_file or 'the system trust store'}? "
                          "(broker.ca_file)")
    return (f"TLS: the broker's certificate is refused: {cause} (certificate verify failed, "
            f"OpenSSL code {exc.verify_code}): {fix}")


def _describe(exc: BaseException, ca_file: str | None = None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return describe_verify_error(exc, ca_file)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text
