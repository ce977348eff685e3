"""Reader bring-up: decode a reader's bytes (or BLE adverts) into JSON lines.

``venue-agent decode --protocol P`` calls :func:`run_decode`. Serial protocols read raw
bytes from stdin (``cat /dev/ttyUSB0``, a capture file) or, with ``--port``, from any
pyserial URL; readers that must be asked (UHF, PN532) are sent the same init and poll
commands the agent sends. ``--protocol ble`` reads JSON lines of bleak advert fields::

    {"manufacturer_data": {"76": "0215..."}, "service_data": {"0000feaa-...": "00e3..."},
     "rssi": -60, "address": "AA:BB:CC:DD:EE:FF"}

(company ids as decimal or ``0x`` hex strings; payloads as hex; ``rssi``/``address``
optional).

stdout gets one JSON object per line per read: ``{"protocol", "tag_id" (hex), "rssi_dbm"}``;
BLE lines add ``kind`` and the decoded fields. stderr gets one line per bad frame with its
stream offset, reader messages such as UHF error responses, and a summary. Exit status: 0
when the input was consumed, 2 for an unknown protocol, 1 when ``--port`` never opened.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO, TextIO

from firmware_bridge.protocols import (
    DEFAULT_BAUDRATE,
    Decoder,
    MessageDecoder,
    UnknownProtocolError,
    check_protocol,
    make_decoder,
)
from firmware_bridge.records import RawRead
from firmware_bridge.serial_link import SerialLink, driver_for

_CHUNK = 4096


def run_decode(
    protocol: str,
    instream: BinaryIO,
    out: TextIO,
    err: TextIO,
    *,
    port: str | None = None,
    duration_s: float | None = None,
) -> int:
    """Decode ``instream`` (or ``port``, a pyserial URL) as ``protocol``; see module doc.

    ``duration_s`` bounds how long a ``port`` is read (``None``: until interrupted).
    """
    try:
        check_protocol(protocol)
    except UnknownProtocolError as exc:
        print(f"decode: {exc}", file=err)
        return 2
    if protocol == "ble":
        if port is not None:
            print("decode: --port is for serial protocols; BLE adverts come on stdin", file=err)
            return 2
        return _decode_ble(instream, out, err)

    decoder = make_decoder(protocol)
    decoder.on_bad_frame = lambda offset, reason: print(
        f"offset {offset}: bad {protocol} frame: {reason}", file=err, flush=True
    )
    if isinstance(decoder, MessageDecoder):
        decoder.on_message = lambda msg: print(
            f"{protocol}: {_describe_message(msg)}", file=err, flush=True
        )
    if port is not None:
        status = _decode_port(protocol, decoder, port, out, err, duration_s)
    else:
        read = getattr(instream, "read1", instream.read)
        while chunk := read(_CHUNK):
            _print_reads(decoder.feed(chunk), out)
        # End of input: frames held back waiting for bytes that will never come get a
        # final attempt; what still is no frame is reported and counted as skipped.
        _print_reads(decoder.drain(), out)
        status = 0
    s = decoder.stats
    print(
        f"decode: {s.frames} frames, {s.bad_frames} bad frames, {s.skipped_bytes} skipped bytes",
        file=err,
    )
    return status


def _print_reads(reads: list[RawRead], out: TextIO) -> None:
    for r in reads:
        line = {"protocol": r.protocol, "tag_id": r.tag_id.hex(), "rssi_dbm": r.rssi_dbm}
        out.write(json.dumps(line) + "\n")
    if reads:
        out.flush()


def _describe_message(msg: object) -> str:
    """One human line for a non-read message (UHF error, PN532 ACK...)."""
    fields = {
        f.name: _jsonable(getattr(msg, f.name))
        for f in dataclasses.fields(msg)  # type: ignore[arg-type]
    }
    return f"{type(msg).__name__} {json.dumps(fields)}" if fields else type(msg).__name__


def _decode_port(
    protocol: str,
    decoder: Decoder,
    port: str,
    out: TextIO,
    err: TextIO,
    duration_s: float | None,
) -> int:
    lock = threading.Lock()  # the link thread prints; keep lines whole

    def on_reads(_reader: str, _ts: float, reads: list[RawRead]) -> None:
        with lock:
            _print_reads(reads, out)

    def on_state(_reader: str, online: bool, message: str | None) -> None:
        with lock:
            print(f"decode: {'online' if online else message}", file=err, flush=True)

    driver = driver_for(protocol)
    link = SerialLink(
        "decode",
        port,
        decoder,
        on_reads,
        baudrate=DEFAULT_BAUDRATE[protocol],
        on_state=on_state,
        on_connect=driver.on_connect if driver else None,
        poll=driver.poll if driver else None,
        poll_interval_s=driver.poll_interval_s if driver else 0.5,
    )
    link.start()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        stopped = link.stop()
    if stopped:  # the link thread no longer touches the decoder: end the input as stdin does
        _print_reads(decoder.drain(), out)
    return 0 if link.health().connects else 1


# -- BLE ----------------------------------------------------------------------------------

# Which identity rule gives a decoded advert's tag id (the others carry none).
_BLE_RULES: dict[str, str] = {
    "IBeacon": "ibeacon",
    "EddystoneUid": "eddystone-uid",
    "AltBeacon": "altbeacon",
    "Wristband": "wristband",
}


def _decode_ble(instream: BinaryIO, out: TextIO, err: TextIO) -> int:
    from firmware_bridge import ble_adverts  # written alongside; imported only when needed

    for lineno, raw in enumerate(instream, start=1):
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            continue
        parsed = _parse_advert_line(text)
        if isinstance(parsed, str):
            print(f"line {lineno}: {parsed}", file=err)
            continue
        manufacturer, service, rssi = parsed
        for advert in ble_adverts.decode_advert(manufacturer, service, rssi):
            out.write(json.dumps(_ble_record(advert, ble_adverts.identity_of)) + "\n")
        out.flush()
    return 0


def _parse_advert_line(
    text: str,
) -> tuple[dict[int, bytes], dict[str, bytes], int | None] | str:
    """The advert fields of one JSON line, or why the line is unusable."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return "expected a JSON object"
    try:
        manufacturer = {
            int(str(k), 0): bytes.fromhex(v)
            for k, v in (obj.get("manufacturer_data") or {}).items()
        }
        service = {str(k): bytes.fromhex(v) for k, v in (obj.get("service_data") or {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        return f"bad manufacturer_data/service_data (want id -> hex string): {exc}"
    rssi = obj.get("rssi")
    if rssi is not None and not isinstance(rssi, int):
        return f"rssi must be an integer, got {rssi!r}"
    return manufacturer, service, rssi


def _ble_record(advert: Any, identity_of: Callable[[Any, Any], bytes | None]) -> dict[str, Any]:
    kind = type(advert).__name__
    rule = _BLE_RULES.get(kind)
    tag_id = identity_of(advert, rule) if rule else None
    record: dict[str, Any] = {
        "protocol": "ble",
        "kind": kind,
        "tag_id": tag_id.hex() if tag_id is not None else None,
        "rssi_dbm": advert.rssi_dbm,
    }
    for f in dataclasses.fields(advert):
        if f.name != "rssi_dbm":
            record[f.name] = _jsonable(getattr(advert, f.name))
    return record


def _jsonable(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


__all__ = ["run_decode"]
