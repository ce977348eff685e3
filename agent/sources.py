"""One face for every read source: serial links and BLE scanners behind one protocol.

The runtime starts, stops and asks the health of its readers without knowing what they are:
:func:`open_source` picks the implementation from the reader's protocol (the names live in
``firmware_bridge.protocols.PROTOCOL_NAMES``). Both kinds call back from their own threads or
library callbacks; the callbacks they are given only hand data over to the loop.

    on_reads(reader_id, ts, reads)         ts: seconds on the agent's clock; reads: RawRead
    on_state(reader_id, online, message)   message: why it is offline (None when online)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import ReaderConfig
from firmware_bridge.records import RawRead

OnReads = Callable[[str, float, list[RawRead]], None]
OnState = Callable[[str, bool, "str | None"], None]


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """What every read source reports, whatever its transport.

    reads: reads handed over since start; bad_frames: frames or adverts that failed their
    checks; degraded: the source is up but its decoder keeps failing; message: the last
    error, None when healthy."""

    reader_id: str
    online: bool
    reads: int
    bad_frames: int
    degraded: bool
    message: str | None


class ReadSource(Protocol):
    """A reader the runtime owns: started once, stopped once, asked for health any time."""

    reader_id: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> SourceHealth: ...


class SerialSource:
    """A serial reader (tty, ``socket://``, ``rfc2217://``) on its own pyserial link thread."""

    def __init__(self, r: ReaderConfig, on_reads: OnReads, on_state: OnState,
                 clock: Callable[[], float]) -> None:
        from firmware_bridge.serial_link import open_reader_link

        self.reader_id = r.id
        self.describe = f"{r.protocol} on {r.port}"
        # The factory picks the decoder, baud rate and, for readers that only answer when
        # asked (UHF, PN532), the polling driver.
        self._link: Any = open_reader_link(r.id, r.protocol, r.port, on_reads,
                                           baudrate=r.baudrate or None,
                                           poll_interval_s=r.poll_interval_s,
                                           on_state=on_state, clock=clock)

    async def start(self) -> None:
        self._link.start()

    async def stop(self) -> None:
        self._link.stop()

    def health(self) -> SourceHealth:
        h = self._link.health()
        return SourceHealth(self.reader_id, bool(getattr(h, "online", False)),
                            int(getattr(h, "reads", 0)), int(getattr(h, "bad_frames", 0)),
                            bool(getattr(h, "degraded", False)),
                            getattr(h, "message", None) or getattr(h, "last_error", None))


class BleSource:
    """A BLE adapter scanning for the reader's wristband formats (bleak)."""

    def __init__(self, r: ReaderConfig, on_reads: OnReads, on_state: OnState,
                 clock: Callable[[], float]) -> None:
        from firmware_bridge.ble_adverts import WristbandFormat
        from firmware_bridge.ble_scanner import BleScanner

        self.reader_id = r.id
        self.describe = f"BLE scanner on {r.adapter or 'the default adapter'}"
        bands = [WristbandFormat(company_id=w.company_id, id_offset=w.id_offset,
                                 id_length=w.id_length, name=w.name) for w in r.wristbands]
        self._scanner = BleScanner(r.id, on_reads, rule=r.identity, wristbands=bands,
                                   adapter=r.adapter or None, on_state=on_state, clock=clock)

    async def start(self) -> None:
        await self._scanner.start()

    async def stop(self) -> None:
        await self._scanner.stop()

    def health(self) -> SourceHealth:
        h = self._scanner.health()
        return SourceHealth(self.reader_id, h.online, h.decoded_reads,
                            h.malformed + h.handoff_errors, False, h.message)


def open_source(r: ReaderConfig, on_reads: OnReads, on_state: OnState,
                clock: Callable[[], float]) -> SerialSource | BleSource:
    """The read source for one configured reader (not started)."""
    if r.protocol == "ble":
        return BleSource(r, on_reads, on_state, clock)
    return SerialSource(r, on_reads, on_state, clock)
