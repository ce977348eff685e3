"""NXP PN532 13.56 MHz NFC reader over HSU (UART, 115200 baud, 8N1), e.g. Adafruit/Elechouse
boards with ISO 14443A wristbands (MIFARE Classic/Ultralight, NTAG).

Byte layout (NXP UM0701-02 section 6.2)::

    normal:   00 | 00 FF | LEN | LCS | TFI | PD0 .. PDn | DCS | 00
    extended: 00 | 00 FF | FF FF | LENM LENL | LCS | TFI | PD0 .. PDn | DCS | 00
    ACK:      00 00 FF 00 FF 00          NACK: 00 00 FF FF 00 00
    error:    00 00 FF 01 FF 7F 81 00    (application-level error, TFI 0x7F)

``00`` preamble and postamble; ``00 FF`` start code. ``LEN`` counts TFI + PD bytes;
``LEN + LCS = 0`` (mod 256) (extended: ``LENM + LENL + LCS = 0``). ``TFI`` is 0xD4 host to
PN532, 0xD5 PN532 to host. ``TFI + PD0 + .. + PDn + DCS = 0`` (mod 256). PD0 is the command
code; a response's code is the command's + 1.

Host conversation used by the link: wake-up (``55 55`` then zeros, the PN532 sleeps on
power-up in HSU mode), SAMConfiguration (normal mode), RFConfiguration (finite passive
activation retries, so InListPassiveTarget answers "0 targets" instead of waiting forever
for a card), then InListPassiveTarget at 106 kbps type A every poll. The PN532 ACKs each
command frame, then sends the response frame.

InListPassiveTarget response at 106 kbps type A (PD after ``D5 4B``)::

    NbTg | per target: Tg | SENS_RES (2) | SEL_RES | NFCIDLength | NFCID1 | [ATS]

The ATS (its first byte is its own length) is present when SEL_RES bit 0x20 says the card
speaks ISO 14443-4. ``RawRead.tag_id`` is NFCID1, the UID: 4, 7 or 10 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge.framing import MessageDecoder
from firmware_bridge.records import RawRead

PROTOCOL = "pn532"

TFI_HOST = 0xD4
TFI_PN532 = 0xD5
TFI_ERROR = 0x7F

CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

BRTY_106_TYPE_A = 0x00

ACK_FRAME = bytes.fromhex("0000FF00FF00")
NACK_FRAME = bytes.fromhex("0000FFFF0000")
ERROR_FRAME = bytes.fromhex("0000FF01FF7F8100")

#: HSU wake-up: two 0x55 then zeros long enough for the PN532 to wake (as libnfc sends).
WAKEUP = bytes([0x55, 0x55]) + bytes(14)

_START = b"\x00\xff"

#: Longest TFI + PD this decoder accepts in an extended frame (the PN532 buffer is 265
#: bytes); larger LENs are line noise and must not hold back real frames.
MAX_EXTENDED_LEN = 265


def _lcs(length: int) -> int:
    return (-length) & 0xFF


def _dcs(body: bytes | bytearray) -> int:
    return (-sum(body)) & 0xFF


# -- encoders ---------------------------------------------------------------------------


def encode_frame(pd: bytes, *, tfi: int = TFI_HOST) -> bytes:
    """Frame ``pd`` (command code + parameters) with ``tfi``; extended when it needs to be."""
    body = bytes([tfi]) + pd
    if len(body) <= 0xFF:
        head = bytes([len(body), _lcs(len(body))])
    elif len(body) <= MAX_EXTENDED_LEN:
        lenm, lenl = divmod(len(body), 256)
        head = bytes([0xFF, 0xFF, lenm, lenl, (-(lenm + lenl)) & 0xFF])
    else:
        raise ValueError(f"PN532 frame body must be <= {MAX_EXTENDED_LEN} bytes: {len(body)}")
    return b"\x00" + _START + head + body + bytes([_dcs(body), 0x00])


def sam_configuration(mode: int = 0x01, timeout: int = 0x14, use_irq: bool = True) -> bytes:
    """SAMConfiguration: mode 1 = normal (no SAM); timeout in 50 ms units (virtual card)."""
    return encode_frame(bytes([CMD_SAM_CONFIGURATION, mode, timeout, int(use_irq)]))


def rf_max_retries(passive_activation: int = 0x02) -> bytes:
    """RFConfiguration item 5 (MaxRetries): ATR 0xFF, PSL 0x01, passive activation as given.

    0xFF would retry forever; a small number makes InListPassiveTarget return promptly with
    0 targets when the field is empty, so the next poll is not stuck behind it.
    """
    return encode_frame(bytes([CMD_RF_CONFIGURATION, 0x05, 0xFF, 0x01, passive_activation]))


def in_list_passive_target(max_targets: int = 1, brty: int = BRTY_106_TYPE_A) -> bytes:
    """InListPassiveTarget (1 or 2 targets); 106 kbps type A gives
    ``00 00 FF 04 FC D4 4A 01 00 E1 00``."""
    if max_targets not in (1, 2):
        raise ValueError(f"the PN532 lists 1 or 2 targets at once, not {max_targets}")
    return encode_frame(bytes([CMD_IN_LIST_PASSIVE_TARGET, max_targets, brty]))


@dataclass(frozen=True, slots=True)
class Pn532Target:
    """One ISO 14443A target. sens_res: ATQA (2 bytes as sent, big-endian int). sel_res:
    SAK. uid: NFCID1 (4/7/10 bytes). ats: Answer To Select incl. its length byte, or b""."""

    tg: int
    sens_res: int
    sel_res: int
    uid: bytes
    ats: bytes = b""


def in_list_passive_target_response(targets: list[Pn532Target]) -> bytes:
    """The PN532's response frame listing ``targets`` (what the simulator sends)."""
    pd = bytearray([CMD_IN_LIST_PASSIVE_TARGET + 1, len(targets)])
    for t in targets:
        pd += bytes([t.tg]) + t.sens_res.to_bytes(2, "big") + bytes([t.sel_res, len(t.uid)])
        pd += t.uid + t.ats
    return encode_frame(bytes(pd), tfi=TFI_PN532)


# -- decoded messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pn532Ack:
    """ACK: the PN532 accepted the last command frame."""


@dataclass(frozen=True, slots=True)
class Pn532Nack:
    """NACK: asks the other side to resend its last frame."""


@dataclass(frozen=True, slots=True)
class Pn532ErrorFrame:
    """Application-level error frame (TFI 0x7F): the command frame made no sense."""


@dataclass(frozen=True, slots=True)
class Pn532InList:
    """InListPassiveTarget response (106 kbps type A)."""

    targets: tuple[Pn532Target, ...]


@dataclass(frozen=True, slots=True)
class Pn532Frame:
    """Any other information frame. command: PD0. data: PD1..PDn. extended: long form."""

    tfi: int
    command: int
    data: bytes
    extended: bool = False


Pn532Message = Pn532Ack | Pn532Nack | Pn532ErrorFrame | Pn532InList | Pn532Frame


def parse_in_list_targets(data: bytes) -> tuple[Pn532Target, ...] | str:
    """Targets from the PD after ``4B`` (``NbTg ...``), or the reason they don't parse."""
    if not data:
        return "InListPassiveTarget response without NbTg"
    count, i = data[0], 1
    targets: list[Pn532Target] = []
    for _ in range(count):
        if len(data) < i + 5:
            return f"target {len(targets) + 1} of {count} truncated"
        tg, sens_res, sel_res, uid_len = (
            data[i],
            int.from_bytes(data[i + 1 : i + 3], "big"),
            data[i + 3],
            data[i + 4],
        )
        i += 5
        if uid_len not in (4, 7, 10) or len(data) < i + uid_len:
            return f"target {len(targets) + 1}: bad UID length {uid_len}"
        uid = data[i : i + uid_len]
        i += uid_len
        ats = b""
        if sel_res & 0x20:  # ISO 14443-4 compliant: an ATS follows
            if len(data) <= i or data[i] == 0 or len(data) < i + data[i]:
                return f"target {len(targets) + 1}: truncated ATS"
            ats = data[i : i + data[i]]
            i += len(ats)
        targets.append(Pn532Target(tg, sens_res, sel_res, uid, ats))
    if i != len(data):
        return f"{len(data) - i} stray bytes after {count} targets"
    return tuple(targets)


def _interpret(tfi: int, pd: bytes, extended: bool) -> Pn532Message | str:
    if tfi == TFI_ERROR:
        return Pn532ErrorFrame() if not pd else f"error frame with {len(pd)} data bytes"
    if tfi not in (TFI_HOST, TFI_PN532):
        return f"unknown TFI 0x{tfi:02X}"
    if not pd:
        return "information frame without a command code"
    if tfi == TFI_PN532 and pd[0] == CMD_IN_LIST_PASSIVE_TARGET + 1:
        targets = parse_in_list_targets(pd[1:])
        return targets if isinstance(targets, str) else Pn532InList(targets)
    return Pn532Frame(tfi, pd[0], pd[1:], extended)


def _preamble(buf: bytearray, pos: int, start: int) -> int:
    """1 if a 0x00 right before the start code is this frame's preamble, not noise."""
    return 1 if start > pos and buf[start - 1] == 0 else 0


def _trailing_zeros(buf: bytearray, pos: int) -> int:
    """Up to two trailing zeros to hold: a preamble and the start code's first byte may be
    split from the rest of the frame."""
    n = len(buf)
    keep = 0
    while keep < 2 and n - keep > pos and buf[n - keep - 1] == 0:
        keep += 1
    return keep


def _message_of_frame(buf: bytearray, start: int, length: int) -> Pn532Message | str:
    """The message in a frame :meth:`Pn532Decoder._check` found well framed."""
    a, b = buf[start + 2], buf[start + 3]
    if (a, b) == (0x00, 0xFF):
        return Pn532Ack()
    if (a, b) == (0xFF, 0x00):
        return Pn532Nack()
    extended = (a, b) == (0xFF, 0xFF)
    body_at = start + (7 if extended else 4)
    body_len = buf[start + 4] * 256 + buf[start + 5] if extended else a
    return _interpret(buf[body_at], bytes(buf[body_at + 1 : body_at + body_len]), extended)


class Pn532Decoder(MessageDecoder[Pn532Message]):
    """Incremental decoder for PN532 HSU frames in either direction.

    :meth:`feed_messages` returns every decoded message; :meth:`feed` returns one read per
    target of each InListPassiveTarget response and keeps other messages in
    :attr:`messages` (latest 64) and passes them to ``on_message`` if set. A candidate that
    fails a check (LCS, DCS, length, TFI, target layout) counts one ``bad_frame``, goes to
    ``on_bad_frame(stream_offset, reason)`` if set, and scanning resumes at the byte after
    its start code's 0x00. The preamble 0x00 in front of a start code and the postamble
    after DCS belong to the frame; all other bytes outside frames count as skipped.

    Lengths are checked before any byte is waited for: LEN 0 (a frame without TFI), an
    extended LEN above :data:`MAX_EXTENDED_LEN` and an unknown TFI are refused as soon as
    they are seen, and a candidate whose LEN is plausible is given up as soon as a complete,
    valid frame starts inside it. :meth:`drain` ends a finite input (a last frame without
    its optional postamble is complete then). Never raises on any input.
    """

    protocol = PROTOCOL
    # preamble + start code + extended header + TFI/PD + DCS + postamble
    max_frame_len = 1 + 2 + 5 + MAX_EXTENDED_LEN + 2

    def _reads_of(self, msg: Pn532Message) -> list[RawRead] | None:
        """A read per target of an InListPassiveTarget response: the card's UID."""
        if isinstance(msg, Pn532InList):
            return [RawRead(PROTOCOL, t.uid) for t in msg.targets]
        return None

    def _decode(self, data: bytes, final: bool) -> list[Pn532Message]:
        return self._hunt(data, _START, self._check, _message_of_frame, final=final,
                          preamble=_preamble, keep=_trailing_zeros)

    @staticmethod
    def _check(buf: bytearray, start: int, final: bool = False) -> int | str | None:
        """For the start code at ``start``: the frame length from ``start`` (with the
        postamble when there is one), a framing error, or ``None`` when more bytes are
        needed. With ``final`` (no more bytes will come) a frame that ends at its DCS is
        complete: the postamble is optional.
        """
        have = len(buf) - start
        if have < 4:
            return None
        a, b = buf[start + 2], buf[start + 3]
        if (a, b) in ((0x00, 0xFF), (0xFF, 0x00)):
            # ACK / NACK: no body. Wait for the postamble so it is not counted as noise.
            if have < 5:
                return 4 if final else None
            return 5 if buf[start + 4] == 0 else 4
        if (a, b) == (0xFF, 0xFF):
            if have < 7:
                return None
            lenm, lenl, lcs = buf[start + 4], buf[start + 5], buf[start + 6]
            if (lenm + lenl + lcs) & 0xFF:
                return "bad extended length checksum"
            body_len, body_at = lenm * 256 + lenl, start + 7
            if not 0 < body_len <= MAX_EXTENDED_LEN:
                return f"extended frame length {body_len} out of range"
        else:
            if (a + b) & 0xFF:
                return "bad length checksum"
            body_len, body_at = a, start + 4
            if body_len == 0:
                # LEN 0 with LCS 0 passes the length checksum, but every information
                # frame carries at least its TFI (a corrupted ACK looks like this).
                return "LEN 0: a frame without TFI"
        # Judge the TFI as soon as it arrives: noise with a plausible LEN must not make
        # the frames behind it wait for LEN more bytes.
        if have > body_at - start and buf[body_at] not in (TFI_HOST, TFI_PN532, TFI_ERROR):
            return f"unknown TFI 0x{buf[body_at]:02X}"
        end = body_at + body_len  # index of DCS
        if len(buf) < end + 1 or (len(buf) == end + 1 and not final):  # DCS, postamble
            return None
        if (sum(buf[body_at:end]) + buf[end]) & 0xFF:
            return "bad data checksum"
        length = end + 1 - start
        if len(buf) > end + 1 and buf[end + 1] == 0:
            length += 1  # postamble
        return length
