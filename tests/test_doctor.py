"""`venue-agent doctor`: one line per check, failures named, exit 1 when anything fails."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from agent.config import parse_config
from agent.doctor import run_doctor


def _cfg(tmp_path: Path, port: str, broker_port: int) -> str:
    return f"""
[venue]
id = "v"
[gateway]
id = "g"
[broker]
url = "mqtt://127.0.0.1:{broker_port}"
[storage]
path = "{tmp_path / 'state' / 'agent.db'}"
[[zones]]
id = "q"
kind = "queue"
[[readers]]
id = "r1"
protocol = "em4100"
port = "{port}"
zone = "q"
role = "entry"
"""


def test_doctor_names_a_missing_port_and_a_down_broker(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    cfg = parse_config(_cfg(tmp_path, str(tmp_path / "ttyUSB9"), free), "gw.toml")
    out = io.StringIO()
    assert run_doctor(cfg, out) == 1
    text = out.getvalue()
    assert "[FAIL] reader r1 (em4100): serial port" in text and "ttyUSB9 not found" in text
    assert f"[FAIL] broker mqtt://127.0.0.1:{free}" in text
    assert "[ok] storage directory" in text
    assert "2 problem(s)" in text


def test_doctor_passes_a_healthy_gateway(tmp_path: Path) -> None:
    tty = tmp_path / "tty"
    tty.write_bytes(b"")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cfg = parse_config(_cfg(tmp_path, str(tty), srv.getsockname()[1]), "gw.toml")
        out = io.StringIO()
        assert run_doctor(cfg, out) == 0, out.getvalue()
    assert "0 problem(s)" in out.getvalue()
