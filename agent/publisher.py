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
import logging
import math
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.brokerurl import parse_broker_url
from agent.outbox import Outbox

__all__ = ["BrokerSettings", "Protocol", "Publisher", "PublisherStats"]

Protocol = Literal["auto", "5", "3.1.1"]

# MQTT 5 CONNACK reason "Unsupported Protocol Version"; MQTT 3.1.1 return code 1 means the
# same, and some 3.1.1-only brokers (amqtt) answer a v5 CONNECT with it.
_V5_UNSUPPORTED = 0x84
_V3_UNACCEPTABLE_PROTOCOL = 1


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect; ``url`` is ``mqtt://host:port`` or ``mqtts://host:port``."""

    url: str
    client_id: str
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    protocol: Protocol = "auto"
    host: str = field(init=False)
    port: int = field(init=False)
    tls: bool = field(init=False)

    def __post_init__(self) -> None:
        address = parse_broker_url(self.url)  # ValueError naming what is wrong
        if not self.client_id:
            raise ValueError("broker client_id must not be empty")
        if not 0 < self.keepalive_s <= 65535:
            raise ValueError(f"broker keepalive_s must be 1..65535, not {self.keepalive_s}")
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(
                f"broker protocol must be 'auto', '5' or '3.1.1', not {self.protocol!r}"
            )
        if self.ca_file is not None:
            if not address.tls:
                raise ValueError(f"broker ca_file is set but url {self.url!r} is not mqtts://")
            if not Path(self.ca_file).is_file():
                raise ValueError(f"broker ca_file {self.ca_file!r} does not exist")
        if self.password is not None and self.username is None:
            raise ValueError("broker password is set without a username")
        object.__setattr__(self, "host", address.host)
        object.__setattr__(self, "port", address.port)
        object.__setattr__(self, "tls", address.tls)


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot for the health topic and the status line."""

    connected: bool
    protocol: str | None  # "5" or "3.1.1" while connected or after the last connection
    sent: int  # outbox rows handed to the network (re-sends included)
    acked: int  # successful PUBACKs; those rows were deleted
    rejected: int  # PUBACKs with a failure reason; rows kept and retried next connection
    expired: int  # rows dropped unsent because their expiry_s had passed
    reconnects: int  # successful connections after the first
    inflight: int
    outbox_depth: int
    volatile_sent: int
    volatile_dropped: int  # QoS 0 health messages dropped while offline


class _ConnectFailed(Exception):
    def __init__(self, reason: str, *, maybe_v5_refused: bool = False) -> None:
        super().__init__(reason)
        self.maybe_v5_refused = maybe_v5_refused


@dataclass(eq=False)
class _Session:
    """One network connection: its paho client and what is in flight on it."""

    client: mqtt.Client
    protocol: Literal["5", "3.1.1"]
    connack: asyncio.Future[ReasonCode | str]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""
    inflight: dict[int, int] = field(default_factory=dict)  # mid -> outbox row
    control: dict[int, asyncio.Future[bool]] = field(default_factory=dict)  # status messages
    cursor: int = 0  # highest outbox row handed to this connection


class Publisher:
    """Owns the MQTT connection; call ``run()`` as a task, ``kick()`` after each enqueue."""

    def __init__(
        self,
        settings: BrokerSettings,
        outbox: Outbox,
        *,
        will: tuple[str, bytes],
        birth: Callable[[], tuple[str, bytes]],
        max_inflight: int = 20,
        logger: logging.Logger | None = None,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.settings = settings
        self._outbox = outbox
        self._will = will
        self._birth = birth
        self._max_inflight = max_inflight
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
        self._v311_only = settings.protocol == "3.1.1"
        self._last_protocol: str | None = None
        self._ack_queue: list[int] = []
        self._ack_flush_scheduled = False
        self._connects = 0
        self._sent = 0
        self._acked = 0
        self._rejected = 0
        self._expired = 0
        self._volatile_sent = 0
        self._volatile_dropped = 0

    # -- public API ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is up (CONNACK received, not lost)."""
        s = self._session
        return s is not None and s.connack.done() and not s.lost.is_set()

    def kick(self) -> None:
        """Tell the publisher new rows are in the outbox (call from the event loop)."""
        self._wake.set()

    def publish_volatile(self, topic: str, payload: bytes) -> bool:
        """Publish QoS 0 (health); dropped and counted when offline. True if handed over."""
        s = self._session
        if s is None or not self.connected:
            self._volatile_dropped += 1
            return False
        info = s.client.publish(topic, payload, qos=0)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._volatile_dropped += 1
            return False
        self._volatile_sent += 1
        return True

    def stats(self) -> PublisherStats:
        """Counters since construction, plus the current outbox depth."""
        s = self._session
        return PublisherStats(
            connected=self.connected,
            protocol=self._last_protocol,
            sent=self._sent,
            acked=self._acked,
            rejected=self._rejected,
            expired=self._expired,
            reconnects=max(0, self._connects - 1),
            inflight=len(s.inflight) if s else 0,
            outbox_depth=self._outbox.depth(),
            volatile_sent=self._volatile_sent,
            volatile_dropped=self._volatile_dropped,
        )

    async def stop(self, graceful: bool = True) -> None:
        """Stop ``run()`` and wait for it.

        graceful: wait (bounded) for in-flight PUBACKs, publish the status "offline"
        message retained, then DISCONNECT. Not graceful: drop the connection without
        DISCONNECT, so the broker itself publishes the Last Will (also "offline").
        """
        self._graceful = graceful
        self._stop_requested.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Connect, publish birth, drain the outbox; reconnect with backoff until ``stop()``.

        Never raises because the broker is down or unreachable; those are logged.
        """
        self._loop = asyncio.get_running_loop()
        self._running = True
        outage = _Outage(self._log, self.settings.url)
        delay = self._backoff_min
        try_v311_now = False
        try:
            while not self._stop_requested.is_set():
                protocol: Literal["5", "3.1.1"] = (
                    "3.1.1" if (self._v311_only or try_v311_now) else "5"
                )
                try:
                    session = await self._open_session(protocol)
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
                            self.settings.url,
                            exc,
                        )
                        continue
                    try_v311_now = False
                    outage.failed(str(exc), self._outbox.depth())
                    await self._sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self._backoff_max)
                    continue
                if try_v311_now and not self._v311_only:
                    self._v311_only = True
                    self._log.warning(
                        "MQTT broker %s speaks only MQTT 3.1.1; using it. MQTT 5 features "
                        "are unavailable: nudges are sent without message expiry",
                        self.settings.url,
                    )
                try_v311_now = False
                delay = self._backoff_min
                self._connects += 1
                self._last_protocol = protocol
                outage.connected(protocol, self._outbox.depth())
                self._session = session
                try:
                    await self._serve(session)
                    if self._stop_requested.is_set():
                        await self._shutdown(session)
                    else:
                        outage.lost(session.lost_reason, len(session.inflight))
                        await self._close(session)
                finally:
                    self._flush_acks()
        finally:
            s = self._session
            if s is not None and not s.lost.is_set() and s.connack.done():
                # Cancelled while connected: drop the socket so the will tells the truth.
                self._abort(s)
            self._flush_acks()
            self._running = False
            self._done.set()

    # -- connection ----------------------------------------------------------------------

    def _new_client(self, protocol: Literal["5", "3.1.1"]) -> mqtt.Client:
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
        if st.tls:
            client.tls_set(ca_certs=st.ca_file)
        topic, payload = self._will
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

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(self._on_connack, session, rc)

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(self._on_lost, session, str(rc))

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(self._on_puback, session, mid, rc)

        session.client.on_connect = on_connect
        session.client.on_disconnect = on_disconnect
        session.client.on_publish = on_publish

    async def _open_session(self, protocol: Literal["5", "3.1.1"]) -> _Session:
        loop = self._loop
        assert loop is not None
        client = self._new_client(protocol)
        session = _Session(client=client, protocol=protocol, connack=loop.create_future())
        self._bind(session)
        st = self.settings
        kwargs: dict[str, Any] = {"clean_start": True} if protocol == "5" else {}
        try:
            # connect() resolves, opens TCP (and TLS) and sends CONNECT: blocking, so not
            # on the loop.
            await loop.run_in_executor(
                None, lambda: client.connect(st.host, st.port, st.keepalive_s, **kwargs)
            )
        except (OSError, ValueError) as exc:
            raise _ConnectFailed(_describe(exc)) from None
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
        # Closed before CONNACK: what a 3.1.1-only broker may do to an MQTT 5 CONNECT.
        raise _ConnectFailed(result, maybe_v5_refused=True)

    def _on_connack(self, session: _Session, rc: ReasonCode) -> None:
        if not session.connack.done():
            session.connack.set_result(rc)

    def _on_lost(self, session: _Session, reason: str) -> None:
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

    # -- sending -------------------------------------------------------------------------

    async def _serve(self, session: _Session) -> None:
        """Birth, then keep the in-flight window full until the connection ends or stop."""
        topic, payload = self._birth()
        self._publish_control(session, topic, payload)
        while not self._stop_requested.is_set() and not session.lost.is_set():
            self._wake.clear()
            self._fill_window(session)
            await self._wake.wait()

    def _fill_window(self, session: _Session) -> None:
        while (room := self._max_inflight - len(session.inflight)) > 0:
            batch = self._outbox.pending(room, after_row=session.cursor)
            if not batch:
                return
            for msg in batch:
                props = None
                if msg.expiry_s is not None:
                    remaining = msg.expiry_s - max(0.0, time.time() - msg.created_at)
                    if remaining <= 0:
                        # Too late to matter (a nudge for a queue that has moved on).
                        self._expired += 1
                        session.cursor = msg.row
                        self._queue_ack(msg.row)
                        continue
                    if session.protocol == "5":
                        props = Properties(PacketTypes.PUBLISH)
                        props.MessageExpiryInterval = math.ceil(remaining)
                info = session.client.publish(
                    msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=props
                )
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # connection is going away; the next one starts from row 0
                session.cursor = msg.row
                session.inflight[info.mid] = msg.row
                self._sent += 1

    def _publish_control(self, session: _Session, topic: str, payload: bytes) -> None:
        """Publish a retained QoS 1 status message outside the outbox."""
        assert self._loop is not None
        info = session.client.publish(topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            session.control[info.mid] = self._loop.create_future()

    def _on_puback(self, session: _Session, mid: int, rc: ReasonCode) -> None:
        row = session.inflight.pop(mid, None)
        if row is None:
            fut = session.control.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(not rc.is_failure)
            return  # else a QoS 0 health message went out
        if rc.is_failure:
            self._rejected += 1
            self._log.error(
                "MQTT broker %s rejected outbox row %d: %s; kept, retried on next connection",
                self.settings.url,
                row,
                rc,
            )
        else:
            self._acked += 1
            self._queue_ack(row)
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
        except Exception:
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
            topic, payload = self._will
            self._publish_control(session, topic, payload)
            pending = list(session.control.values())
            if pending:
                await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
            session.client.disconnect()
        assert self._loop is not None
        await self._loop.run_in_executor(None, session.client.loop_stop)
        self._log.info("disconnected from MQTT broker %s", self.settings.url)


class _Outage:
    """Logs an outage once when it starts, then at most once a minute, then its end."""

    REPEAT_S = 60.0

    def __init__(self, log: logging.Logger, url: str) -> None:
        self._log = log
        self._url = url
        self._since: float | None = None
        self._last_log = 0.0
        self._attempts = 0
        self._ever_connected = False

    def failed(self, error: str, depth: int) -> None:
        now = time.monotonic()
        self._attempts += 1
        if self._since is None:
            self._since = now
            self._last_log = now
            self._log.warning(
                "MQTT broker %s unreachable: %s; buffering in the outbox (%d messages), "
                "retrying with backoff",
                self._url,
                error,
                depth,
            )
        elif now - self._last_log >= self.REPEAT_S:
            self._last_log = now
            self._log.warning(
                "MQTT broker %s still unreachable after %d attempts in %.0f s: %s; "
                "%d messages buffered",
                self._url,
                self._attempts,
                now - self._since,
                error,
                depth,
            )
        else:
            self._log.debug("MQTT broker %s: connect failed: %s", self._url, error)

    def lost(self, reason: str, inflight: int) -> None:
        self._since = time.monotonic()
        self._last_log = self._since
        self._attempts = 0
        self._log.warning(
            "lost connection to MQTT broker %s (%s); %d messages in flight will be re-sent",
            self._url,
            reason,
            inflight,
        )

    def connected(self, protocol: str, depth: int) -> None:
        if self._since is not None:
            self._log.info(
                "connected to MQTT broker %s (MQTT %s) after %.0f s; %d messages to send",
                self._url,
                protocol,
                time.monotonic() - self._since,
                depth,
            )
        elif not self._ever_connected:
            self._log.info("connected to MQTT broker %s (MQTT %s)", self._url, protocol)
        self._since = None
        self._attempts = 0
        self._ever_connected = True


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text
