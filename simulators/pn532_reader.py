"""A virtual NXP PN532 NFC reader on a PTY (HSU mode), answering like the real chip.

Behaviour modelled, because the link's driver depends on it:

* The PN532 sleeps after power-up (and after a replug) and ignores frames until it sees the
  HSU wake-up (0x55 bytes on the line).
* Every well-formed command frame (TFI 0xD4) is ACKed (``00 00 FF 00 FF 00``), then
  answered with a response frame (TFI 0xD5, code + 1).
* InListPassiveTarget (106 kbps type A) lists up to ``MaxTg`` (1 or 2) of the cards in the
  field. With the power-up MaxRetries (passive activation 0xFF, "forever") and an empty
  field the answer is held until a card arrives; after RFConfiguration item 5 sets finite
  retries an empty field answers ``NbTg = 0`` at once.
* A frame the PN532 cannot make sense of gets the error frame ``00 00 FF 01 FF 7F 81 00``.

The cards in the field come from a callable giving their UIDs (4, 7 or 10 bytes); 4-byte
UIDs are presented as MIFARE Classic 1K (ATQA 0004, SAK 08), longer ones as NTAG/Ultralight
(ATQA 0044, SAK 00).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from firmware_bridge import pn532
from firmware_bridge.pn532 import Pn532Decoder, Pn532Frame, Pn532Target
from simulators.command_reader import CommandReader

#: UIDs of the cards in the field now.
FieldCards = Callable[[], Sequence[bytes]]

#: GetFirmwareVersion answer: IC 0x32 (PN532), version 1.6, supports ISO A, ISO B, ISO 18092.
FIRMWARE_VERSION = bytes([0x32, 0x01, 0x06, 0x07])

_CMD_GET_FIRMWARE_VERSION = 0x02
_RETRIES_FOREVER = 0xFF


def target_for(tg: int, uid: bytes) -> Pn532Target:
    """How a card with ``uid`` answers anticollision (see the module docstring)."""
    if len(uid) == 4:
        return Pn532Target(tg, 0x0004, 0x08, uid)
    return Pn532Target(tg, 0x0044, 0x00, uid)


class VirtualPn532Reader(CommandReader):
    """A PN532 behind ``link_path``; ``cards`` gives the UIDs in the field now."""

    def __init__(self, link_path: Path, cards: FieldCards, *, poll_s: float = 0.005) -> None:
        super().__init__(
            link_path, poll_s=poll_s, name="virtual-pn532",
            encode=lambda uid: pn532.in_list_passive_target_response([target_for(1, uid)]),
        )
        self._cards = cards
        self._decoder = Pn532Decoder()
        self._awake = False
        self._passive_retries = _RETRIES_FOREVER
        self._pending_max_tg = 0  # an InListPassiveTarget waiting for a card, if > 0
        #: Host command frames received while awake (for tests and demos).
        self.commands: list[Pn532Frame] = []
        self._start()

    @property
    def awake(self) -> bool:
        return self._awake

    def _power_on(self) -> None:
        # Replugged: power-on state again.
        self._decoder.reset()
        self._awake = False
        self._passive_retries = _RETRIES_FOREVER
        self._pending_max_tg = 0

    def _step(self, data: bytes) -> None:
        if not self._awake:
            if 0x55 not in data:
                return  # asleep: the frames are lost, as on the chip
            self._awake = True
            data = data[data.index(0x55) :]
        before = self._decoder.stats.bad_frames
        for msg in self._decoder.feed_messages(data):
            if isinstance(msg, Pn532Frame) and msg.tfi == pn532.TFI_HOST:
                self.commands.append(msg)
                self.port.send_raw(pn532.ACK_FRAME)
                self._answer(msg)
        if self._decoder.stats.bad_frames > before:
            self.port.send_raw(pn532.ERROR_FRAME)
        if self._pending_max_tg:
            self._list_targets(self._pending_max_tg)

    def _answer(self, cmd: Pn532Frame) -> None:
        # Any new command replaces one still waiting for a card.
        self._pending_max_tg = 0
        code, data = cmd.command, cmd.data
        if code == pn532.CMD_SAM_CONFIGURATION:
            self._respond(code, b"")
        elif code == pn532.CMD_RF_CONFIGURATION:
            if len(data) == 4 and data[0] == 0x05:  # MaxRetries: ATR, PSL, passive activation
                self._passive_retries = data[3]
            self._respond(code, b"")
        elif code == _CMD_GET_FIRMWARE_VERSION:
            self._respond(code, FIRMWARE_VERSION)
        elif (
            code == pn532.CMD_IN_LIST_PASSIVE_TARGET
            and len(data) >= 2
            and data[0] in (1, 2)
            and data[1] == pn532.BRTY_106_TYPE_A
        ):
            self._pending_max_tg = data[0]
            self._list_targets(data[0])
        else:
            self.port.send_raw(pn532.ERROR_FRAME)

    def _list_targets(self, max_tg: int) -> None:
        uids = list(self._cards())[:max_tg]
        if not uids and self._passive_retries == _RETRIES_FOREVER:
            return  # keeps searching until a card comes (or another command arrives)
        self._pending_max_tg = 0
        targets = [target_for(i + 1, uid) for i, uid in enumerate(uids)]
        self.port.send_raw(pn532.in_list_passive_target_response(targets))

    def _respond(self, code: int, data: bytes) -> None:
        self.port.send_raw(pn532.encode_frame(bytes([code + 1]) + data, tfi=pn532.TFI_PN532))
