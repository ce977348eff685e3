"""SerialLink on real pyserial: PTY pairs behind a re-pointable symlink, and socket:// loopback."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
import tty
from collections.abc import Iterator
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
