"""The bring-up decoder: bytes or advert lines in, JSON lines out, bad frames on stderr."""

from __future__ import annotations

import io
import json
from pathlib import Path

from firmware_bridge import em4100, uhf_m100
from firmware_bridge.decode_tool import run_decode
from simulators.uhf_reader import VirtualUhfReader

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "shared" / "vectors" / "readers.json").read_text()
)


def decode(protocol: str, data: bytes, **kw: object) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_decode(protocol, io.BytesIO(data), out, err, **kw)  # type: ignore[arg-type]
    return status, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_em4100_vector_to_json_line() -> None:
    vec = VECTORS["em4100"][0]
    status, lines, err = decode("em4100", bytes.fromhex(vec["hex"]))
    assert status == 0
    assert lines == [{"protocol": "em4100", "tag_id": vec["data"].lower(), "rssi_dbm": None}]
    assert "1 frames, 0 bad frames, 0 skipped bytes" in err


def test_uhf_vectors_reads_on_stdout_errors_on_stderr() -> None:
    data = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["uhf_m100"])
    status, lines, err = decode("uhf-m100", data)
    inv = VECTORS["uhf_m100"][0]
    assert status == 0
    assert lines == [
        {"protocol": "uhf-m100", "tag_id": inv["epc"].lower(), "rssi_dbm": inv["rssi_dbm"]}
    ]
    assert "UhfError" in err and '"code": 21' in err  # 0x15: no tag


def test_pn532_vectors() -> None:
    data = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["pn532"])
    status, lines, err = decode("pn532", data)
    assert status == 0
    assert lines == [{"protocol": "pn532", "tag_id": "cb98a605", "rssi_dbm": None}]
    assert "Pn532Ack" in err


def test_bad_frames_reported_with_offset_and_skipped() -> None:
    good = em4100.encode(bytes.fromhex("62E3086CED"))
    bad = good[:11] + b"FF" + good[13:]
    status, lines, err = decode("em4100", b"xyz" + bad + good)
    assert status == 0
    assert [line["tag_id"] for line in lines] == ["62e3086ced"]
    bad_lines = [line for line in err.splitlines() if "bad em4100 frame" in line]
    assert bad_lines == ["offset 3: bad em4100 frame: bad checksum"]


def test_unknown_protocol_exit_2_names_the_choices() -> None:
    status, lines, err = decode("mifare", b"")
    assert status == 2 and lines == []
    assert "'mifare'" in err and "uhf-m100" in err


def test_ble_vectors_and_bad_lines() -> None:
    ib, ed = VECTORS["ble"]
    text = "\n".join(
        [
            json.dumps({"manufacturer_data": ib["bleak_manufacturer_data"], "rssi": -61}),
            "this is not json",
            json.dumps({"service_data": ed["bleak_service_data"]}),
            json.dumps({"manufacturer_data": {"76": "zz"}}),
        ]
    )
    status, lines, err = decode("ble", text.encode())
    assert status == 0
    assert [line["kind"] for line in lines] == ["IBeacon", "EddystoneUid"]
    assert lines[0]["major"] == ib["major"] and lines[0]["minor"] == ib["minor"]
    assert lines[0]["rssi_dbm"] == -61 and lines[0]["protocol"] == "ble"
    assert lines[1]["namespace"] == ed["namespace"] and lines[1]["instance"] == ed["instance"]
    assert lines[1]["tag_id"] == ed["namespace"] + ed["instance"]
    assert [e.split(":")[0] for e in err.splitlines()] == ["line 2", "line 4"]


def test_port_mode_polls_a_uhf_reader(tmp_path: Path) -> None:
    epc = bytes.fromhex("E2000017221101441890ABCD")
    with VirtualUhfReader(tmp_path / "ttyUHF0", lambda: [(epc, -48)]) as reader:
        status, lines, err = decode(
            "uhf-m100", b"", port=str(reader.link_path), duration_s=0.6
        )
    assert status == 0
    assert lines and all(
        line == {"protocol": "uhf-m100", "tag_id": epc.hex(), "rssi_dbm": -48.0} for line in lines
    )
    assert any(c.command == uhf_m100.CMD_INVENTORY for c in reader.commands)
    assert "online" in err


def test_port_mode_missing_port_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"
    status, lines, err = decode("em4100", b"", port=str(missing), duration_s=0.2)
    assert status == 1 and lines == []
    assert str(missing) in err and "No such file" in err


# -- finite input: noise, then frames; whatever is held at EOF gets a final attempt ------


def test_pn532_corrupted_ack_then_every_frame_decodes() -> None:
    frames = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["pn532"])
    status, lines, err = decode("pn532", bytes.fromhex("00FF00000000") + frames * 3)
    assert status == 0
    assert [line["tag_id"] for line in lines] == ["cb98a605"] * 3
    assert "1 bad frames" in err


def test_uhf_noise_header_then_every_frame_decodes() -> None:
    inv = next(v for v in VECTORS["uhf_m100"] if v["kind"] == "inventory notification")
    stream = bytes.fromhex("BB027E03FF") + bytes.fromhex(inv["hex"]) * 2
    status, lines, err = decode("uhf-m100", stream)
    assert status == 0
    assert [line["tag_id"] for line in lines] == [inv["epc"].lower()] * 2


def test_frame_held_back_at_eof_gets_a_final_attempt() -> None:
    # The last InListPassiveTarget response lacks its (optional) postamble: at EOF nothing
    # more can come, so it is complete.
    resp = next(v for v in VECTORS["pn532"] if v["kind"].startswith("InListPassive"))
    status, lines, err = decode("pn532", bytes.fromhex(resp["hex"])[:-1])
    assert status == 0
    assert [line["tag_id"] for line in lines] == ["cb98a605"]
    assert "1 frames, 0 bad frames, 0 skipped bytes" in err


def test_truncated_frame_at_eof_is_reported_with_its_offset() -> None:
    inv = next(v for v in VECTORS["uhf_m100"] if v["kind"] == "inventory notification")
    frame = bytes.fromhex(inv["hex"])
    status, lines, err = decode("uhf-m100", frame + frame[:9])
    assert status == 0 and len(lines) == 1
    assert f"offset {len(frame)}: bad uhf-m100 frame: frame truncated at end of input" in err
