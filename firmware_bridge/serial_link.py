"""The serial link: one reader's port, kept open, read and decoded in its own thread.

A :class:`SerialLink` opens any pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``,
``rfc2217://host:port``, ``loop://``), reads bytes, stamps each chunk with the host clock at
receipt, feeds its decoder and hands the reads to ``on_reads``. When the port cannot be
opened or fails while reading (USB reader unplugged, PTY closed, TCP bridge dropped) it
reports the reader offline once, drops the decoder's partial frame and retries with
exponential backoff until the port comes back, then reports it online again.

Threading: every callback (``on_reads``, ``on_state``, ``on_connect``, ``poll``) runs in the
link's own thread. Callers must only hand data over (e.g. ``loop.call_soon_threadsafe`` or a
bounded queue) and return quickly: a slow callback delays reading and a reader's UART
buffer is small. Exceptions raised by callbacks are logged and do not stop the link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from firmware_bridge import pn532, uhf_m100
from firmware_bridge.protocols import DEFAULT_BAUDRATE, Decoder, make_decoder
from firmware_bridge.records import RawRead

log = logging.getLogger(__name__)

OnReads = Callable[[str, float, list[RawRead]], None]
OnState = Callable[[str, bool, "str | None"], None]

# Upper bound on bytes handed to the decoder in one go; keeps one chunk's latency bounded
# when a reader floods the line.
_MAX_CHUNK = 65536

#: A decoder that raised this many times within DEGRADED_WINDOW_S marks its reader degraded
#: (decoders never raise; one that does keeps doing it on the same kind of bytes).
DEGRADED_AFTER_ERRORS = 3
#: Seconds over which decoder errors are counted for ``degraded``; also the least time
#: between two log records about decoder errors of one link.
DEGRADED_WINDOW_S = 60.0
# Bytes of a failing input shown in the log (hex): enough to recognise the frame.
_LOG_BYTES = 64


def describe_error(exc: BaseException) -> str:
    """The OS error behind ``exc`` in one short phrase, e.g. ``[Errno 2] No such file...``.

    pyserial wraps OS errors as ``SerialException(errno, "could not open port X: ...")``,
    repeating the path; the errno alone says what an installer needs.
    """
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return f"[Errno {code}] {os.strerror(code)}"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class LinkHealth:
    """A snapshot of one link, for the gateway health topic and ``doctor``.

    reads: reads handed to ``on_reads`` since start. frames / skipped_bytes: the decoder's
    counters. bad_frames: the decoder's, plus one per input the decoder raised on.
    last_read_ts: receipt time (``clock()`` seconds) of the latest read, ``None`` before the
    first. connects: successful opens since start. last_error: the message of the latest
    open/read failure, ``None`` if there never was one. decoder_errors: inputs the decoder
    raised on since start (decoders never raise, so any is a bug; the link drops those bytes
    and goes on). degraded: the decoder raised ``DEGRADED_AFTER_ERRORS`` times within the
    last ``DEGRADED_WINDOW_S`` seconds: the reader is online but its reads are being lost.
    """

    reader_id: str
    url: str
    online: bool
    reads: int
    frames: int
    bad_frames: int
    skipped_bytes: int
    last_read_ts: float | None
    connects: int
    last_error: str | None
    decoder_errors: int = 0
    degraded: bool = False


class SerialLink:
    """Keeps one reader's serial port open and decoded in a daemon thread.

    ``baudrate`` in baud (ignored by socket:// URLs). ``backoff_initial_s`` /
    ``backoff_max_s``: seconds between reopen attempts, doubling up to the cap.
    ``read_timeout_s``: the port read timeout; it bounds how long :meth:`stop` waits and the
    latency of a poll. ``clock`` stamps receipt times (seconds since the epoch by default).
    ``on_connect(link)`` runs after each successful open (send init commands with
    :meth:`write`). ``poll()`` is called every ``poll_interval_s`` seconds while online; the
    bytes it returns, if any, are written to the port (periodic inventory commands).
    """

    def __init__(
        self,
        reader_id: str,
        url: str,
        decoder: Decoder,
        on_reads: OnReads,
        *,
        baudrate: int = 9600,
        on_state: OnState | None = None,
        on_connect: Callable[[SerialLink], object] | None = None,
        poll: Callable[[], bytes | None] | None = None,
        poll_interval_s: float = 0.5,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        read_timeout_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader_id = reader_id
        self.url = url
        self.decoder = decoder
        self.baudrate = baudrate
        self._on_reads = on_reads
        self._on_state = on_state
        self._on_connect = on_connect
        self._poll = poll
        self._poll_interval_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._read_timeout_s = read_timeout_s
        self._clock = clock

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Guards _port (write() from other threads vs close in the link thread) and the
        # counters read by health().
        self._lock = threading.Lock()
        self._port: serial.SerialBase | None = None
        self._online = False
        self._reported: bool | None = None  # last state given to on_state
        self._reads = 0
        self._last_read_ts: float | None = None
        self._connects = 0
        self._last_error: str | None = None
        self._decoder_errors = 0
        # monotonic times of the latest decoder errors, for ``degraded``
        self._error_times: deque[float] = deque(maxlen=DEGRADED_AFTER_ERRORS)
        self._error_logged_at: float | None = None
        self._errors_unlogged = 0

    # -- public API ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the link thread (idempotent while running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"serial-link-{self.reader_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread and close the port. True if the thread ended within ``timeout``."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def online(self) -> bool:
        """True while the port is open and reading."""
        return self._online

    def write(self, data: bytes) -> bool:
        """Write ``data`` to the port from any thread. False when offline or the write failed.

        A failed write does not take the link down by itself; the read loop notices a dead
        port and reconnects.
        """
        with self._lock:
            port = self._port
            if port is None or not self._online:
                return False
            try:
                port.write(data)
            except (serial.SerialException, OSError) as exc:
                log.warning("reader %r: write to %s failed: %s", self.reader_id, self.url, exc)
                return False
        return True

    def health(self) -> LinkHealth:
        """A consistent snapshot of the counters."""
        stats = self.decoder.stats
        with self._lock:
            return LinkHealth(
                reader_id=self.reader_id,
                url=self.url,
                online=self._online,
                reads=self._reads,
                frames=stats.frames,
                bad_frames=stats.bad_frames + self._decoder_errors,
                skipped_bytes=stats.skipped_bytes,
                last_read_ts=self._last_read_ts,
                connects=self._connects,
                last_error=self._last_error,
                decoder_errors=self._decoder_errors,
                degraded=self._degraded(time.monotonic()),
            )

    def _degraded(self, now: float) -> bool:
        times = self._error_times
        return len(times) == DEGRADED_AFTER_ERRORS and now - times[0] <= DEGRADED_WINDOW_S

    # -- link thread --------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._backoff_initial_s
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(
                    self.url, baudrate=self.baudrate, timeout=self._read_timeout_s
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                self._went_offline(f"reader {self.reader_id!r}: cannot open {self.url}: {describe_error(exc)}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
                continue
            backoff = self._backoff_initial_s
            try:
                self._serve(port)
            except (serial.SerialException, OSError) as exc:
                self._went_offline(f"reader {self.reader_id!r}: lost {self.url}: {describe_error(exc)}")
                # A port that opens and then fails at once must not spin: wait before retry.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
            finally:
                self._close(port)
        # A deliberate stop is not an outage: on_state is not called for it.

    def _serve(self, port: serial.SerialBase) -> None:
        """Read until stopped; raises SerialException/OSError when the port fails."""
        self.decoder.reset()
        with self._lock:
            self._port = port
            self._online = True
            self._connects += 1
        self._set_reported(True, None)
        if self._on_connect is not None:
            self._call("on_connect", self._on_connect, self)
        read_chunk = _chunk_reader(port, self._read_timeout_s)
        # The first poll waits one interval so init commands sent by on_connect are
        # answered before the next command arrives (the PN532 handles one at a time).
        next_poll = time.monotonic() + self._poll_interval_s
        while not self._stop.is_set():
            if self._poll is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self._poll_interval_s
                request = self._call("poll", self._poll)
                if isinstance(request, bytes | bytearray) and request:
                    port.write(request)
            chunk = read_chunk()
            if not chunk:
                continue
            ts = self._clock()
            try:
                reads = self.decoder.feed(chunk)
            except Exception as exc:  # decoders never raise; if one does, keep the link alive
                self._decoder_failed(chunk, exc)
                reads = []
            if reads:
                with self._lock:
                    self._reads += len(reads)
                    self._last_read_ts = ts
                self._call("on_reads", self._on_reads, self.reader_id, ts, reads)

    def _decoder_failed(self, chunk: bytes, exc: Exception) -> None:
        """The decoder raised on ``chunk``: drop the bytes it holds (the ones that made it
        raise, or it would raise again on every later chunk), count it, log it (at most
        once per DEGRADED_WINDOW_S, with the bytes in hex) and update ``degraded``."""
        try:
            culprit = self.decoder.buffered or chunk
        except Exception:  # a decoder this broken still must not take the link down
            culprit = chunk
        try:
            self.decoder.reset()
        except Exception:  # a decoder this broken still must not take the link down
            log.debug("reader %r: decoder reset raised too", self.reader_id, exc_info=True)
        now = time.monotonic()
        with self._lock:
            self._decoder_errors += 1
            self._error_times.append(now)
        if self._error_logged_at is not None and now - self._error_logged_at < DEGRADED_WINDOW_S:
            self._errors_unlogged += 1
            return
        shown = culprit[:_LOG_BYTES].hex(" ") + (" ..." if len(culprit) > _LOG_BYTES else "")
        log.error(
            "reader %r: %s decoder raised %s on %d bytes, dropped them: %s%s",
            self.reader_id, self.decoder.protocol, type(exc).__name__, len(culprit), shown,
            f" ({self._errors_unlogged} more errors since the last report)"
            if self._errors_unlogged else "",
            exc_info=self._error_logged_at is None,  # the traceback once is enough
        )
        self._error_logged_at = now
        self._errors_unlogged = 0

    def _went_offline(self, message: str) -> None:
        with self._lock:
            self._online = False
            self._last_error = message
        self.decoder.reset()
        if self._reported is not False:
            log.warning("%s", message)
            self._set_reported(False, message)

    def _set_reported(self, online: bool, message: str | None) -> None:
        self._reported = online
        if self._on_state is not None:
            self._call("on_state", self._on_state, self.reader_id, online, message)

    def _close(self, port: serial.SerialBase) -> None:
        with self._lock:
            self._port = None
            self._online = False
        # Closing a vanished device can fail; it is gone either way.
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()

    def _call(self, what: str, fn: Callable[..., object], *args: object) -> object:
        try:
            return fn(*args)
        except Exception:
            log.exception("reader %r: %s callback raised", self.reader_id, what)
            return None


# -- reading what is there --------------------------------------------------------------


def _chunk_reader(port: serial.SerialBase, wait_s: float) -> Callable[[], bytes]:
    """A function that waits up to ``wait_s`` for bytes and returns all that have arrived
    (at most ``_MAX_CHUNK``), or ``b""``.

    Ports with a file descriptor (ttys, ``socket://``) are waited on with ``select`` and
    then read without blocking: one read takes everything buffered, whatever the transport.
    ``in_waiting`` cannot be trusted for that: pyserial's socket handler reports it as 0 or
    1 (its select says "readable", not how much), so ``read(in_waiting)`` read a TCP bridge
    one byte per select + recv. Ports without one (``rfc2217://``, ``loop://``: fed by a
    thread through a queue, where ``in_waiting`` is exact) wait in ``read(1)`` with the
    port timeout and then take ``in_waiting`` bytes.
    """
    try:
        fd = port.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        fd = None
    if isinstance(fd, int) and fd >= 0:
        port.timeout = 0  # reads never wait: the select below does

        def read_ready() -> bytes:
            ready, _, _ = select.select([fd], [], [], wait_s)
            # Readable but empty raises SerialException in pyserial (device gone, peer
            # closed): the link treats that as a lost port.
            return port.read(_MAX_CHUNK) if ready else b""

        return read_ready

    def read_queued() -> bytes:
        data = port.read(1)
        if data and (waiting := port.in_waiting):
            data += port.read(min(waiting, _MAX_CHUNK - 1))
        return data

    return read_queued


# -- readers that must be asked ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReaderDriver:
    """What a link sends to a reader that only answers when asked.

    on_connect: init commands after each (re)open. poll: the command repeated every
    poll_interval_s seconds.
    """

    on_connect: Callable[[SerialLink], object] | None
    poll: Callable[[], bytes | None] | None
    poll_interval_s: float


def uhf_m100_driver(poll_interval_s: float = 0.2) -> ReaderDriver:
    """M100: one single-inventory round per poll.

    On connect a stop-multiple-inventory is sent first: a module left in multiple
    inventory by an earlier session would otherwise keep streaming on its own. Single
    rounds (rather than one long multiple inventory) keep the reader under our control and
    resume by themselves after a reconnect; each round reports every tag in the field.
    """
    stop = uhf_m100.stop_multi_inventory()
    inventory = uhf_m100.single_inventory()
    return ReaderDriver(lambda link: link.write(stop), lambda: inventory, poll_interval_s)


def pn532_driver(poll_interval_s: float = 0.2, activation_retries: int = 0x02) -> ReaderDriver:
    """PN532: wake-up + SAMConfiguration on connect; MaxRetries at the first poll; then
    InListPassiveTarget (one target, 106 kbps type A) at every poll.

    ``activation_retries`` bounds how long one InListPassiveTarget searches for a card, so
    an empty field answers "0 targets" well within a poll interval.
    """
    init = pn532.WAKEUP + pn532.sam_configuration()
    retries = pn532.rf_max_retries(activation_retries)
    in_list = pn532.in_list_passive_target()
    configured = False

    def on_connect(link: SerialLink) -> None:
        nonlocal configured
        configured = False
        link.write(init)

    def poll() -> bytes:
        nonlocal configured
        if not configured:
            configured = True
            return retries
        return in_list

    return ReaderDriver(on_connect, poll, poll_interval_s)


def driver_for(protocol: str) -> ReaderDriver | None:
    """The driver a serial protocol needs, ``None`` for readers that talk unasked (EM4100)."""
    if protocol == "uhf-m100":
        return uhf_m100_driver()
    if protocol == "pn532":
        return pn532_driver()
    return None


def open_reader_link(
    reader_id: str,
    protocol: str,
    url: str,
    on_reads: OnReads,
    *,
    baudrate: int | None = None,
    poll_interval_s: float | None = None,
    **options: Any,
) -> SerialLink:
    """A (not yet started) link for a configured reader: decoder, baud rate and driver
    chosen by ``protocol``. ``options`` go to :class:`SerialLink` (on_state, clock,
    backoff...). Raises ``UnknownProtocolError`` / ``NotSerialProtocolError`` like
    :func:`make_decoder`.
    """
    decoder = make_decoder(protocol)
    driver = driver_for(protocol)
    if driver is not None:
        options.setdefault("on_connect", driver.on_connect)
        options.setdefault("poll", driver.poll)
        options["poll_interval_s"] = poll_interval_s or driver.poll_interval_s
    return SerialLink(
        reader_id,
        url,
        decoder,
        on_reads,
        baudrate=baudrate or DEFAULT_BAUDRATE[protocol],
        **options,
    )
