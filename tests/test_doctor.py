"""`venue-agent doctor`: one line per check, failures named, exit 1 when anything fails."""

from __future__ import annotations

import io
import socket
from dataclasses import replace
from pathlib import Path

from agent.config import BrokerConfig, parse_config
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


def test_doctor_reports_bad_urls_instead_of_crashing(tmp_path: Path) -> None:
    # Configs built in code skip parse_config's checks; doctor still must not raise.
    cfg = parse_config(_cfg(tmp_path, "socket://127.0.0.1:1", 1), "gw.toml")
    for url in ("mqtt://h:99999", "mqtt://u@h", "mqtt://h h"):
        bad = replace(cfg, broker=BrokerConfig(url=url),
                      readers=(replace(cfg.readers[0], port="socket://h:abc"),))
        out = io.StringIO()
        assert run_doctor(bad, out) == 1
        text = out.getvalue()
        assert f"[FAIL] broker {url}: " in text and "reader r1" in text


def test_doctor_tries_every_broker_of_a_failover_list(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        up = srv.getsockname()[1]
        text = _cfg(tmp_path, str(tmp_path / "tty"), up).replace(
            f'url = "mqtt://127.0.0.1:{up}"',
            f'url = ["mqtt://127.0.0.1:{up}", "mqtt://127.0.0.1:{free}"]')
        (tmp_path / "tty").write_bytes(b"")
        out = io.StringIO()
        assert run_doctor(parse_config(text, "gw.toml"), out) == 1
    assert f"[ok] broker mqtt://127.0.0.1:{up}" in out.getvalue()
    assert f"[FAIL] broker mqtt://127.0.0.1:{free}" in out.getvalue()


def test_doctor_checks_the_password_file_is_readable(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    text = _cfg(tmp_path, str(tmp_path / "tty"), 1).replace(
        "[storage]", f'username = "gw"\npassword_file = "{pw}"\n[storage]')
    cfg = parse_config(text, "gw.toml")
    out = io.StringIO()
    run_doctor(cfg, out)
    assert f"[ok] broker password file {pw}" in out.getvalue()
    pw.unlink()
    out = io.StringIO()
    run_doctor(cfg, out)
    assert f"[FAIL] broker password file {pw}" in out.getvalue()
