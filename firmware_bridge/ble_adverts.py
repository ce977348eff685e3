"""Decoders for BLE advertisements: iBeacon, AltBeacon, Eddystone and wristband formats.

Pure functions over the dictionaries bleak hands its detection callback; no I/O, no clock.

Input shape (bleak's ``AdvertisementData``):

* ``manufacturer_data``: ``{company_id: payload}``. The company id is the 16-bit Bluetooth SIG
  assigned number (sent little-endian over the air); bleak strips those 2 bytes, so every
  offset below counts from the first byte *after* the company id.
* ``service_data``: ``{"0000feaa-0000-1000-8000-00805f9b34fb": payload}``, keyed by the
  128-bit UUID string; 16-bit UUIDs are expanded onto the Bluetooth base UUID.

Byte layouts (multi-byte integers big-endian unless stated):

* iBeacon, company 0x004C (Apple)::

      02 15 | uuid(16) | major(2) | minor(2) | tx_power(int8, dBm at 1 m)      = 23 bytes

* AltBeacon, any company id::

      BE AC | beacon_id(20) | ref_rssi(int8, dBm at 1 m) | mfg_reserved(1)     = 24 bytes

* Eddystone (service data of UUID 0xFEAA), first byte is the frame type:

  - UID ``00 | tx_power(int8, dBm at 0 m) | namespace(10) | instance(6) | rfu(2)``
  - URL ``10 | tx_power(int8, dBm at 0 m) | scheme(1) | encoded url(0..17)``
  - TLM ``20 | version(1)=00 | battery(2, mV) | temp(2, signed 8.8 fixed point degC) |
    adv_count(4) | sec_count(4, units of 0.1 s)``

* Wristband: a :class:`WristbandFormat` names a company id and where its tag id sits in
  the manufacturer payload (``payload[id_offset : id_offset + id_length]``).

Bad input never raises: a part that looks like one of these formats (right company id or
prefix) but has the wrong length or reserved values is *malformed* and yields no record;
data of some other kind (an iPhone's Continuity messages under 0x004C, say) is *ignored*.
Both are counted in :class:`AdvertStats` when the caller passes one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast, get_args

from firmware_bridge.records import RawRead

APPLE_COMPANY_ID = 0x004C
IBEACON_PREFIX = b"\x02\x15"
IBEACON_LENGTH = 23
ALTBEACON_CODE = b"\xbe\xac"
ALTBEACON_LENGTH = 24
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UID_FRAME = 0x00
EDDYSTONE_URL_FRAME = 0x10
EDDYSTONE_TLM_FRAME = 0x20
EDDYSTONE_UID_MIN_LENGTH = 18  # the 2 RFU bytes are often left off by cheap beacons
EDDYSTONE_URL_MAX_LENGTH = 20  # frame type, tx power, scheme and at most 17 url bytes
EDDYSTONE_TLM_LENGTH = 14
TLM_TEMPERATURE_UNSUPPORTED = -0x8000  # 0x8000 as signed 8.8: "no sensor"

URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
URL_EXPANSIONS = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WristbandFormat:
    """Where a wristband vendor puts its tag id in manufacturer data.

    company_id: Bluetooth SIG company identifier, 0..0xFFFF (the key bleak uses).
    id_offset: first byte of the id, counted from the byte after the company id.
    id_length: length of the id in bytes (1..64).
    name: label for logs and the decoded record, e.g. ``"acme-band-v2"``.
    """

    company_id: int
    id_offset: int
    id_length: int
    name: str

    def __post_init__(self) -> None:
        # Config mistakes are refused loudly here so decoding itself never has to raise.
        if not 0 <= self.company_id <= 0xFFFF:
            raise ValueError(f"wristband {self.name!r}: company_id must be 0..0xFFFF")
        if self.id_offset < 0:
            raise ValueError(f"wristband {self.name!r}: id_offset must be >= 0")
        if not 1 <= self.id_length <= 64:
            raise ValueError(f"wristband {self.name!r}: id_length must be 1..64")


@dataclass(frozen=True, slots=True)
class IBeacon:
    """Apple iBeacon. tx_power_dbm: calibrated RSSI at 1 m; rssi_dbm: as received."""

    uuid: uuid.UUID
    major: int
    minor: int
    tx_power_dbm: int
    rssi_dbm: int | None


@dataclass(frozen=True, slots=True)
class AltBeacon:
    """AltBeacon. beacon_id: 20 bytes (by convention a 16-byte UUID + 2 + 2);
    ref_rssi_dbm: calibrated RSSI at 1 m; mfg_reserved: vendor byte."""

    company_id: int
    beacon_id: bytes
    ref_rssi_dbm: int
    mfg_reserved: int
    rssi_dbm: int | None


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    """Eddystone-UID. tx_power_dbm: calibrated power at 0 m; namespace 10 bytes,
    instance 6 bytes."""

    tx_power_dbm: int
    namespace: bytes
    instance: bytes
    rssi_dbm: int | None


@dataclass(frozen=True, slots=True)
class EddystoneUrl:
    """Eddystone-URL with the scheme and expansion codes expanded."""

    tx_power_dbm: int
    url: str
    rssi_dbm: int | None


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    """Eddystone-TLM (unencrypted, version 0). Telemetry only: carries no identity.

    battery_mv: battery voltage in millivolts, ``None`` when the beacon reports 0 (no sensor).
    temperature_c: degrees Celsius, ``None`` when the beacon reports 0x8000 (no sensor).
    adv_count: advertising PDUs sent since power-up.
    uptime_s: seconds since power-up (the frame counts 0.1 s units).
    """

    version: int
    battery_mv: int | None
    temperature_c: float | None
    adv_count: int
    uptime_s: float
    rssi_dbm: int | None


@dataclass(frozen=True, slots=True)
class Wristband:
    """A configured wristband format matched; tag_id is the bytes it names."""

    format_name: str
    company_id: int
    tag_id: bytes
    rssi_dbm: int | None


BleAdvert: TypeAlias = IBeacon | AltBeacon | EddystoneUid | EddystoneUrl | EddystoneTlm | Wristband


@dataclass(slots=True)
class AdvertStats:
    """Counters over decoded adverts (monotonic).

    adverts: calls to :func:`decode_advert`.
    records: records decoded.
    malformed: parts that matched a format's company id or prefix but failed its checks.
    ignored: parts of no known format (phones, headphones, other vendors' beacons).
    """

    adverts: int = 0
    records: int = 0
    malformed: int = 0
    ignored: int = 0


IdentityRule: TypeAlias = Literal[
    "ibeacon", "ibeacon-uuid-major", "eddystone-uid", "altbeacon", "wristband", "address"
]
IDENTITY_RULES: tuple[str, ...] = get_args(IdentityRule)
DEFAULT_IDENTITY_RULE: IdentityRule = "ibeacon"


def parse_identity_rule(value: str) -> IdentityRule:
    """Validate a config string as an :data:`IdentityRule`; raises ``ValueError`` if unknown."""
    if value in IDENTITY_RULES:
        return cast(IdentityRule, value)
    raise ValueError(f"unknown BLE identity rule {value!r}; expected one of {IDENTITY_RULES}")


# -- decoding ---------------------------------------------------------------------------------


def _int8(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _as_rssi(value: object) -> int | None:
    # bool is an int subclass; an RSSI of True is nonsense, not 1 dBm.
    if isinstance(value, int) and not isinstance(value, bool) and -255 <= value <= 255:
        return value
    return None


def decode_ibeacon(payload: bytes, rssi: int | None) -> IBeacon | None:
    """Decode an Apple (0x004C) payload as iBeacon; ``None`` if it is not a valid one."""
    if len(payload) != IBEACON_LENGTH or payload[:2] != IBEACON_PREFIX:
        return None
    return IBeacon(
        uuid=uuid.UUID(bytes=payload[2:18]),
        major=int.from_bytes(payload[18:20], "big"),
        minor=int.from_bytes(payload[20:22], "big"),
        tx_power_dbm=_int8(payload[22]),
        rssi_dbm=rssi,
    )


def decode_altbeacon(company_id: int, payload: bytes, rssi: int | None) -> AltBeacon | None:
    """Decode a manufacturer payload as AltBeacon; ``None`` if it is not a valid one."""
    if len(payload) != ALTBEACON_LENGTH or payload[:2] != ALTBEACON_CODE:
        return None
    return AltBeacon(
        company_id=company_id,
        beacon_id=payload[2:22],
        ref_rssi_dbm=_int8(payload[22]),
        mfg_reserved=payload[23],
        rssi_dbm=rssi,
    )


def decode_eddystone_url_body(scheme: int, encoded: bytes) -> str | None:
    """Expand an Eddystone-URL scheme byte and encoded URL; ``None`` on reserved codes."""
    if scheme >= len(URL_SCHEMES):
        return None
    parts = [URL_SCHEMES[scheme]]
    for byte in encoded:
        if byte < len(URL_EXPANSIONS):
            parts.append(URL_EXPANSIONS[byte])
        elif 0x21 <= byte <= 0x7E:  # printable ASCII is literal; the rest is reserved
            parts.append(chr(byte))
        else:
            return None
    return "".join(parts)


def decode_eddystone(payload: bytes, rssi: int | None) -> BleAdvert | None:
    """Decode Eddystone service data (UID, URL or unencrypted TLM); ``None`` if invalid."""
    if not payload:
        return None
    frame = payload[0]
    if frame == EDDYSTONE_UID_FRAME:
        if not EDDYSTONE_UID_MIN_LENGTH <= len(payload) <= EDDYSTONE_UID_MIN_LENGTH + 2:
            return None
        return EddystoneUid(
            tx_power_dbm=_int8(payload[1]),
            namespace=payload[2:12],
            instance=payload[12:18],
            rssi_dbm=rssi,
        )
    if frame == EDDYSTONE_URL_FRAME:
        if not 3 <= len(payload) <= EDDYSTONE_URL_MAX_LENGTH:
            return None
        url = decode_eddystone_url_body(payload[2], payload[3:])
        if url is None:
            return None
        return EddystoneUrl(tx_power_dbm=_int8(payload[1]), url=url, rssi_dbm=rssi)
    if frame == EDDYSTONE_TLM_FRAME:
        # Version 1 is encrypted TLM (needs the beacon's identity key): not decoded here.
        if len(payload) != EDDYSTONE_TLM_LENGTH or payload[1] != 0x00:
            return None
        battery = int.from_bytes(payload[2:4], "big")
        temp_raw = int.from_bytes(payload[4:6], "big", signed=True)
        return EddystoneTlm(
            version=payload[1],
            battery_mv=battery or None,
            temperature_c=None if temp_raw == TLM_TEMPERATURE_UNSUPPORTED else temp_raw / 256.0,
            adv_count=int.from_bytes(payload[6:10], "big"),
            uptime_s=int.from_bytes(payload[10:14], "big") / 10.0,
            rssi_dbm=rssi,
        )
    return None


def decode_wristband(fmt: WristbandFormat, payload: bytes, rssi: int | None) -> Wristband | None:
    """Cut the configured id out of a manufacturer payload; ``None`` if it is too short."""
    end = fmt.id_offset + fmt.id_length
    if len(payload) < end:
        return None
    return Wristband(
        format_name=fmt.name,
        company_id=fmt.company_id,
        tag_id=payload[fmt.id_offset : end],
        rssi_dbm=rssi,
    )


def _decode_manufacturer(
    company_id: int,
    payload: bytes,
    rssi: int | None,
    wristbands: Sequence[WristbandFormat],
    out: list[BleAdvert],
) -> int:
    """Append records for one manufacturer entry; return the number of malformed parts."""
    malformed = 0
    # A wristband vendor may reuse a beacon layout, so every decoder gets a look.
    for fmt in wristbands:
        if fmt.company_id == company_id:
            band = decode_wristband(fmt, payload, rssi)
            if band is None:
                malformed += 1
            else:
                out.append(band)
    if company_id == APPLE_COMPANY_ID and payload[:2] == IBEACON_PREFIX:
        ibeacon = decode_ibeacon(payload, rssi)
        if ibeacon is None:
            malformed += 1
        else:
            out.append(ibeacon)
    if payload[:2] == ALTBEACON_CODE:
        altbeacon = decode_altbeacon(company_id, payload, rssi)
        if altbeacon is None:
            malformed += 1
        else:
            out.append(altbeacon)
    return malformed


def decode_advert(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    rssi: int | None,
    *,
    wristbands: Sequence[WristbandFormat] = (),
    stats: AdvertStats | None = None,
) -> list[BleAdvert]:
    """Decode one advertisement into every record it carries (possibly none).

    rssi: received signal strength in dBm as bleak reports it; copied into each record
    (``None`` when absent or not a plausible integer). Never raises on any content of the
    two mappings; entries of the wrong type count as malformed.
    """
    records: list[BleAdvert] = []
    malformed = 0
    ignored = 0
    rssi_dbm = _as_rssi(rssi)

    for company_id, raw in manufacturer_data.items():
        payload = _as_bytes(raw)
        if not isinstance(company_id, int) or payload is None:
            malformed += 1
            continue
        before = len(records)
        bad = _decode_manufacturer(company_id, payload, rssi_dbm, wristbands, records)
        malformed += bad
        if bad == 0 and len(records) == before:
            ignored += 1

    for key, raw in service_data.items():
        payload = _as_bytes(raw)
        if not isinstance(key, str) or payload is None:
            malformed += 1
            continue
        if key.lower() != EDDYSTONE_UUID:
            ignored += 1
            continue
        eddystone = decode_eddystone(payload, rssi_dbm)
        if eddystone is None:
            malformed += 1
        else:
            records.append(eddystone)

    if stats is not None:
        stats.adverts += 1
        stats.records += len(records)
        stats.malformed += malformed
        stats.ignored += ignored
    return records


# -- identity ---------------------------------------------------------------------------------


def address_bytes(address: str) -> bytes:
    """A BLE address as tag id bytes: the 6 octets of ``AA:BB:CC:DD:EE:FF``, else the UTF-8
    of the string (macOS reports per-host UUIDs instead of MACs)."""
    parts = address.split(":")
    if len(parts) == 6 and all(len(p) == 2 for p in parts):
        try:
            return bytes(int(p, 16) for p in parts)
        except ValueError:
            pass
    return address.encode("utf-8", "replace")


def identity_of(advert: BleAdvert, rule: IdentityRule) -> bytes | None:
    """The tag id bytes ``advert`` carries under ``rule``, or ``None`` if it carries none.

    ibeacon: uuid(16) + major(2) + minor(2); ibeacon-uuid-major: uuid(16) + major(2);
    eddystone-uid: namespace(10) + instance(6); altbeacon: the 20-byte beacon id;
    wristband: the configured id bytes. ``address`` is handled by :func:`to_raw_reads`.
    """
    if isinstance(advert, IBeacon):
        if rule == "ibeacon":
            return (
                advert.uuid.bytes
                + advert.major.to_bytes(2, "big")
                + advert.minor.to_bytes(2, "big")
            )
        if rule == "ibeacon-uuid-major":
            return advert.uuid.bytes + advert.major.to_bytes(2, "big")
    elif isinstance(advert, EddystoneUid) and rule == "eddystone-uid":
        return advert.namespace + advert.instance
    elif isinstance(advert, AltBeacon) and rule == "altbeacon":
        return advert.beacon_id
    elif isinstance(advert, Wristband) and rule == "wristband":
        return advert.tag_id
    return None


def to_raw_reads(adverts: Sequence[BleAdvert], rule: IdentityRule, address: str) -> list[RawRead]:
    """Turn decoded records into ``RawRead(protocol="ble")`` for the identity ``rule``.

    One read per distinct identity in the advert. Under ``"address"`` an advert gives one
    read keyed by the sender's address, but only if it decoded to at least one record: a
    venue full of phones would otherwise fill the tag table with strangers. TLM and URL
    frames carry no identity under the other rules. Raises ``ValueError`` for an unknown
    rule (a config error, caught when the scanner is built).
    """
    if rule not in IDENTITY_RULES:
        raise ValueError(f"unknown BLE identity rule {rule!r}; expected one of {IDENTITY_RULES}")
    if rule == "address":
        if not adverts:
            return []
        rssi = next((a.rssi_dbm for a in adverts if a.rssi_dbm is not None), None)
        return [RawRead("ble", address_bytes(address), None if rssi is None else float(rssi))]
    reads: list[RawRead] = []
    seen: set[bytes] = set()
    for advert in adverts:
        tag_id = identity_of(advert, rule)
        if tag_id is None or tag_id in seen:
            continue
        seen.add(tag_id)
        rssi_dbm = None if advert.rssi_dbm is None else float(advert.rssi_dbm)
        reads.append(RawRead("ble", tag_id, rssi_dbm))
    return reads
