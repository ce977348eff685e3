"""Typed records that leave the firmware bridge.

A decoder sees only bytes: it knows neither the time nor which reader it is attached to.
It returns :class:`RawRead` records; the link that owns the port stamps them with the host
clock and the reader id (:class:`TagRead`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawRead:
    """One tag read as a decoder sees it.

    protocol: ``"em4100" | "uhf-m100" | "pn532" | "ble"``.
    tag_id: the identifier exactly as the protocol carries it (EM4100: 5 bytes, version byte
        then 4-byte id; UHF: the EPC bytes; PN532: the 4/7/10-byte UID; BLE: the bytes of
        the identity the wristband is tracked by). Never leaves the gateway: the agent turns
        it into a keyed pseudonym straight away.
    rssi_dbm: received signal strength in dBm where the protocol reports it, else ``None``.
    """

    protocol: str
    tag_id: bytes
    rssi_dbm: float | None = None


@dataclass(frozen=True, slots=True)
class TagRead:
    """A :class:`RawRead` stamped by its link.

    ts: host clock at receipt, seconds since the Unix epoch (UTC).
    reader: the reader id from the gateway config.
    """

    ts: float
    reader: str
    read: RawRead


@dataclass(slots=True)
class DecoderStats:
    """Counters every incremental decoder keeps (monotonic, never reset by ``reset()``).

    frames: frames that decoded to a valid message (reads, acks, errors...).
    bad_frames: frames that looked like frames but failed a check (checksum, length, ETX).
    skipped_bytes: bytes discarded while hunting for the next frame start.
    """

    frames: int = 0
    bad_frames: int = 0
    skipped_bytes: int = 0
