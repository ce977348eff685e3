"""Registry of reader protocols: names from the gateway config to fresh decoders.

The names are the values of ``[[readers]].protocol`` in the gateway config. ``"ble"`` is a
valid reader protocol but not a serial one: BLE adverts come from the BLE scanner, so
:func:`make_decoder` refuses it with :class:`NotSerialProtocolError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from firmware_bridge.records import DecoderStats, RawRead

#: Every protocol a reader can speak, in the order the docs list them.
PROTOCOL_NAMES: tuple[str, ...] = ("em4100", "uhf-m100", "pn532", "ble")

#: Serial line speed (baud) the readers ship with. socket:// links ignore it.
DEFAULT_BAUDRATE: dict[str, int] = {"em4100": 9600, "uhf-m100": 115200, "pn532": 115200}

# name -> (module, class); imported on first use so one protocol's module never slows or
# breaks another's.
_DECODERS: dict[str, tuple[str, str]] = {
    "em4100": ("firmware_bridge.em4100", "Em4100Decoder"),
    "uhf-m100": ("firmware_bridge.uhf_m100", "UhfM100Decoder"),
    "pn532": ("firmware_bridge.pn532", "Pn532Decoder"),
}


class Decoder(Protocol):
    """What every incremental serial decoder provides.

    ``on_bad_frame(stream_offset, reason)``, when set, hears about each rejected frame
    (offset: bytes fed since the decoder was made, including bytes dropped by ``reset``).
    """

    protocol: str
    stats: DecoderStats
    on_bad_frame: Callable[[int, str], None] | None
    #: The most bytes the decoder ever holds back (its protocol's longest frame).
    max_frame_len: int

    @property
    def buffered(self) -> bytes:
        """The bytes held back as the start of a frame not yet complete."""
        ...

    def feed(self, data: bytes) -> list[RawRead]:
        """Consume bytes (any split), return completed reads. Never raises."""
        ...

    def drain(self) -> list[RawRead]:
        """End of a finite input: give held-back bytes a final attempt, return the reads
        they still make, and leave the buffer empty. Never raises."""
        ...

    def reset(self) -> None:
        """Drop any partial frame (after a reconnect)."""
        ...


@runtime_checkable
class MessageDecoder(Decoder, Protocol):
    """A decoder that also reports frames other than reads (UHF errors, PN532 ACKs...).

    ``on_message(msg)``, when set, gets each such message as it is decoded.
    """

    on_message: Callable[[Any], None] | None


class UnknownProtocolError(ValueError):
    """A protocol name that is not one of :data:`PROTOCOL_NAMES`."""


class NotSerialProtocolError(ValueError):
    """A known protocol that is not read over a serial link (``"ble"``)."""


def is_serial_protocol(name: str) -> bool:
    """True for protocols read by a serial link (em4100, uhf-m100, pn532)."""
    return name in _DECODERS


def check_protocol(name: str) -> str:
    """Return ``name`` if it is a known protocol, else raise :class:`UnknownProtocolError`."""
    if name not in PROTOCOL_NAMES:
        known = ", ".join(PROTOCOL_NAMES)
        raise UnknownProtocolError(f"unknown reader protocol {name!r}; expected one of: {known}")
    return name


def make_decoder(name: str) -> Decoder:
    """A fresh decoder for the serial protocol ``name``.

    Raises :class:`UnknownProtocolError` for an unknown name and
    :class:`NotSerialProtocolError` for ``"ble"``.
    """
    check_protocol(name)
    if name not in _DECODERS:
        serial = ", ".join(_DECODERS)
        raise NotSerialProtocolError(
            f"reader protocol {name!r} is not a serial protocol: BLE adverts are read by the "
            f"BLE scanner, not a serial link (serial protocols: {serial})"
        )
    module, cls = _DECODERS[name]
    decoder: Decoder = getattr(importlib.import_module(module), cls)()
    return decoder
