"""Every frame of the shared reader vectors decodes through `venue-agent decode` itself
(the command an installer runs), to the values the datasheets give."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "readers.json"


def _vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())


def _decode(protocol: str, data: bytes) -> tuple[list[dict[str, Any]], str, int]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "decode", "--protocol", protocol],
                         input=data, capture_output=True, timeout=60)
    lines = [json.loads(x) for x in out.stdout.decode().splitlines() if x.strip()]
    return lines, out.stderr.decode(), out.returncode


def test_em4100_vectors() -> None:
    for v in _vectors()["em4100"]:
        frame = bytes.fromhex(v["hex"])
        reads, _, rc = _decode("em4100", b"\x00garbage" + frame + frame)
        assert rc == 0
        assert [r["tag_id"].upper() for r in reads] == [v["data"]] * 2
        assert reads[0]["protocol"] == "em4100"


def test_uhf_vectors() -> None:
    vecs = _vectors()["uhf_m100"]
    stream = b"".join(bytes.fromhex(v["hex"]) for v in vecs)
    reads, err, rc = _decode("uhf-m100", stream)
    assert rc == 0
    inv = [v for v in vecs if v["kind"] == "inventory notification"]
    assert [r["tag_id"].upper() for r in reads] == [v["epc"] for v in inv]
    assert [r["rssi_dbm"] for r in reads] == [v["rssi_dbm"] for v in inv]
    assert "UhfError" in err and "\"code\": 21" in err  # 0x15 on stderr, not as a read


def test_pn532_vectors() -> None:
    vecs = _vectors()["pn532"]
    stream = b"".join(bytes.fromhex(v["hex"]) for v in vecs)
    reads, _, rc = _decode("pn532", stream)
    assert rc == 0
    uids = [v["uid"] for v in vecs if "uid" in v]
    assert [r["tag_id"].upper() for r in reads] == uids


def test_ble_vectors() -> None:
    lines = []
    for v in _vectors()["ble"]:
        md = {k: val for k, val in v.get("bleak_manufacturer_data", {}).items()}
        sd = v.get("bleak_service_data", {})
        lines.append(json.dumps({"manufacturer_data": md, "service_data": sd, "rssi": -60}))
    reads, _, rc = _decode("ble", ("\n".join(lines) + "\n").encode())
    assert rc == 0
    text = json.dumps(reads)
    assert b"BlueCharmBeacons".hex() in text.lower() or "bluecharmbeacons" in text.lower()
    assert "12345678901234678901" in text and "000000000001" in text


@pytest.mark.parametrize("protocol", ["em4100", "uhf-m100", "pn532"])
def test_noise_is_reported_not_fatal(protocol: str) -> None:
    reads, err, rc = _decode(protocol, bytes(range(256)) * 8)
    assert rc == 0 and reads == []


# -- noise that used to jam a reader, through the installed command ---------------------


def _venue_agent() -> str:
    """The `venue-agent` console script installed beside this interpreter (pip install -e)."""
    found = shutil.which("venue-agent", path=str(Path(sys.executable).parent))
    assert found, "venue-agent is not installed in this environment: run `make deps-test`"
    return found


def _decode_installed(protocol: str, data: bytes) -> tuple[list[dict[str, Any]], str, int]:
    out = subprocess.run([_venue_agent(), "decode", "--protocol", protocol],
                         input=data, capture_output=True, timeout=60)
    lines = [json.loads(x) for x in out.stdout.decode().splitlines() if x.strip()]
    return lines, out.stderr.decode(), out.returncode


def test_installed_command_pn532_corrupted_ack_then_frames() -> None:
    vecs = _vectors()["pn532"]
    frames = b"".join(bytes.fromhex(v["hex"]) for v in vecs)
    reads, err, rc = _decode_installed("pn532", bytes.fromhex("00FF00000000") + frames * 2)
    assert rc == 0, err
    uids = [v["uid"] for v in vecs if "uid" in v]
    assert [r["tag_id"].upper() for r in reads] == uids * 2
    assert "Traceback" not in err


def test_installed_command_uhf_noise_header_then_frames() -> None:
    vecs = _vectors()["uhf_m100"]
    inv = next(v for v in vecs if v["kind"] == "inventory notification")
    stream = bytes.fromhex("BB027E03FF") + b"".join(bytes.fromhex(v["hex"]) for v in vecs)
    reads, err, rc = _decode_installed("uhf-m100", stream)
    assert rc == 0, err
    assert [r["tag_id"].upper() for r in reads] == [inv["epc"]]
    assert [r["rssi_dbm"] for r in reads] == [inv["rssi_dbm"]]


def test_installed_command_drains_at_eof() -> None:
    # A plausible header (PL 200) would hold the whole frame behind it until 200 more bytes
    # came; at EOF none will, so the frame must still come out.
    vecs = _vectors()["uhf_m100"]
    inv = next(v for v in vecs if v["kind"] == "inventory notification")
    reads, err, rc = _decode_installed(
        "uhf-m100", bytes.fromhex("BB013900C8") + bytes.fromhex(inv["hex"]))
    assert rc == 0, err
    assert [r["tag_id"].upper() for r in reads] == [inv["epc"]]
    # A last frame without its optional postamble is complete once the input has ended.
    resp = next(v for v in _vectors()["pn532"] if v["kind"].startswith("InListPassive"))
    reads, err, rc = _decode_installed("pn532", bytes.fromhex(resp["hex"])[:-1])
    assert rc == 0, err
    assert [r["tag_id"].upper() for r in reads] == [resp["uid"]]
