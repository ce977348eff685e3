"""The readers venues install, end to end on real stacks.

A UHF M100 module and a PN532 (virtual, answering the agent's commands with exact bytes over
pseudo-terminals) and BLE beacons (real bleak scanning a BlueZ mocked on a private D-Bus)
feed the agent running as its own process; zone state on a real Mosquitto reflects them.
Then the UHF reader is unplugged and plugged back: the agent logs it, publishes
`reader_down`, reconnects and resumes without a restart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.agent_process import start_agent
from tests.mqtt_helpers import Collector, poll_until

pytestmark = pytest.mark.e2e

UHF_EPCS = [bytes.fromhex(f"30751FEB705C5904E3D50D{i:02X}") for i in range(5)]
PN532_UIDS = [bytes.fromhex("CB98A605"), bytes.fromhex("04A1B2C3D4E5F6")]
BEACONS = {f"C0:FF:EE:00:00:0{i}": bytes.fromhex(
    "0215" + "426c7565436861726d426561636f6e73" + f"0efe{i:04x}" + "c5") for i in range(1, 4)}


def _config(wd: Path, broker_url: str, uhf: Path, nfc: Path) -> Path:
    data: dict[str, Any] = {
        "venue": {"id": "test-park"},
        "gateway": {"id": "gw-readers", "health_interval_s": 1.0},
        "broker": {"url": broker_url},
        "storage": {"path": str(wd / "agent.db")},
        "moments": {"reader_down_after_s": 1.0, "hold_s": 0.0},
        "zones": [
            {"id": "uhf-gate", "kind": "area", "absence_timeout_s": 3.0},
            {"id": "nfc-kiosk", "kind": "area", "absence_timeout_s": 10.0},
            {"id": "ble-lounge", "kind": "area", "absence_timeout_s": 5.0},
        ],
        "readers": [
            {"id": "uhf-1", "protocol": "uhf-m100", "port": str(uhf), "zone": "uhf-gate",
             "poll_interval_s": 0.1},
            {"id": "nfc-1", "protocol": "pn532", "port": str(nfc), "zone": "nfc-kiosk",
             "poll_interval_s": 0.1},
            {"id": "ble-1", "protocol": "ble", "adapter": "hci0", "zone": "ble-lounge",
             "identity": "ibeacon"},
        ],
    }
    path = wd / "gateway.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _latest(collector: Collector, topic: str) -> dict[str, Any] | None:
    msgs = collector.on(topic)
    return json.loads(msgs[-1].payload) if msgs else None


def test_uhf_pn532_and_ble_feed_the_agent_and_a_reader_can_be_replugged(
        tmp_path: Path) -> None:
    from agent.broker import start_broker
    from simulators.pn532_reader import VirtualPn532Reader
    from simulators.uhf_reader import VirtualUhfReader
    from simulators.virtual_bluez import VirtualBluez

    uhf_field: list[tuple[bytes, int]] = [(epc, -55 - i) for i, epc in enumerate(UHF_EPCS)]
    # A touch point sees one card at a time: the two guests tap in turn.
    nfc_field: list[bytes] = [PN532_UIDS[0]]
    stop_adverts = threading.Event()
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker, \
            VirtualBluez() as bluez, \
            VirtualUhfReader(tmp_path / "dev" / "uhf-1", lambda: list(uhf_field)) as uhf, \
            VirtualPn532Reader(tmp_path / "dev" / "nfc-1", lambda: list(nfc_field)):
        bluez.add_adapter("hci0")

        def adverts() -> None:
            while not stop_adverts.is_set():
                for addr, body in BEACONS.items():
                    bluez.advertise(addr, {0x004C: body}, {}, rssi=-60)
                nfc_field[0] = PN532_UIDS[1] if nfc_field[0] == PN532_UIDS[0] else PN532_UIDS[0]
                stop_adverts.wait(0.3)

        cfg = _config(tmp_path, broker.url, uhf.link_path, tmp_path / "dev" / "nfc-1")
        collector = Collector(broker.url, "venue/#")
        log_path = tmp_path / "agent.log"
        proc = start_agent(cfg, log_path, "--log-level", "info",
                           DBUS_SYSTEM_BUS_ADDRESS=bluez.bus_address)
        ticker = threading.Thread(target=adverts, daemon=True)
        ticker.start()
        try:
            prefix = "venue/test-park/zone"

            def occupancy(zone: str) -> float | None:
                st = _latest(collector, f"{prefix}/{zone}/state")
                return None if st is None else st["occupancy"]

            ok = poll_until(lambda: occupancy("uhf-gate") == 5 and occupancy("nfc-kiosk") == 2
                       and occupancy("ble-lounge") == 3, 60)
            assert ok, (occupancy("uhf-gate"), occupancy("nfc-kiosk"), occupancy("ble-lounge"),
                        log_path.read_text()[-3000:])

            # Tags leave the UHF field: occupancy falls after the absence timeout.
            del uhf_field[3:]
            assert poll_until(lambda: occupancy("uhf-gate") == 3, 15), occupancy("uhf-gate")

            # Unplug the UHF reader: logged, reader_down opened, and no restart needed.
            uhf.unplug()
            down_topic = "venue/test-park/moment/uhf-gate/reader_down"
            assert poll_until(lambda: any(json.loads(m.payload)["status"] == "opened"
                                     for m in collector.on(down_topic)), 15)
            opened = json.loads(collector.on(down_topic)[0].payload)
            assert opened["reader"] == "uhf-1" and opened["error"]
            dispatch = [json.loads(m.payload) for m in collector.on(
                "venue/test-park/dispatch/technical")]
            assert any(d["kind"] == "reader_down" and d["reader"] == "uhf-1" for d in dispatch)

            t_replug = time.monotonic()
            uhf.replug()
            assert poll_until(lambda: any(json.loads(m.payload)["status"] == "resolved"
                                     for m in collector.on(down_topic)), 10)
            reconnect_s = time.monotonic() - t_replug
            assert reconnect_s <= 5.0, reconnect_s
            print(f"UHF reader back online {reconnect_s:.2f} s after replug")

            # Reads resume on the same process: health shows the reader online and reading.
            def uhf_reads() -> int:
                h = _latest(collector, "venue/test-park/gateway/gw-readers/health")
                return -1 if h is None else int(h["readers"]["uhf-1"]["reads"])

            before = uhf_reads()
            assert poll_until(lambda: uhf_reads() > before + 5, 10)
            assert proc.poll() is None, "the agent restarted or died"
            assert occupancy("uhf-gate") == 3
        finally:
            stop_adverts.set()
            ticker.join(5)
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = -9
            collector.stop()
        log_text = log_path.read_text()
        assert rc == 0, log_text[-3000:]
        assert "reader uhf-1: offline" in log_text and "reader uhf-1: online" in log_text
        # no raw identifier in anything published
        everything = b"".join(m.payload for m in collector.messages).lower()
        for raw in [e.hex().encode() for e in UHF_EPCS] + [u.hex().encode() for u in PN532_UIDS]:
            assert raw not in everything
