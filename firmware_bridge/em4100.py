"""EM4100 125 kHz readers that speak the ASCII serial protocol (RDM6300, ID-12LA, ID-20LA).

Byte layout of one frame (9600 baud, 8N1, reader to host only)::

    RDM6300 (14 bytes):  02 | D0 D1 .. D9 | C0 C1 | 03
    ID-12LA/ID-20LA (16): 02 | D0 D1 .. D9 | C0 C1 | 0D 0A | 03

``D0..D9`` are 10 ASCII hex digits for 5 data bytes: the version (customer) byte, then the
4-byte card id, most significant byte first. ``C0 C1`` are 2 ASCII hex digits of the XOR of
those 5 data bytes. Readers send upper case; lower case is accepted too.

Example (RDM6300 datasheet): ``02 "62E3086CED" "08" 03`` is version 0x62, card id
0xE3086CED = 3808980205, checksum 0x62^0xE3^0x08^0x6C^0xED = 0x08.
"""

from __future__ import annotations

import re

from firmware_bridge.framing import BufferedDecoder
from firmware_bridge.records import RawRead

PROTOCOL = "em4100"

STX = 0x02
ETX = 0x03
CR = 0x0D
LF = 0x0A

#: Frame lengths in bytes: without and with the CR LF that ID-12LA/ID-20LA send before ETX.
FRAME_LEN = 14
FRAME_LEN_CRLF = 16

# Index of the first byte after the 12 hex digits (ETX or CR).
_TAIL = 13

_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
# A complete frame of either variant, checksum not yet verified (the fast path of feed()).
_WELL_FORMED = re.compile(rb"\x02[0-9A-Fa-f]{12}(?:\r\n)?\x03")


def xor_checksum(data: bytes) -> int:
    """XOR of all bytes of ``data`` (the EM4100 ASCII frame checksum)."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


def encode(tag: bytes, *, crlf: bool = False) -> bytes:
    """Frame the 5 data bytes ``tag`` (version byte + 4-byte id) as a reader would send them.

    ``crlf=True`` gives the 16-byte ID-12LA/ID-20LA variant. Raises ``ValueError`` when
    ``tag`` is not exactly 5 bytes (encoders are for our own simulators, so fail loudly).
    """
    if len(tag) != 5:
        raise ValueError(f"EM4100 tag must be 5 bytes (version + 4-byte id), got {len(tag)}")
    body = tag.hex().upper().encode("ascii") + f"{xor_checksum(tag):02X}".encode("ascii")
    tail = b"\r\n\x03" if crlf else b"\x03"
    return b"\x02" + body + tail


def tag_number(tag_id: bytes) -> int:
    """The 32-bit card id (what is printed on many cards) from the 5 data bytes.

    The version byte is dropped: ``tag_number(bytes.fromhex("62E3086CED")) == 3808980205``.
    """
    return int.from_bytes(tag_id[-4:], "big")


def _read_of_frame(buf: bytearray, start: int, length: int) -> RawRead:
    """The read in a well-framed EM4100 frame: its 10 hex digits are the 5 data bytes."""
    return RawRead(PROTOCOL, bytes.fromhex(buf[start + 1 : start + 11].decode("ascii")))


class Em4100Decoder(BufferedDecoder):
    """Incremental decoder for both EM4100 ASCII frame variants.

    Feed it bytes as they arrive, split anywhere. Every input byte ends up either in a valid
    frame or counted in ``stats.skipped_bytes`` (or is still buffered as a partial frame).
    Each STX that does not begin a valid frame counts as one ``bad_frame``; scanning then
    resumes at the byte after that STX, so a real frame that starts inside a broken one (a
    reader unplugged mid-frame, line noise) is still found. ``on_bad_frame(stream_offset,
    reason)``, if set, hears about each bad frame. :meth:`drain` ends a finite input.
    Never raises on any input.
    """

    protocol = PROTOCOL
    max_frame_len = FRAME_LEN_CRLF

    #: Frames remembered by the fast path (a wristband is read over and over): a working set
    #: this large stays cached, in two generations of this size (at most ~8 MB): the
    #: wristbands one reader hears again and again (a busy entry, a crowd of held bands). A
    #: larger set pays the full check on some reads. The frames hold raw ids, which never
    #: leave this process (see agent.privacy).
    cache_size = 16384

    def __init__(self) -> None:
        super().__init__()
        # Whole frame bytes -> its (immutable) read. When the current generation is full it
        # becomes the previous one (the one before is dropped); a hit there moves the frame
        # back, so a working set up to ``cache_size`` frames stays cached. (Clearing the
        # whole cache when full, as before, missed on every read of a set just over it.)
        self._seen: dict[bytes, RawRead] = {}
        self._older: dict[bytes, RawRead] = {}

    def feed(self, data: bytes) -> list[RawRead]:
        """Consume ``data``; return the reads completed by it, in order.

        Fast path: while the bytes (held-back ones first) are back-to-back frames, each
        frame is looked up whole by its bytes (a reader repeats the same few cards): a frame
        seen before was checked then, so a hit costs a slice and a dict lookup, no pattern
        match and no new object. Only a frame not seen before is matched and checked digit
        by digit. Anything else (noise, a frame split by the chunk) goes to the general
        frame hunt from the first byte the fast path did not take."""
        if self._buf:
            data = bytes(self._buf) + bytes(data)
            self._buf.clear()  # re-fed below: the fast path or the hunt takes them again
        else:
            data = bytes(data)
        out: list[RawRead] = []
        append = out.append
        seen, pos, n = self._seen, 0, len(data)
        get = seen.get
        while pos < n:
            # The RDM6300 length first (the common reader), then the CR LF variant's.
            rd = get(data[pos : pos + FRAME_LEN])
            if rd is not None:
                pos += FRAME_LEN
            elif (rd := get(data[pos : pos + FRAME_LEN_CRLF])) is not None:
                pos += FRAME_LEN_CRLF
            else:
                m = _WELL_FORMED.match(data, pos)
                if m is None:
                    break
                end = m.end()
                frame = data[pos:end]
                rd = self._older.get(frame)
                if rd is None:
                    b = bytes.fromhex(data[pos + 1 : pos + _TAIL].decode("ascii"))
                    if b[0] ^ b[1] ^ b[2] ^ b[3] ^ b[4] != b[5]:
                        break  # a bad checksum: the hunt counts it
                    rd = RawRead(PROTOCOL, b[:5])
                if len(seen) >= self.cache_size:
                    self._older, seen = seen, {}
                    self._seen = seen
                    get = seen.get
                seen[frame] = rd
                pos = end
            append(rd)
        self.stats.frames += len(out)
        self._offset += pos
        if pos < n:
            out += self._hunt(data[pos:] if pos else data, STX, self._check, _read_of_frame)
        return out

    def drain(self) -> list[RawRead]:
        """End of input: a frame still incomplete is counted bad and the buffer emptied."""
        return self._hunt(b"", STX, self._check, _read_of_frame, final=True)

    @staticmethod
    def _check(buf: bytearray, start: int, final: bool = False) -> int | str | None:
        """Judge the candidate frame at ``buf[start]`` (an STX).

        Returns the frame length when valid, the reason when it can no longer become valid,
        or ``None`` when the bytes so far are a valid prefix and more are needed. Every
        frame needs its ETX, so ``final`` changes nothing here. A non-hex byte refuses the
        candidate at once, so a stray STX never holds back the frame behind it.
        """
        end = len(buf)
        last_hex = min(start + _TAIL, end)
        for i in range(start + 1, last_hex):
            if buf[i] not in _HEX_DIGITS:
                return f"byte 0x{buf[i]:02X} where a hex digit belongs"
        if end - start < _TAIL:
            return None
        digits = bytes(buf[start + 1 : start + _TAIL]).decode("ascii")
        if xor_checksum(bytes.fromhex(digits[:10])) != int(digits[10:], 16):
            return "bad checksum"
        if end - start == _TAIL:
            return None
        tail = buf[start + _TAIL]
        if tail == ETX:
            return FRAME_LEN
        if tail != CR:
            return "no ETX or CR after the checksum"
        if end - start > _TAIL + 1 and buf[start + _TAIL + 1] != LF:
            return "CR not followed by LF"
        if end - start < FRAME_LEN_CRLF:
            return None
        if buf[start + _TAIL + 2] != ETX:
            return "CR LF not followed by ETX"
        return FRAME_LEN_CRLF
