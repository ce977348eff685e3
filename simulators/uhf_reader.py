"""A virtual Magic RF M100 UHF reader module on a PTY, answering commands like the real one.

The agent's link sends commands (single inventory, multiple inventory, stop); this reader
answers with the exact bytes an M100 sends: one inventory notification per tag in the field
per round, or the error response ``BB 01 FF 00 01 15 16 7E`` when no tag answered a single
inventory. Which tags are in the field comes from a callable, asked at every round, so a
crowd model or a test decides.

Unplug/replug go through :class:`simulators.pty_reader.VirtualSerialReader`: the PTY closes
and ``link_path`` (a udev-style symlink) is re-pointed at a new PTY.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from firmware_bridge import uhf_m100
from firmware_bridge.uhf_m100 import UhfFrame, UhfM100Decoder
from simulators.command_reader import CommandReader

#: (EPC bytes, RSSI in dBm) for each tag in the field now.
FieldTags = Callable[[], Sequence[tuple[bytes, int]]]

#: M100 error code for a command it does not know.
ERROR_INVALID_COMMAND = 0x17

# Response to "stop multiple inventory": BB 01 28 00 01 00 2A 7E (param 00 = success).
_STOP_OK = uhf_m100.encode_frame(uhf_m100.TYPE_RESPONSE, uhf_m100.CMD_STOP_MULTI_INVENTORY, b"\0")


class VirtualUhfReader(CommandReader):
    """An M100 module behind ``link_path``.

    tags: the tags in the field now, asked at every inventory round.
    round_s: seconds per round of a multiple inventory (the real module does ~10-50 ms).
    Commands are read by a daemon thread every ``poll_s`` seconds.
    """

    def __init__(
        self,
        link_path: Path,
        tags: FieldTags,
        *,
        round_s: float = 0.02,
        poll_s: float = 0.005,
    ) -> None:
        super().__init__(link_path, poll_s=poll_s, name="virtual-uhf",
                         encode=lambda epc: uhf_m100.inventory_notification(epc, -60))
        self._tags = tags
        self._round_s = round_s
        self._decoder = UhfM100Decoder()
        self._rounds_left = 0  # of a running multiple inventory
        self._next_round = time.monotonic()
        #: Host commands received, as decoded frames (for tests and demos).
        self.commands: list[UhfFrame] = []
        self._start()

    def _power_on(self) -> None:
        # Replugged: a fresh module with no half-received command, not inventorying.
        self._decoder.reset()
        self._rounds_left = 0

    def _step(self, data: bytes) -> None:
        for msg in self._decoder.feed_messages(data):
            if isinstance(msg, UhfFrame) and msg.frame_type == uhf_m100.TYPE_COMMAND:
                self.commands.append(msg)
                self._answer(msg)
        if self._rounds_left and time.monotonic() >= self._next_round:
            self._next_round = time.monotonic() + self._round_s
            self._rounds_left -= 1
            self._inventory_round(report_empty=False)

    def _answer(self, cmd: UhfFrame) -> None:
        if cmd.command == uhf_m100.CMD_INVENTORY:
            self._inventory_round(report_empty=True)
        elif cmd.command == uhf_m100.CMD_MULTI_INVENTORY and len(cmd.params) == 3:
            self._rounds_left = int.from_bytes(cmd.params[1:3], "big")
        elif cmd.command == uhf_m100.CMD_STOP_MULTI_INVENTORY:
            self._rounds_left = 0
            self.port.send_raw(_STOP_OK)
        else:
            self.port.send_raw(uhf_m100.error_response(ERROR_INVALID_COMMAND))

    def _inventory_round(self, *, report_empty: bool) -> None:
        tags = list(self._tags())
        frames = b"".join(uhf_m100.inventory_notification(epc, rssi) for epc, rssi in tags)
        if frames:
            self.port.send_raw(frames)
        elif report_empty:
            # Only a single inventory reports "no tag"; an empty round of a multiple
            # inventory is silent.
            self.port.send_raw(uhf_m100.error_response(uhf_m100.ERROR_NO_TAG))
