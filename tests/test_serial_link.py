"""SerialLink on real pyserial: PTY pairs behind a re-pointable symlink, and socket:// loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_bridge import pn532, uhf_m100
from firmware_bridge.em4100 import Em4100Decoder, encode
from firmware_bridge.records import RawRead
from firmware_bridge.serial_link import SerialLink, open_reader_link
from simulators.pn532_reader import VirtualPn532Reader
from simulators.uhf_reader import VirtualUhfReader

TAG = bytes.fromhex("62E3086CED")
FRAME = encode(TAG)
WAIT_S = 5.0  # generous upper bound for events to arrive; tests finish far sooner


class Pty:
    """A PTY pair: the test plays the reader on ``master``; the link opens the slave path."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation: bytes pass as they are
        self.name = os.ttyname(self.slave)

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def read_master(self, n: int, timeout: float = WAIT_S) -> bytes:
        """Read exactly ``n`` bytes the link wrote, or fewer on timeout."""
        got = b""
        deadline = time.monotonic() + timeout
        os.set_blocking(self.master, False)
        while len(got) < n and time.monotonic() < deadline:
            try:
                got += os.read(self.master, n - len(got))
            except BlockingIOError:
                time.sleep(0.005)
        return got


def point(link: Path, target: str) -> None:
    """Atomically (re)point the symlink ``link`` at ``target`` (udev-style by-id path)."""
    tmp = link.with_suffix(".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Events:
    """Collects link callbacks into one queue, in arrival order."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[str, object, object, object]] = queue.Queue()

    def on_reads(self, reader: str, ts: float, reads: list[RawRead]) -> None:
        self.q.put(("reads", reader, ts, reads))

    def on_state(self, reader: str, online: bool, message: str | None) -> None:
        self.q.put(("state", reader, online, message))

    def next(self, timeout: float = WAIT_S) -> tuple[str, object, object, object]:
        return self.q.get(timeout=timeout)

    def drain(self, for_s: float) -> list[tuple[str, object, object, object]]:
        out = []
        deadline = time.monotonic() + for_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.q.get(timeout=left))
            except queue.Empty:
                break
        return out


@pytest.fixture
def events() -> Events:
    return Events()


@contextlib.contextmanager
def running(link: SerialLink) -> Iterator[SerialLink]:
    link.start()
    try:
        yield link
    finally:
        assert link.stop(timeout=2.0), "link thread did not stop"


def make_link(url: str, events: Events, **kw: object) -> SerialLink:
    return SerialLink(
        "dino-entry",
        url,
        Em4100Decoder(),
        events.on_reads,
        on_state=events.on_state,
        backoff_initial_s=0.02,
        backoff_max_s=0.1,
        **kw,  # type: ignore[arg-type]
    )


def test_reads_arrive_stamped_with_the_link_clock(tmp_path: Path, events: Events) -> None:
    pty = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, pty.name)
    stamps = iter(range(1000, 2000))
    link = make_link(str(port), events, clock=lambda: float(next(stamps)))
    with running(link):
        assert events.next() == ("state", "dino-entry", True, None)
        os.write(pty.master, b"noise" + FRAME[:5])
        os.write(pty.master, FRAME[5:])
        kind, reader, ts, reads = events.next()
        assert (kind, reader, reads) == ("reads", "dino-entry", [RawRead("em4100", TAG)])
        assert isinstance(ts, float) and 1000 <= ts < 2000
        health = link.health()
        assert health.online and health.reads == 1 and health.frames == 1
        assert health.connects == 1 and health.last_read_ts == ts
        assert health.skipped_bytes == len(b"noise")
    assert not link.online
    pty.unplug()


def test_unplug_reports_offline_once_then_reconnects_on_replug(
    tmp_path: Path, events: Events
) -> None:
    first = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, first.name)
    with running(make_link(str(port), events)) as link:
        assert events.next()[2] is True
        # Half a frame, then the cable goes: the partial frame must not glue onto the next.
        os.write(first.master, FRAME[:7])
        time.sleep(0.1)
        first.unplug()
        kind, reader, online, message = events.next()
        assert (kind, reader, online) == ("state", "dino-entry", False)
        assert isinstance(message, str)
        assert "dino-entry" in message and str(port) in message
        # Several backoff periods pass while unplugged: no repeated offline reports.
        assert events.drain(0.5) == []
        assert link.health().last_error is not None and not link.online

        second = Pty()
        point(port, second.name)
        assert events.next() == ("state", "dino-entry", True, None)
        os.write(second.master, FRAME[7:] + FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]
        assert link.health().connects == 2
    second.unplug()


def test_missing_port_gives_clear_message_and_keeps_retrying(
    tmp_path: Path, events: Events
) -> None:
    port = tmp_path / "ttyUSB-missing"
    with running(make_link(str(port), events)) as link:
        kind, _, online, message = events.next()
        assert (kind, online) == ("state", False)
        assert isinstance(message, str)
        assert "dino-entry" in message and str(port) in message
        assert "No such file" in message  # the OS error, not a generic failure
        assert events.drain(0.4) == []
        assert link.write(b"x") is False

        pty = Pty()
        point(port, pty.name)
        assert events.next() == ("state", "dino-entry", True, None)
        os.write(pty.master, FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]
    pty.unplug()


def test_write_on_connect_and_poller_reach_the_reader(tmp_path: Path, events: Events) -> None:
    pty = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, pty.name)
    polls = 0

    def poll() -> bytes:
        nonlocal polls
        polls += 1
        return b"P"

    link = make_link(
        str(port),
        events,
        on_connect=lambda lk: lk.write(b"INIT"),
        poll=poll,
        poll_interval_s=0.02,
    )
    with running(link):
        assert events.next()[2] is True
        assert pty.read_master(4 + 3) == b"INIT" + b"PPP"
        assert link.write(b"HELLO")
        # Polls keep coming, so skip them until our own write shows up.
        got = b""
        deadline = time.monotonic() + WAIT_S
        while b"HELLO" not in got and time.monotonic() < deadline:
            got += pty.read_master(1, timeout=0.5)
        assert got.replace(b"P", b"") == b"HELLO"
    assert polls >= 3
    pty.unplug()


def test_callback_exceptions_do_not_kill_the_link(tmp_path: Path) -> None:
    pty = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, pty.name)
    seen: queue.Queue[list[RawRead]] = queue.Queue()
    calls = 0

    def flaky(reader: str, ts: float, reads: list[RawRead]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("consumer bug")
        seen.put(reads)

    with running(SerialLink("r", str(port), Em4100Decoder(), flaky)) as link:
        deadline = time.monotonic() + WAIT_S
        while not link.online and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(pty.master, FRAME)
        time.sleep(0.2)
        os.write(pty.master, FRAME)
        assert seen.get(timeout=WAIT_S) == [RawRead("em4100", TAG)]
    pty.unplug()


def test_stop_is_prompt_while_offline_with_long_backoff(tmp_path: Path, events: Events) -> None:
    link = SerialLink(
        "r",
        str(tmp_path / "nope"),
        Em4100Decoder(),
        events.on_reads,
        on_state=events.on_state,
        backoff_initial_s=30.0,
        backoff_max_s=30.0,
    )
    link.start()
    assert events.next()[2] is False
    # The backoff wait is interruptible: stop() must not sit out 30 s.
    assert link.stop(timeout=2.0)


class TcpReader:
    """A reader behind a serial-to-Ethernet bridge: a loopback TCP server we can kill."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = self.server.getsockname()[1]
        # A short accept timeout lets close() really stop listening: a socket closed while
        # another thread blocks in accept() keeps accepting on Linux.
        self.server.settimeout(0.02)
        self.conns: queue.Queue[socket.socket] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.conns.put(conn)
        self.server.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()


def test_socket_reader_that_drops_and_comes_back(events: Events) -> None:
    bridge = TcpReader()
    url = f"socket://127.0.0.1:{bridge.port}"
    with running(make_link(url, events)) as link:
        assert events.next() == ("state", "dino-entry", True, None)
        conn = bridge.conns.get(timeout=WAIT_S)
        conn.sendall(FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]

        # The bridge goes away entirely: connection drops, reconnects are refused.
        bridge.close()
        conn.close()
        kind, _, online, message = events.next()
        assert (kind, online) == ("state", False)
        assert isinstance(message, str) and url in message
        assert events.drain(0.4) == []  # refused retries are not reported again
        refused = link.health().last_error
        assert refused is not None and "refused" in refused.lower()

        # It comes back on the same port.
        bridge = TcpReader(bridge.port)
        assert events.next() == ("state", "dino-entry", True, None)
        conn = bridge.conns.get(timeout=WAIT_S)
        conn.sendall(FRAME + FRAME)
        reads: list[RawRead] = []
        while len(reads) < 2:
            batch = events.next()[3]
            assert isinstance(batch, list)
            reads += batch
        assert reads == [RawRead("em4100", TAG)] * 2
        assert link.health().connects == 2
    conn.close()
    bridge.close()


def test_loop_url_round_trip(events: Events) -> None:
    # loop:// echoes writes back: any pyserial URL works, not only device paths.
    with running(make_link("loop://", events)) as link:
        assert events.next()[2] is True
        assert link.write(FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]


# -- readers that must be asked: the link's drivers against the virtual readers ----------


def test_uhf_reader_polled_by_single_inventory_and_replugged(tmp_path: Path) -> None:
    epc = bytes.fromhex("30751FEB705C5904E3D50D70")
    field: list[tuple[bytes, int]] = []
    events = Events()
    with VirtualUhfReader(tmp_path / "ttyUHF0", lambda: list(field)) as reader:
        link = open_reader_link(
            "gate-a", "uhf-m100", str(reader.link_path), events.on_reads,
            on_state=events.on_state, poll_interval_s=0.02,
            backoff_initial_s=0.02, backoff_max_s=0.1,
        )  # fmt: skip
        assert link.baudrate == 115200
        with running(link):
            assert events.next()[2] is True
            # Empty field: the reader answers with error 0x15, which is not a read.
            deadline = time.monotonic() + WAIT_S
            while not link.decoder.stats.frames and time.monotonic() < deadline:
                time.sleep(0.01)
            assert link.health().reads == 0 and link.decoder.stats.frames > 0
            field.append((epc, -55))
            kind, _, _, reads = events.next()
            assert reads == [RawRead("uhf-m100", epc, -55.0)]
            # The first command after connect stops any multi inventory left running.
            assert reader.commands[0].command == uhf_m100.CMD_STOP_MULTI_INVENTORY
            assert {c.command for c in reader.commands[1:]} == {uhf_m100.CMD_INVENTORY}

            reader.unplug()
            while (event := events.next())[0] == "reads":
                pass
            assert event[:3] == ("state", "gate-a", False)
            reader.replug()
            while (event := events.next())[0] == "reads":
                pass
            assert event == ("state", "gate-a", True, None)
            # Polling resumes by itself on the new port.
            while (event := events.next())[0] != "reads":
                pass
            assert event[3] == [RawRead("uhf-m100", epc, -55.0)]


def test_pn532_woken_configured_and_polled(tmp_path: Path) -> None:
    uid = bytes.fromhex("CB98A605")
    field: list[bytes] = []
    events = Events()
    with VirtualPn532Reader(tmp_path / "ttyNFC0", lambda: list(field)) as reader:
        link = open_reader_link(
            "locker-1", "pn532", str(reader.link_path), events.on_reads,
            on_state=events.on_state, poll_interval_s=0.02,
        )  # fmt: skip
        with running(link):
            assert events.next()[2] is True
            # With an empty field polls answer "0 targets" (finite retries were set), so the
            # reader keeps getting InListPassiveTarget commands.
            deadline = time.monotonic() + WAIT_S
            while (
                sum(c.command == pn532.CMD_IN_LIST_PASSIVE_TARGET for c in reader.commands) < 3
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            codes = [c.command for c in reader.commands]
            assert reader.awake  # the wake-up was sent, or nothing would have been answered
            assert codes[:2] == [pn532.CMD_SAM_CONFIGURATION, pn532.CMD_RF_CONFIGURATION]
            assert codes[2:5] == [pn532.CMD_IN_LIST_PASSIVE_TARGET] * 3
            assert link.health().reads == 0

            field.append(uid)
            assert events.next()[3] == [RawRead("pn532", uid)]

            # Replug: the chip is asleep again; the link must wake and configure it anew.
            reader.replug()
            while (event := events.next())[:3] != ("state", "locker-1", True):
                pass
            while (event := events.next())[0] != "reads":
                pass
            assert event[3] == [RawRead("pn532", uid)]
            assert link.health().connects == 2


# -- "Survives the field": a decoder that raises, noise, and reads over TCP -------------


def wait_until(cond: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_corrupted_pn532_ack_does_not_silence_the_reader(tmp_path: Path, events: Events) -> None:
    pty = Pty()
    port = tmp_path / "ttyNFC0"
    point(port, pty.name)
    response = pn532.in_list_passive_target_response(
        [pn532.Pn532Target(1, 0x0004, 0x08, bytes.fromhex("CB98A605"))])
    link = SerialLink("locker-1", str(port), pn532.Pn532Decoder(), events.on_reads,
                      on_state=events.on_state)
    with running(link):
        assert events.next()[2] is True
        os.write(pty.master, bytes.fromhex("00FF00000000"))
        for _ in range(3):
            os.write(pty.master, response)
            assert events.next()[3] == [RawRead("pn532", bytes.fromhex("CB98A605"))]
        health = link.health()
        assert health.bad_frames == 1 and health.decoder_errors == 0 and not health.degraded
    pty.unplug()


class JamsOnBang(Em4100Decoder):
    """A decoder with the bug the PN532 one had: once certain bytes (here ``!``) are in its
    buffer it raises on every later chunk, and never consumes them by itself."""

    def __init__(self) -> None:
        super().__init__()
        self._held = bytearray()

    @property
    def buffered(self) -> bytes:
        return bytes(self._held) + super().buffered

    def feed(self, data: bytes) -> list[RawRead]:
        self._held += data
        if b"!" in self._held:
            raise IndexError("index out of range")
        data, self._held = bytes(self._held), bytearray()
        return super().feed(data)

    def reset(self) -> None:
        self.stats.skipped_bytes += len(self._held)
        self._held.clear()
        super().reset()


def test_decoder_that_raises_loses_only_the_bytes_that_made_it_raise(
    tmp_path: Path, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    pty = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, pty.name)
    link = SerialLink("dino-entry", str(port), JamsOnBang(), events.on_reads,
                      on_state=events.on_state)
    caplog.set_level(logging.ERROR, logger="firmware_bridge.serial_link")
    with running(link):
        assert events.next()[2] is True
        os.write(pty.master, b"!!")
        assert wait_until(lambda: link.health().decoder_errors == 1)
        # The poison is gone: the next frame decodes and the buffer does not grow.
        os.write(pty.master, FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]
        health = link.health()
        assert health.online and not health.degraded and health.bad_frames == 1
        assert link.decoder.buffered == b""

        # A decoder that keeps failing marks the reader degraded, and logs once.
        for n in (2, 3):
            os.write(pty.master, b"!")
            assert wait_until(lambda n=n: link.health().decoder_errors == n)  # type: ignore[misc]
        health = link.health()
        assert health.degraded and health.online and health.decoder_errors == 3
        os.write(pty.master, FRAME)
        assert events.next()[3] == [RawRead("em4100", TAG)]
    records = [r for r in caplog.records if "decoder raised" in r.getMessage()]
    assert len(records) == 1
    assert "IndexError" in records[0].getMessage() and "21 21" in records[0].getMessage()
    pty.unplug()


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds a thread of this process has used (Linux: schedstat, in ns)."""
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


class CountingDecoder(Em4100Decoder):
    """Counts the chunks the link hands over (one per read of the port)."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks = 0
        self.done = threading.Event()
        self.want = 0

    def feed(self, data: bytes) -> list[RawRead]:
        self.chunks += 1
        reads = super().feed(data)
        if self.stats.frames >= self.want:
            self.done.set()
        return reads


def _measure(link: SerialLink, send: Callable[[bytes], None], frames: int) -> dict[str, float]:
    """Reads/s, link-thread CPU per read and chunks for ``frames`` EM4100 frames sent at
    once through ``send``; the link must be running and online."""
    dec = link.decoder
    assert isinstance(dec, CountingDecoder) and link._thread is not None
    dec.want, dec.chunks = dec.stats.frames + frames, 0
    dec.done.clear()
    cpu0, t0 = thread_cpu_s(link._thread), time.perf_counter()
    send(FRAME * frames)
    assert dec.done.wait(30), "reads did not arrive"
    wall, cpu = time.perf_counter() - t0, thread_cpu_s(link._thread) - cpu0
    return {"reads_per_s": frames / wall, "cpu_per_read": cpu / frames, "chunks": dec.chunks}


def test_socket_link_reads_chunks_like_a_tty(tmp_path: Path) -> None:
    """A serial-over-TCP reader must cost what a tty reader costs: reads/s and CPU per read
    of a socket:// link against a PTY link, in the same run, as ratios."""
    frames = 6000  # 84 kB
    pty = Pty()
    port = tmp_path / "ttyRFID0"
    point(port, pty.name)
    bridge = TcpReader()
    noop = Events()
    tty_link = SerialLink("tty", str(port), CountingDecoder(), noop.on_reads)
    sock_link = SerialLink("sock", f"socket://127.0.0.1:{bridge.port}", CountingDecoder(),
                           noop.on_reads)

    def write_pty(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(pty.master, view):]

    runs: dict[str, list[dict[str, float]]] = {"tty": [], "socket": []}
    with running(tty_link), running(sock_link):
        assert wait_until(lambda: tty_link.online and sock_link.online)
        conn = bridge.conns.get(timeout=WAIT_S)
        for _ in range(3):  # best of 3, interleaved: the machine is shared
            for name, link, send in (("tty", tty_link, write_pty),
                                     ("socket", sock_link, conn.sendall)):
                runs[name].append(_measure(link, send, frames))
    best = {name: {"reads_per_s": max(r["reads_per_s"] for r in got),
                   "cpu_per_read": min(r["cpu_per_read"] for r in got),
                   "chunks": max(r["chunks"] for r in got)} for name, got in runs.items()}
    conn.close()
    bridge.close()
    pty.unplug()
    tty, sock = best["tty"], best["socket"]
    print(f"\ntty {tty}\nsocket {sock}\nsocket/tty reads/s {sock['reads_per_s'] / tty['reads_per_s']:.2f}"
          f", CPU per read {sock['cpu_per_read'] / tty['cpu_per_read']:.2f}")
    assert sock["reads_per_s"] >= tty["reads_per_s"] / 2, (sock, tty)
    assert sock["cpu_per_read"] <= 2 * tty["cpu_per_read"], (sock, tty)
    # Chunks, not bytes: each read of the port takes all that is there.
    assert sock["chunks"] <= frames, sock


def test_idle_socket_link_does_not_spin() -> None:
    bridge = TcpReader()
    link = SerialLink("sock", f"socket://127.0.0.1:{bridge.port}", Em4100Decoder(),
                      Events().on_reads, read_timeout_s=0.05)
    with running(link):
        assert wait_until(lambda: link.online)
        conn = bridge.conns.get(timeout=WAIT_S)
        assert link._thread is not None
        cpu0, t0 = thread_cpu_s(link._thread), time.perf_counter()
        time.sleep(0.5)
        busy = (thread_cpu_s(link._thread) - cpu0) / (time.perf_counter() - t0)
    conn.close()
    bridge.close()
    assert busy < 0.05, busy  # waits in select, wakes once per read timeout


class Rfc2217Reader:
    """A reader behind an RFC 2217 (telnet COM-port) bridge on loopback: pyserial's own
    PortManager speaks the protocol; the "device" side is what the test sends."""

    def __init__(self) -> None:
        import serial
        import serial.rfc2217

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.server.settimeout(WAIT_S)
        self._device = serial.serial_for_url("loop://")  # only holds the line settings
        self._rfc2217 = serial.rfc2217
        self.manager: serial.rfc2217.PortManager | None = None
        self.conn: socket.socket | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        self.conn = conn

        class Writer:
            def write(self, data: bytes) -> None:
                conn.sendall(data)

        self.manager = self._rfc2217.PortManager(self._device, Writer())
        self._ready.set()
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                for _ in self.manager.filter(data):  # client's option negotiation
                    pass

    def send(self, data: bytes) -> None:
        assert self._ready.wait(WAIT_S) and self.manager is not None and self.conn is not None
        self.conn.sendall(b"".join(self.manager.escape(data)))

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()
        self.server.close()
        self._thread.join(WAIT_S)
        self._device.close()


# pyserial's rfc2217 client still calls Thread.setDaemon/setName.
@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")
def test_rfc2217_reader_is_read_in_chunks(events: Events) -> None:
    bridge = Rfc2217Reader()
    dec = CountingDecoder()
    link = SerialLink("gate-b", f"rfc2217://127.0.0.1:{bridge.port}", dec, events.on_reads,
                      on_state=events.on_state)
    frames = 500
    with running(link):
        assert events.next() == ("state", "gate-b", True, None)
        bridge.send(FRAME * frames)
        reads: list[RawRead] = []
        while len(reads) < frames:
            batch = events.next()[3]
            assert isinstance(batch, list)
            reads += batch
        assert reads == [RawRead("em4100", TAG)] * frames
        # Whatever has arrived is taken at once, not byte by byte.
        assert dec.chunks < len(FRAME) * frames / 20, dec.chunks
        print(f"\nrfc2217: {len(FRAME) * frames} bytes in {dec.chunks} chunks")
    bridge.close()
