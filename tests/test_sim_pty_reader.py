"""Virtual serial readers on real PTYs, read with real pyserial."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_bridge.em4100 import Em4100Decoder, encode
from simulators.pty_reader import VirtualSerialReader

TAGS = [bytes.fromhex(h) for h in ("62E3086CED", "0000000001", "FF00FF00FF", "0D0A030203")]


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[VirtualSerialReader]:
    r = VirtualSerialReader(tmp_path / "dev" / "rfid-test", encode=encode)
    yield r
    r.close()


def open_port(path: Path) -> serial.Serial:
    return serial.Serial(str(path), 9600, timeout=1.0)


def read_exactly(port: serial.Serial, n: int) -> bytes:
    data = b""
    deadline = time.monotonic() + 5.0
    while len(data) < n and time.monotonic() < deadline:
        data += port.read(n - len(data))
    return data


def test_link_is_a_symlink_to_the_pty(reader: VirtualSerialReader) -> None:
    assert reader.link_path.is_symlink()
    target = os.readlink(reader.link_path)
    assert target == reader.device_path and target.startswith("/dev/pts/")


def test_pyserial_reads_exactly_the_encoded_frames(reader: VirtualSerialReader) -> None:
    with open_port(reader.link_path) as port:
        for tag in TAGS:
            assert reader.send(tag)
        expected = b"".join(encode(t) for t in TAGS)
        assert read_exactly(port, len(expected)) == expected
        assert Em4100Decoder().feed(expected) and reader.sent == len(TAGS)


def test_crlf_variant_and_raw_bytes_pass_unchanged(tmp_path: Path) -> None:
    every_byte = bytes(range(256))  # CR, LF, ^C, ^D, DEL... nothing is cooked or echoed
    with VirtualSerialReader(tmp_path / "id12",
                             encode=lambda t: encode(t, crlf=True)) as r, \
            open_port(r.link_path) as port:
        r.send(TAGS[0])
        r.send_raw(every_byte)
        got = read_exactly(port, 16 + 256)
    assert got == encode(TAGS[0], crlf=True) + every_byte


def test_decoder_resynchronises_after_garbage(reader: VirtualSerialReader) -> None:
    with open_port(reader.link_path) as port:
        noise = b"\x02\x31\x32garbage\x03\xff"
        torn = encode(TAGS[1])[:7]  # a frame cut short by an unplug
        reader.send_raw(noise)
        reader.send(TAGS[0])
        reader.send_raw(torn)
        reader.send(TAGS[2])
        data = read_exactly(port, len(noise) + 14 + len(torn) + 14)
    assert [r.tag_id for r in Em4100Decoder().feed(data)] == [TAGS[0], TAGS[2]]


def test_unplug_errors_the_reader_and_replug_works_at_the_same_path(
    reader: VirtualSerialReader,
) -> None:
    port = open_port(reader.link_path)
    reader.unplug()
    assert not reader.link_path.exists()
    with pytest.raises((serial.SerialException, OSError)):
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # EIO / "returned no data" on the next read
            port.read(1)
    port.close()
    with pytest.raises((serial.SerialException, OSError)):
        open_port(reader.link_path)
    assert not reader.send(TAGS[0]) and reader.dropped == 1

    reader.replug()
    assert reader.link_path.is_symlink()
    assert reader.device_path is not None
    with open_port(reader.link_path) as port2:
        reader.send(TAGS[3])
        assert read_exactly(port2, 14) == encode(TAGS[3])


def test_full_buffer_drops_instead_of_blocking(reader: VirtualSerialReader) -> None:
    start = time.monotonic()
    results = [reader.send(TAGS[0]) for _ in range(20_000)]  # nobody reads: ~280 KB
    assert time.monotonic() - start < 5.0
    assert results[0] and not results[-1]
    assert reader.dropped > 0 and reader.sent + reader.dropped == 20_000


def test_recv_returns_what_the_host_wrote(reader: VirtualSerialReader) -> None:
    assert reader.recv() == b""
    with open_port(reader.link_path) as port:
        port.write(b"\xbb\x00\x22\x00\x00\x22\x7e")
        port.flush()
        deadline = time.monotonic() + 2.0
        got = b""
        while len(got) < 7 and time.monotonic() < deadline:
            got += reader.recv()
    assert got == b"\xbb\x00\x22\x00\x00\x22\x7e"
