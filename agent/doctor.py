"""`venue-agent doctor --config F`: checks an installed gateway, one line per check.

It opens nothing for long and changes nothing but a probe file in the storage directory:
safe to run beside a running agent (serial ports are only checked for existence and
permissions, since opening a port the agent holds would steal its bytes).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TextIO

from agent.brokerurl import parse_broker_url
from agent.config import Config, tcp_reader_address


def _check_dir(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".doctor-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        return f"not writable ({e})"
    return None


def run_doctor(cfg: Config, out: TextIO) -> int:
    problems = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal problems
        problems += 0 if ok else 1
        print(f"[{'ok' if ok else 'FAIL'}] {what}{': ' + detail if detail else ''}", file=out)

    report(True, f"config {cfg.source}", f"{len(cfg.readers)} readers, {len(cfg.zones)} zones")
    err = _check_dir(cfg.db_path.parent)
    report(err is None, f"storage directory {cfg.db_path.parent}", err or "")
    err = _check_dir(cfg.numba_cache_dir)
    report(err is None, f"numba cache {cfg.numba_cache_dir}",
           err or "writable (warm starts use it)")
    key = cfg.key_path
    report(not key.exists() or os.access(key, os.R_OK), f"pseudonym key {key}",
           "present" if key.exists() else "will be created on first start")
    for r in cfg.readers:
        if r.protocol == "ble":
            adapter = r.adapter or "hci0"
            present = Path("/sys/class/bluetooth", adapter).exists()
            report(present, f"reader {r.id} (ble)",
                   f"adapter {adapter} {'present' if present else 'not found'}")
        elif r.port.startswith("/"):
            p = Path(r.port)
            if not p.exists():
                report(False, f"reader {r.id} ({r.protocol})", f"serial port {p} not found "
                       "(plugged in? udev rule? see docs/readers.md)")
            elif not os.access(p, os.R_OK | os.W_OK):
                report(False, f"reader {r.id} ({r.protocol})",
                       f"no read/write permission on {p} (add the agent's user to 'dialout')")
            else:
                report(True, f"reader {r.id} ({r.protocol})", f"{p} present")
        elif r.port.startswith(("socket://", "rfc2217://")):
            try:
                address = tcp_reader_address(r.port)
            except ValueError:
                address = None
            ok, detail = _tcp(*address) if address else (False, "expected host:port 1..65535")
            report(ok, f"reader {r.id} ({r.protocol}) {r.port}", detail)
        else:
            report(True, f"reader {r.id} ({r.protocol})", f"{r.port} (not checked)")
    b = cfg.broker
    if b.password_file:
        readable = os.access(b.password_file, os.R_OK) and Path(b.password_file).is_file()
        report(readable, f"broker password file {b.password_file}",
               "readable" if readable else "missing or not readable by this user")
    if b.ca_file:
        present = Path(b.ca_file).is_file()
        report(present, f"broker CA file {b.ca_file}", "present" if present else "not found")
    for url in b.urls:
        try:
            broker = parse_broker_url(url)
        except ValueError as e:
            report(False, f"broker {url}", str(e))
            continue
        ok, detail = _tcp(broker.host, broker.port)
        report(ok, f"broker {url}", detail)
    print(f"{problems} problem(s)", file=out)
    return 0 if problems == 0 else 1


def _tcp(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True, "reachable"
    except (OSError, OverflowError, ValueError, UnicodeError) as e:
        return False, f"unreachable ({e})"
