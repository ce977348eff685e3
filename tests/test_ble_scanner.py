"""BleScanner on real bleak, scanning a BlueZ mocked by python-dbusmock on a private bus."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbusmock.testcase import BusType, PrivateDBus

from firmware_bridge.ble_adverts import APPLE_COMPANY_ID, EDDYSTONE_UUID, WristbandFormat
from firmware_bridge.ble_scanner import STOPPED, BleScanner, passive_or_patterns
from firmware_bridge.records import RawRead
from simulators.virtual_bluez import VirtualBluez

pytestmark = pytest.mark.e2e

BAND = WristbandFormat(company_id=0x0FFE, id_offset=1, id_length=4, name="test-band")
BEACON_UUID = uuid.UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
IBEACON = b"\x02\x15" + BEACON_UUID.bytes + struct.pack(">HHb", 7, 42, -59)
EDDY_NS, EDDY_INST = bytes(range(10)), bytes.fromhex("0000000000ab")
EDDYSTONE = b"\x00\xe3" + EDDY_NS + EDDY_INST + b"\x00\x00"
WRISTBAND = b"\x01" + bytes.fromhex("c0ffee42") + b"\x00\x00"


@pytest.fixture(scope="module")
def bluez() -> Iterator[VirtualBluez]:
    with VirtualBluez() as vb:
        vb.add_adapter("hci0")
        pids = vb.pids
        yield vb
    # The bus daemon and the mock must be gone: nothing spawned may outlive the module.
    deadline = time.monotonic() + 5
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"process {pid} outlived the test module"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited but not been reaped.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Recorder:
    """Collects what the scanner hands over, and on which thread."""

    reads: list[tuple[str, float, RawRead]] = field(default_factory=list)
    states: list[tuple[str, bool, str | None]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def on_reads(self, reader_id: str, ts: float, reads: list[RawRead]) -> None:
        self.threads.add(threading.get_ident())
        self.reads.extend((reader_id, ts, r) for r in reads)

    def on_state(self, reader_id: str, online: bool, message: str | None) -> None:
        self.states.append((reader_id, online, message))


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    # A fresh loop per test: bleak keeps one BlueZ connection per event loop.
    asyncio.run(asyncio.wait_for(coro(), 20))  # type: ignore[arg-type]


def scanner(rec: Recorder, rule: str, **kw: object) -> BleScanner:
    return BleScanner(
        "gate-ble",
        rec.on_reads,
        rule=rule,
        wristbands=[BAND],
        adapter=kw.pop("adapter", "hci0"),  # type: ignore[arg-type]
        on_state=rec.on_state,
        clock=lambda: 1_700_000_000.5,
        **kw,  # type: ignore[arg-type]
    )


def advertise_venue(bluez: VirtualBluez, prefix: str) -> None:
    """A phone beacon, an Eddystone beacon and a wristband, each at its own RSSI."""
    bluez.advertise(f"{prefix}:01", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-61)
    bluez.advertise(f"{prefix}:02", {}, {EDDYSTONE_UUID: EDDYSTONE}, rssi=-72)
    bluez.advertise(f"{prefix}:03", {BAND.company_id: WRISTBAND}, {}, rssi=-83)


@pytest.mark.parametrize(
    ("rule", "prefix", "tag_id", "rssi"),
    [
        ("ibeacon", "D1:00:00:00:00", BEACON_UUID.bytes + b"\x00\x07\x00\x2a", -61.0),
        ("eddystone-uid", "D2:00:00:00:00", EDDY_NS + EDDY_INST, -72.0),
        ("wristband", "D3:00:00:00:00", bytes.fromhex("c0ffee42"), -83.0),
        ("address", "D4:00:00:00:00", bytes.fromhex("d40000000003"), -83.0),
    ],
)
def test_adverts_arrive_as_raw_reads(
    bluez: VirtualBluez, rule: str, prefix: str, tag_id: bytes, rssi: float
) -> None:
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, rule)
        await s.start()
        advertise_venue(bluez, prefix)
        expected = 3 if rule == "address" else 1
        await wait_for(lambda: len(rec.reads) >= expected and s.health().adverts >= 3)
        await asyncio.sleep(0.1)  # anything extra would show up here
        await s.stop()
        health = s.health()
        assert health.adverts == 3
        assert health.decoded_reads == expected
        assert health.last_read_ts == 1_700_000_000.5
        assert rec.threads == {threading.get_ident()}  # called on the loop thread

    run(body)
    wanted = ("gate-ble", 1_700_000_000.5, RawRead("ble", tag_id, rssi))
    assert wanted in rec.reads
    if rule != "address":
        assert rec.reads == [wanted]
    assert rec.states == [("gate-ble", True, None), ("gate-ble", False, STOPPED)]


def test_malformed_advert_is_counted_and_scanning_goes_on(bluez: VirtualBluez) -> None:
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, "ibeacon")
        await s.start()
        bluez.advertise("E1:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON[:-3]}, {}, rssi=-50)
        bluez.advertise("E1:00:00:00:00:02", {}, {EDDYSTONE_UUID: b"\x10\xeb\x09"}, rssi=-50)
        bluez.advertise("E1:00:00:00:00:03", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-49)
        await wait_for(lambda: len(rec.reads) == 1)
        health = s.health()
        assert health.online
        assert health.adverts == 3
        assert health.malformed == 2
        await s.stop()

    run(body)
    assert rec.reads[0][2].rssi_dbm == -49.0


def test_repeated_identical_adverts_are_all_delivered(bluez: VirtualBluez) -> None:
    rec = Recorder()
    filters_before = len(bluez.method_calls("hci0", "SetDiscoveryFilter"))

    async def body() -> None:
        s = scanner(rec, "wristband")
        await s.start()
        for _ in range(25):
            bluez.advertise("E2:00:00:00:00:01", {BAND.company_id: WRISTBAND}, {}, rssi=-70)
        await wait_for(lambda: len(rec.reads) >= 25)
        await asyncio.sleep(0.1)
        await s.stop()

    run(body)
    assert len(rec.reads) == 25
    assert {r[2] for r in rec.reads} == {RawRead("ble", bytes.fromhex("c0ffee42"), -70.0)}
    # The mock does not implement duplicate filtering, so what can be checked honestly is
    # that the scanner asked BlueZ to turn it off when it set up discovery.
    requested = [dict(args[0]) for args in bluez.method_calls("hci0", "SetDiscoveryFilter")]
    requested = requested[filters_before:]
    assert any(f.get("DuplicateData") is not None and not f["DuplicateData"] for f in requested)
    assert all(bool(f.get("DuplicateData", False)) is False for f in requested)


def test_missing_adapter_reports_then_recovers(bluez: VirtualBluez) -> None:
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, "ibeacon", adapter="hci7", retry_initial_s=0.05, retry_max_s=0.2)
        await s.start()  # must not raise
        assert not s.health().online
        await asyncio.sleep(0.3)  # several retries: still one report, no crash
        assert len(rec.states) == 1
        bluez.add_adapter("hci7")
        try:
            await wait_for(lambda: s.health().online)
            bluez.advertise(
                "E3:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON}, {}, -58, adapter="hci7"
            )
            await wait_for(lambda: len(rec.reads) == 1)
            await s.stop()
        finally:
            bluez.remove_adapter("hci7")

    run(body)
    (reader, online, message), *rest = rec.states
    assert (reader, online) == ("gate-ble", False)
    assert message is not None and "'hci7'" in message and "not found" in message
    assert rest == [("gate-ble", True, None), ("gate-ble", False, STOPPED)]


def test_bluez_not_running_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    env = BusType.SYSTEM.environ[0]
    monkeypatch.setenv(env, os.environ.get(env, ""))  # restored after the private bus
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, "ibeacon", retry_initial_s=0.05)
        await s.start()
        await asyncio.sleep(0.15)
        assert not s.health().online
        await s.stop()

    with PrivateDBus(BusType.SYSTEM):  # a system bus on which nobody owns org.bluez
        run(body)
    message = rec.states[0][2]
    assert message is not None and "'hci0'" in message and "bluetoothd" in message


def test_no_system_bus_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BusType.SYSTEM.environ[0], f"unix:path={tmp_path / 'no-bus'}")
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, "ibeacon", adapter=None, retry_initial_s=0.05)
        await s.start()
        await s.stop()

    run(body)
    message = rec.states[0][2]
    assert message is not None and "default adapter" in message and "D-Bus" in message


def test_watchdog_restarts_a_quiet_scan(bluez: VirtualBluez) -> None:
    rec = Recorder()
    starts_before = len(bluez.method_calls("hci0", "StartDiscovery"))

    async def body() -> None:
        s = scanner(rec, "ibeacon", watchdog_s=0.2)
        await s.start()
        await wait_for(lambda: s.health().restarts >= 2)
        # After the restarts the scan still delivers, and adverts keep the watchdog quiet.
        bluez.advertise("E4:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-66)
        await wait_for(lambda: len(rec.reads) == 1)
        await s.stop()

    run(body)
    assert len(bluez.method_calls("hci0", "StartDiscovery")) - starts_before >= 3
    # A watchdog restart is not an outage: online was reported once, then the stop.
    assert rec.states == [("gate-ble", True, None), ("gate-ble", False, STOPPED)]


def test_adverts_reset_the_watchdog(bluez: VirtualBluez) -> None:
    rec = Recorder()

    async def body() -> None:
        s = scanner(rec, "ibeacon", watchdog_s=0.4)
        await s.start()
        for _ in range(8):  # 0.8 s of steady traffic, one advert every 0.1 s
            bluez.advertise("E5:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-66)
            await asyncio.sleep(0.1)
        assert s.health().restarts == 0
        await s.stop()

    run(body)
    assert len(rec.reads) == 8


def test_on_reads_raising_is_contained(bluez: VirtualBluez) -> None:
    calls = 0

    def bad_consumer(reader_id: str, ts: float, reads: list[RawRead]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("queue full")

    async def body() -> None:
        s = BleScanner("gate-ble", bad_consumer, rule="ibeacon", adapter="hci0")
        await s.start()
        bluez.advertise("E6:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-66)
        bluez.advertise("E6:00:00:00:00:01", {APPLE_COMPANY_ID: IBEACON}, {}, rssi=-65)
        await wait_for(lambda: s.health().handoff_errors == 2)
        assert s.health().online
        await s.stop()

    run(body)
    assert calls == 2


def test_passive_scanning_registers_a_monitor(bluez: VirtualBluez) -> None:
    rec = Recorder()
    monitors_before = len(bluez.method_calls("hci0", "RegisterMonitor"))

    async def body() -> None:
        s = scanner(rec, "eddystone-uid", scanning_mode="passive")
        await s.start()
        bluez.advertise("E7:00:00:00:00:01", {}, {EDDYSTONE_UUID: EDDYSTONE}, rssi=-77)
        await wait_for(lambda: len(rec.reads) == 1)
        await s.stop()

    run(body)
    assert len(bluez.method_calls("hci0", "RegisterMonitor")) == monitors_before + 1
    assert rec.reads[0][2] == RawRead("ble", EDDY_NS + EDDY_INST, -77.0)


def test_passive_patterns_cover_configured_formats() -> None:
    patterns = {(p[0], int(p[1]), bytes(p[2])) for p in passive_or_patterns([BAND, BAND])}
    assert patterns == {
        (0, 0xFF, b"\x4c\x00\x02\x15"),  # iBeacon: Apple id little-endian, then 02 15
        (2, 0xFF, b"\xbe\xac"),  # AltBeacon code after any company id
        (0, 0x16, b"\xaa\xfe"),  # Eddystone service data, UUID 0xFEAA little-endian
        (0, 0xFF, b"\xfe\x0f"),  # the configured wristband company
    }


def test_bad_config_is_refused_before_start() -> None:
    with pytest.raises(ValueError, match="identity rule"):
        BleScanner("r", lambda *_: None, rule="mac")
    with pytest.raises(ValueError, match="scanning_mode"):
        mode: Any = "loud"
        BleScanner("r", lambda *_: None, rule="ibeacon", scanning_mode=mode)
