"""Magic RF M100/QM100 UHF (EPC Gen2) reader modules: YRM100, JRD-100, M5Stack UHF unit.

Byte layout of every frame, both directions (115200 baud, 8N1)::

    BB | type | cmd | PL_hi PL_lo | params (PL bytes) | checksum | 7E

``type``: 0x00 command (host to reader), 0x01 response, 0x02 notification (reader to host).
``PL``: parameter length in bytes, big-endian. ``checksum``: low byte of the sum of
``type .. last param``. A frame is ``7 + PL`` bytes. Framing is by ``PL`` only: 0xBB and
0x7E can occur inside params, so scanning for 0x7E would cut frames short.

Inventory notification (type 0x02, cmd 0x22), params::

    RSSI (1, signed dBm) | PC (2, BE) | EPC (2 * (PC >> 11) bytes) | CRC-16 (2, BE)

Error response (type 0x01, cmd 0xFF), params: ``error code`` [, extra bytes]. Code 0x15 is
"inventory failed": no tag answered a single inventory.

Host commands used here: single inventory ``BB 00 22 00 00 22 7E``; multiple inventory
``BB 00 27 00 03 22 CNT_hi CNT_lo sum 7E`` (0x22 is a reserved byte, CNT rounds);
stop multiple inventory ``BB 00 28 00 00 28 7E``.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from firmware_bridge.framing import MessageDecoder
from firmware_bridge.records import RawRead

PROTOCOL = "uhf-m100"

HEADER = 0xBB
END = 0x7E

TYPE_COMMAND = 0x00
TYPE_RESPONSE = 0x01
TYPE_NOTIFICATION = 0x02

CMD_INVENTORY = 0x22
CMD_MULTI_INVENTORY = 0x27
CMD_STOP_MULTI_INVENTORY = 0x28
CMD_ERROR = 0xFF

ERROR_NO_TAG = 0x15

#: Longest EPC a PC word can announce: 31 words (PC bits 15..11), 496 bits.
MAX_EPC_LEN = 62

#: Params of the longest inventory notification: RSSI + PC + 496-bit EPC + CRC-16.
MAX_INVENTORY_PARAM_LEN = 1 + 2 + MAX_EPC_LEN + 2

#: Largest PL this decoder waits for, in bytes. Where it comes from: the longest frame the
#: module sends to our host is an inventory notification of 67 param bytes (above; the agent
#: and ``decode --port`` only ever ask for inventories). Other M100 answers are shorter
#: (version strings, settings) except read-data responses, which grow with the words a host
#: asks for; hosts keep those within one byte of length (the vendor's M5Stack host driver
#: receives whole frames into a 256-byte buffer). So 255 covers every frame a working
#: module/host pair exchanges. A header claiming more is line noise (e.g. ``BB 02 7E 03
#: FF``, "1,023 bytes") and is refused at once, instead of holding the real frames behind
#: it until that many bytes have arrived.
MAX_PARAM_LEN = 255

#: Tighter bounds where the (type, command) pair says what the params are.
_MAX_PARAM_LEN_OF: dict[tuple[int, int], int] = {
    (TYPE_NOTIFICATION, CMD_INVENTORY): MAX_INVENTORY_PARAM_LEN,
}

# Bytes around params: BB, type, cmd, PL(2) before; checksum, 7E after.
_OVERHEAD = 7


def checksum(body: bytes | bytearray) -> int:
    """Low byte of the sum of ``body`` (``type .. last param``)."""
    return sum(body) & 0xFF


def epc_crc16(pc_epc: bytes) -> int:
    """EPC Gen2 CRC-16 (CRC-16/GENIBUS: poly 0x1021, init 0xFFFF, inverted) over PC + EPC.

    ``binascii.crc_hqx`` is the same MSB-first CRC with poly 0x1021 and a given initial
    value, in C: a bit loop in Python cost more than the rest of decoding a frame.
    """
    return binascii.crc_hqx(pc_epc, 0xFFFF) ^ 0xFFFF


def pc_for_epc(epc: bytes) -> int:
    """A Protocol Control word announcing ``epc`` (length bits only, other bits zero)."""
    if len(epc) % 2 or len(epc) > 62:
        raise ValueError(f"EPC must be a whole number of 16-bit words, <= 62 bytes: {len(epc)}")
    return (len(epc) // 2) << 11


# -- encoders ---------------------------------------------------------------------------


def encode_frame(frame_type: int, command: int, params: bytes = b"") -> bytes:
    """One complete frame. Raises ``ValueError`` on out-of-range fields."""
    if not (0 <= frame_type <= 0xFF and 0 <= command <= 0xFF and len(params) <= 0xFFFF):
        raise ValueError("frame type/command must be bytes and params <= 65535 bytes")
    body = bytes([frame_type, command]) + len(params).to_bytes(2, "big") + params
    return bytes([HEADER]) + body + bytes([checksum(body), END])


def single_inventory() -> bytes:
    """Host command: one inventory round (``BB 00 22 00 00 22 7E``)."""
    return encode_frame(TYPE_COMMAND, CMD_INVENTORY)


def multi_inventory(rounds: int) -> bytes:
    """Host command: ``rounds`` (1..65535) inventory rounds, results as notifications."""
    if not 0 < rounds <= 0xFFFF:
        raise ValueError(f"rounds must be 1..65535, got {rounds}")
    return encode_frame(TYPE_COMMAND, CMD_MULTI_INVENTORY, b"\x22" + rounds.to_bytes(2, "big"))


def stop_multi_inventory() -> bytes:
    """Host command: stop a multiple inventory (``BB 00 28 00 00 28 7E``)."""
    return encode_frame(TYPE_COMMAND, CMD_STOP_MULTI_INVENTORY)


def inventory_notification(
    epc: bytes, rssi_dbm: int, *, pc: int | None = None, crc: int | None = None
) -> bytes:
    """Reader notification for one tag seen (what the simulator sends).

    ``rssi_dbm`` -128..127. ``pc`` defaults to one announcing ``len(epc)``; ``crc`` to the
    tag's real CRC-16 over PC + EPC.
    """
    if pc is None:
        pc = pc_for_epc(epc)
    if not -128 <= rssi_dbm <= 127:
        raise ValueError(f"rssi_dbm must fit a signed byte, got {rssi_dbm}")
    pc_bytes = pc.to_bytes(2, "big")
    if crc is None:
        crc = epc_crc16(pc_bytes + epc)
    params = (rssi_dbm & 0xFF).to_bytes(1, "big") + pc_bytes + epc + crc.to_bytes(2, "big")
    return encode_frame(TYPE_NOTIFICATION, CMD_INVENTORY, params)


def error_response(code: int, extra: bytes = b"") -> bytes:
    """Reader error response (``BB 01 FF 00 01 15 16 7E`` for code 0x15)."""
    return encode_frame(TYPE_RESPONSE, CMD_ERROR, bytes([code]) + extra)


# -- decoded messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UhfInventory:
    """One tag seen. rssi_dbm: dBm (signed). pc: Protocol Control word. crc: the CRC-16 the
    reader passed on; crc_ok: whether it matches PC + EPC (readers check it already)."""

    rssi_dbm: int
    pc: int
    epc: bytes
    crc: int
    crc_ok: bool


@dataclass(frozen=True, slots=True)
class UhfError:
    """An error response (type 0x01, cmd 0xFF). ``extra``: bytes after the code, if any."""

    code: int
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class UhfFrame:
    """Any other well-formed frame (commands, responses, notifications), undecoded."""

    frame_type: int
    command: int
    params: bytes


UhfMessage = UhfInventory | UhfError | UhfFrame


def _interpret(frame_type: int, command: int, params: bytes) -> UhfMessage | str:
    """Typed message for a well-framed frame, or the reason its content is invalid."""
    if frame_type == TYPE_NOTIFICATION and command == CMD_INVENTORY:
        if len(params) < 5:
            return f"inventory notification too short ({len(params)} param bytes)"
        pc = int.from_bytes(params[1:3], "big")
        epc_len = 2 * (pc >> 11)
        if len(params) != 5 + epc_len:
            return f"PC announces {epc_len} EPC bytes but PL leaves {len(params) - 5}"
        epc = params[3 : 3 + epc_len]
        crc = int.from_bytes(params[-2:], "big")
        rssi = params[0] - 256 if params[0] >= 0x80 else params[0]
        return UhfInventory(rssi, pc, epc, crc, crc == epc_crc16(params[1 : 3 + epc_len]))
    if frame_type == TYPE_RESPONSE and command == CMD_ERROR:
        if not params:
            return "error response without an error code"
        return UhfError(params[0], params[1:])
    return UhfFrame(frame_type, command, params)


def _message_of_frame(buf: bytearray, start: int, length: int) -> UhfMessage | str:
    """The message in a well-framed M100 frame, or why its contents make no sense."""
    params = bytes(buf[start + 5 : start + length - 2])
    return _interpret(buf[start + 1], buf[start + 2], params)


class UhfM100Decoder(MessageDecoder[UhfMessage]):
    """Incremental decoder for M100 frames in either direction.

    :meth:`feed_messages` returns every decoded message; :meth:`feed` returns only the tag
    reads and keeps the other messages (errors, responses) in :attr:`messages`, a bounded
    deque of the latest 64, and passes them to ``on_message`` if set. A candidate frame
    that fails a check (type, PL bound, checksum, 7E, inventory layout) counts one
    ``bad_frame``, is reported to ``on_bad_frame(stream_offset, reason)`` if set, and
    scanning resumes at the byte after its 0xBB. Never raises on any input.

    Lengths are checked before any byte is waited for: PL above :data:`MAX_PARAM_LEN`
    (or above 67 for an inventory notification) is refused at the header, and a candidate
    with a plausible PL is given up as soon as a complete, valid frame starts inside it.
    :meth:`drain` ends a finite input.
    """

    protocol = PROTOCOL
    max_frame_len = MAX_PARAM_LEN + _OVERHEAD

    def _reads_of(self, msg: UhfMessage) -> list[RawRead] | None:
        """A read per inventory notification: the EPC, with the module's RSSI."""
        if isinstance(msg, UhfInventory):
            return [RawRead(PROTOCOL, msg.epc, float(msg.rssi_dbm))]
        return None

    def _decode(self, data: bytes, final: bool) -> list[UhfMessage]:
        return self._hunt(data, HEADER, self._check, _message_of_frame, final=final)

    @staticmethod
    def _check(buf: bytearray, start: int, final: bool = False) -> int | str | None:
        """Frame length if the candidate at ``start`` is well framed, a reason if it cannot
        be, ``None`` if more bytes are needed to tell (every frame ends in 0x7E, so
        ``final`` changes nothing here)."""
        have = len(buf) - start
        if have < 2:
            return None
        if buf[start + 1] > TYPE_NOTIFICATION:
            return f"unknown frame type 0x{buf[start + 1]:02X}"
        if have < 5:
            return None
        plen = int.from_bytes(buf[start + 3 : start + 5], "big")
        if plen > MAX_PARAM_LEN:
            return f"PL {plen} exceeds {MAX_PARAM_LEN}"
        limit = _MAX_PARAM_LEN_OF.get((buf[start + 1], buf[start + 2]))
        if limit is not None and plen > limit:
            return f"PL {plen} exceeds {limit} for type 0x{buf[start + 1]:02X} command 0x{buf[start + 2]:02X}"
        length = plen + _OVERHEAD
        if have < length:
            return None
        if checksum(buf[start + 1 : start + length - 2]) != buf[start + length - 2]:
            return "bad checksum"
        if buf[start + length - 1] != END:
            return "missing 0x7E end byte"
        return length
