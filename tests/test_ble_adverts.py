"""BLE advert decoders: published vectors, hand-built frames, identity rules, fuzzing."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.ble_adverts import (
    APPLE_COMPANY_ID,
    EDDYSTONE_UUID,
    IDENTITY_RULES,
    AdvertStats,
    AltBeacon,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    IBeacon,
    Wristband,
    WristbandFormat,
    address_bytes,
    decode_advert,
    parse_identity_rule,
    to_raw_reads,
)
from firmware_bridge.records import RawRead

# The two "ble" entries of the project's reader vectors (Theengs Decoder's iBeacon test and
# citruz/beacontools' Eddystone-UID test), byte for byte, with what they decode to.
IBEACON_VECTOR: dict[str, Any] = {
    "bleak_manufacturer_data": {"76": "0215426c7565436861726d426561636f6e730efe1355c5"},
    "uuid_ascii": "BlueCharmBeacons",
    "major": 3838,
    "minor": 4949,
    "tx_power_dbm": -59,
}
EDDYSTONE_UID_VECTOR: dict[str, Any] = {
    "bleak_service_data": {EDDYSTONE_UUID: "00e3123456789012346789010000000000010000"},
    "tx_power_dbm": -29,
    "namespace": "12345678901234678901",
    "instance": "000000000001",
}

BAND = WristbandFormat(company_id=0x0FFE, id_offset=2, id_length=6, name="test-band")


def ibeacon_payload(u: uuid.UUID, major: int, minor: int, tx: int) -> bytes:
    return b"\x02\x15" + u.bytes + struct.pack(">HHb", major, minor, tx)


def altbeacon_payload(beacon_id: bytes, ref_rssi: int, reserved: int) -> bytes:
    return b"\xbe\xac" + beacon_id + struct.pack(">bB", ref_rssi, reserved)


def tlm_payload(batt_mv: int, temp_raw: int, adv: int, sec: int) -> bytes:
    return struct.pack(">BBHhII", 0x20, 0x00, batt_mv, temp_raw, adv, sec)


# -- published vectors -------------------------------------------------------------------------


def test_ibeacon_vector() -> None:
    mfg = {int(k): bytes.fromhex(v) for k, v in IBEACON_VECTOR["bleak_manufacturer_data"].items()}
    records = decode_advert(mfg, {}, -70)
    assert len(records) == 1
    beacon = records[0]
    assert isinstance(beacon, IBeacon)
    assert beacon.uuid.bytes.decode("ascii") == IBEACON_VECTOR["uuid_ascii"]
    assert beacon.major == IBEACON_VECTOR["major"]
    assert beacon.minor == IBEACON_VECTOR["minor"]
    assert beacon.tx_power_dbm == IBEACON_VECTOR["tx_power_dbm"]
    assert beacon.rssi_dbm == -70


def test_eddystone_uid_vector() -> None:
    svc = {k: bytes.fromhex(v) for k, v in EDDYSTONE_UID_VECTOR["bleak_service_data"].items()}
    records = decode_advert({}, svc, -55)
    assert len(records) == 1
    uid = records[0]
    assert isinstance(uid, EddystoneUid)
    assert uid.tx_power_dbm == EDDYSTONE_UID_VECTOR["tx_power_dbm"]
    assert uid.namespace.hex() == EDDYSTONE_UID_VECTOR["namespace"]
    assert uid.instance.hex() == EDDYSTONE_UID_VECTOR["instance"]


# -- hand-built frames -------------------------------------------------------------------------


def test_ibeacon_hand_built_round_trip() -> None:
    u = uuid.UUID("e2c56db5-dffb-48d2-b060-d0f5a71096e0")
    (rec,) = decode_advert({APPLE_COMPANY_ID: ibeacon_payload(u, 65535, 1, -128)}, {}, None)
    assert rec == IBeacon(uuid=u, major=65535, minor=1, tx_power_dbm=-128, rssi_dbm=None)


def test_altbeacon_any_company() -> None:
    beacon_id = bytes(range(20))
    (rec,) = decode_advert({0x0118: altbeacon_payload(beacon_id, -65, 0x7F)}, {}, -80)
    assert rec == AltBeacon(
        company_id=0x0118, beacon_id=beacon_id, ref_rssi_dbm=-65, mfg_reserved=0x7F, rssi_dbm=-80
    )


def test_eddystone_uid_without_rfu_bytes() -> None:
    frame = b"\x00\xf0" + b"N" * 10 + b"I" * 6
    (rec,) = decode_advert({}, {EDDYSTONE_UUID.upper(): frame}, -40)
    assert rec == EddystoneUid(
        tx_power_dbm=-16, namespace=b"N" * 10, instance=b"I" * 6, rssi_dbm=-40
    )


@pytest.mark.parametrize(
    ("body", "url"),
    [
        (b"\x00goo.gl/S6zT6P", "http://www.goo.gl/S6zT6P"),
        (b"\x01example\x07", "https://www.example.com"),
        (b"\x02park\x00map", "http://park.com/map"),
        (b"\x03dino\x08/q?w=1", "https://dino.org/q?w=1"),
        (b"\x03a\x01b\x02c\x03d\x04e\x05f\x06", "https://a.org/b.edu/c.net/d.info/e.biz/f.gov/"),
        (b"\x02x\x09y\x0az\x0bw\x0cv\x0d", "http://x.eduy.netz.infow.bizv.gov"),
    ],
)
def test_eddystone_url_expansion(body: bytes, url: str) -> None:
    (rec,) = decode_advert({}, {EDDYSTONE_UUID: b"\x10\xeb" + body}, -50)
    assert rec == EddystoneUrl(tx_power_dbm=-21, url=url, rssi_dbm=-50)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x10\xeb\x04abc",  # scheme 4 is reserved
        b"\x10\xeb\x00ab\x0ec",  # 0x0e is a reserved expansion code
        b"\x10\xeb\x00ab\x80",  # non-ASCII
        b"\x10\xeb\x00ab c",  # space is not a URL character
        b"\x10\xeb",  # no scheme
        b"\x10\xeb\x00" + b"a" * 18,  # longer than 17 encoded bytes
    ],
)
def test_eddystone_url_malformed(frame: bytes) -> None:
    stats = AdvertStats()
    assert decode_advert({}, {EDDYSTONE_UUID: frame}, -50, stats=stats) == []
    assert stats.malformed == 1


def test_eddystone_tlm() -> None:
    # 3000 mV, 23.5 degC (0x1780), 1234 PDUs, 3600.5 s up.
    (rec,) = decode_advert({}, {EDDYSTONE_UUID: tlm_payload(3000, 0x1780, 1234, 36005)}, -60)
    assert rec == EddystoneTlm(
        version=0,
        battery_mv=3000,
        temperature_c=23.5,
        adv_count=1234,
        uptime_s=3600.5,
        rssi_dbm=-60,
    )


def test_eddystone_tlm_negative_and_unsupported_sensors() -> None:
    (cold,) = decode_advert({}, {EDDYSTONE_UUID: tlm_payload(2900, -0x0280, 1, 1)}, None)
    assert isinstance(cold, EddystoneTlm)
    assert cold.temperature_c == -2.5
    (none,) = decode_advert({}, {EDDYSTONE_UUID: tlm_payload(0, -0x8000, 0, 0)}, None)
    assert isinstance(none, EddystoneTlm)
    assert none.battery_mv is None and none.temperature_c is None


def test_encrypted_tlm_is_not_decoded() -> None:
    stats = AdvertStats()
    frame = b"\x20\x01" + bytes(16)
    assert decode_advert({}, {EDDYSTONE_UUID: frame}, None, stats=stats) == []
    assert stats.malformed == 1


def test_wristband_format() -> None:
    payload = b"\xaa\xbb" + bytes.fromhex("0102030405ff") + b"\x99"
    (rec,) = decode_advert({0x0FFE: payload}, {}, -66, wristbands=[BAND])
    assert rec == Wristband(
        format_name="test-band",
        company_id=0x0FFE,
        tag_id=bytes.fromhex("0102030405ff"),
        rssi_dbm=-66,
    )


def test_wristband_too_short_is_malformed() -> None:
    stats = AdvertStats()
    assert (
        decode_advert({0x0FFE: b"\xaa\xbb\x01\x02"}, {}, -66, wristbands=[BAND], stats=stats) == []
    )
    assert stats.malformed == 1


def test_wristband_format_validation() -> None:
    with pytest.raises(ValueError, match="company_id"):
        WristbandFormat(company_id=0x10000, id_offset=0, id_length=4, name="x")
    with pytest.raises(ValueError, match="id_length"):
        WristbandFormat(company_id=1, id_offset=0, id_length=0, name="x")
    with pytest.raises(ValueError, match="id_offset"):
        WristbandFormat(company_id=1, id_offset=-1, id_length=4, name="x")


def test_one_advert_carrying_several_formats() -> None:
    u = uuid.UUID(int=7)
    mfg = {APPLE_COMPANY_ID: ibeacon_payload(u, 1, 2, -59), 0x0FFE: b"\x00\x00ABCDEF"}
    svc = {EDDYSTONE_UUID: tlm_payload(3100, 0x1000, 5, 50)}
    records = decode_advert(mfg, svc, -71, wristbands=[BAND])
    assert {type(r) for r in records} == {IBeacon, Wristband, EddystoneTlm}
    assert all(r.rssi_dbm == -71 for r in records)


def test_stats_separate_malformed_from_foreign() -> None:
    stats = AdvertStats()
    truncated_ibeacon = ibeacon_payload(uuid.UUID(int=1), 1, 1, -59)[:-1]
    continuity = bytes.fromhex("1005031c8fae9c")  # an iPhone's "nearby" message, not a beacon
    mfg = {APPLE_COMPANY_ID: truncated_ibeacon, 0x0006: b"\x01\x09\x20"}
    svc = {"0000fe9f-0000-1000-8000-00805f9b34fb": b"\x00", EDDYSTONE_UUID: b"\x00\x01"}
    assert decode_advert(mfg, svc, -50, stats=stats) == []
    assert decode_advert({APPLE_COMPANY_ID: continuity}, {}, -50, stats=stats) == []
    assert stats == AdvertStats(adverts=2, records=0, malformed=2, ignored=3)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x02",
        b"\x02\x15",
        ibeacon_payload(uuid.UUID(int=3), 1, 2, -59)[:22],
        ibeacon_payload(uuid.UUID(int=3), 1, 2, -59) + b"\x00",
    ],
)
def test_truncated_or_overlong_ibeacon_yields_nothing(payload: bytes) -> None:
    assert decode_advert({APPLE_COMPANY_ID: payload}, {}, -50) == []


def test_implausible_rssi_is_dropped_not_raised() -> None:
    mfg = {APPLE_COMPANY_ID: ibeacon_payload(uuid.UUID(int=3), 1, 2, -59)}
    (rec,) = decode_advert(mfg, {}, True)  # type: ignore[arg-type]
    assert rec.rssi_dbm is None
    (rec,) = decode_advert(mfg, {}, 9000)
    assert rec.rssi_dbm is None


# -- identity ----------------------------------------------------------------------------------

U = uuid.UUID("0b1d2c3e-4f50-6172-8394-a5b6c7d8e9f0")
MIXED = decode_advert(
    {
        APPLE_COMPANY_ID: ibeacon_payload(U, 0x0102, 0x0304, -59),
        0x0118: altbeacon_payload(b"A" * 20, -60, 0),
        0x0FFE: b"\x00\x00WRIST!",
    },
    {EDDYSTONE_UUID: b"\x00\xe3" + b"N" * 10 + b"I" * 6},
    -62,
    wristbands=[BAND],
)


@pytest.mark.parametrize(
    ("rule", "tag_id"),
    [
        ("ibeacon", U.bytes + b"\x01\x02\x03\x04"),
        ("ibeacon-uuid-major", U.bytes + b"\x01\x02"),
        ("eddystone-uid", b"N" * 10 + b"I" * 6),
        ("altbeacon", b"A" * 20),
        ("wristband", b"WRIST!"),
        ("address", bytes.fromhex("c0ffee000001")),
    ],
)
def test_identity_rules(rule: str, tag_id: bytes) -> None:
    reads = to_raw_reads(MIXED, parse_identity_rule(rule), "C0:FF:EE:00:00:01")
    assert reads == [RawRead(protocol="ble", tag_id=tag_id, rssi_dbm=-62.0)]


def test_tlm_and_url_carry_no_identity() -> None:
    records = decode_advert(
        {},
        {EDDYSTONE_UUID: tlm_payload(3000, 0, 1, 1)},
        -50,
    ) + decode_advert({}, {EDDYSTONE_UUID: b"\x10\x00\x02a.b"}, -50)
    assert len(records) == 2
    for rule in IDENTITY_RULES:
        if rule != "address":
            assert to_raw_reads(records, parse_identity_rule(rule), "AA:BB:CC:DD:EE:FF") == []


def test_address_rule_needs_a_recognised_payload() -> None:
    assert to_raw_reads([], "address", "AA:BB:CC:DD:EE:FF") == []


def test_address_bytes() -> None:
    assert address_bytes("aa:BB:cc:00:11:22") == bytes.fromhex("aabbcc001122")
    assert address_bytes("not-a-mac") == b"not-a-mac"
    assert address_bytes("zz:zz:zz:zz:zz:zz") == b"zz:zz:zz:zz:zz:zz"


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="identity rule"):
        parse_identity_rule("uuid")
    with pytest.raises(ValueError, match="identity rule"):
        to_raw_reads(MIXED, "mac", "AA:BB:CC:DD:EE:FF")  # type: ignore[arg-type]


def test_same_identity_twice_in_one_advert_is_one_read() -> None:
    records = MIXED + MIXED
    assert len(to_raw_reads(records, "ibeacon", "AA:BB:CC:DD:EE:FF")) == 1


# -- fuzzing -----------------------------------------------------------------------------------

company_ids = st.sampled_from([APPLE_COMPANY_ID, 0x0118, 0x0FFE]) | st.integers(0, 0xFFFF)
payloads = st.binary(max_size=40)
prefixed = st.tuples(
    st.sampled_from([b"", b"\x02\x15", b"\xbe\xac", b"\x00", b"\x10", b"\x20", b"\x20\x00"]),
    payloads,
).map(lambda t: t[0] + t[1])
junk = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.floats(), payloads)


@given(
    mfg=st.dictionaries(company_ids, prefixed, max_size=4),
    svc=st.dictionaries(
        st.sampled_from([EDDYSTONE_UUID, EDDYSTONE_UUID.upper(), "0000fe9f-0000-1000-8000"])
        | st.text(max_size=8),
        prefixed,
        max_size=3,
    ),
    rssi=st.one_of(st.none(), st.integers(-300, 300)),
    offset=st.integers(0, 30),
    length=st.integers(1, 30),
)
def test_random_bytes_never_raise(
    mfg: dict[int, bytes], svc: dict[str, bytes], rssi: int | None, offset: int, length: int
) -> None:
    band = WristbandFormat(company_id=0x0FFE, id_offset=offset, id_length=length, name="fuzz")
    stats = AdvertStats()
    records = decode_advert(mfg, svc, rssi, wristbands=[band], stats=stats)
    assert stats.records == len(records)
    assert stats.adverts == 1
    for rule in IDENTITY_RULES:
        for read in to_raw_reads(records, parse_identity_rule(rule), "AA:BB:CC:DD:EE:FF"):
            assert read.protocol == "ble" and read.tag_id


@given(
    mfg=st.dictionaries(junk, junk, max_size=3),
    svc=st.dictionaries(junk, junk, max_size=3),
    rssi=junk,
)
def test_wrong_types_never_raise(mfg: dict, svc: dict, rssi: object) -> None:
    stats = AdvertStats()
    decode_advert(mfg, svc, rssi, stats=stats)  # type: ignore[arg-type]
    assert stats.adverts == 1
