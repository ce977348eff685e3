"""Soak: SIGKILL the gateway at random points, over and over, and lose nothing committed.

A real Mosquitto, two EM4100 readers on PTYs fed continuously by a crowd that swells and
shrinks (so moments open and resolve all the time), and `venue-agent run` as its own process,
killed with SIGKILL a random 0.3-4 s after its first tick (so kills land mid-tick, mid-commit,
mid-publish and mid-checkpoint by chance, not by hooks) and started again, ``SOAK_CYCLES``
times. After every kill the database must pass ``PRAGMA integrity_check``. At the end the agent
is stopped cleanly, and an independent subscriber must have received every ``seq`` of the
guaranteed stream the database ever committed: none lost, no gap.

``make soak`` runs the full count (``SOAK_CYCLES``, default 1,000); ``make test`` runs a bounded
slice of the same code (``test_soak_bounded``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge import em4100
from tests.agent_process import start_agent
from tests.mqtt_helpers import Collector

BOUNDED_CYCLES = 4


class Crowd:
    """Feeds a presence reader: 30 bands for a while, then 4, again and again, so the area's
    capacity (20) is crossed both ways every ~20 s."""

    def __init__(self, readers: list[Any]) -> None:
        self.readers = readers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-crowd", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            crowded = int((time.monotonic() - t0) // 10) % 2 == 0
            n = 30 if crowded else 4
            for r in self.readers:
                for i in range(n):
                    r.send(bytes([0x30, 0, 0, 0, i]))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _config(wd: Path, ports: dict[str, Path], broker_url: str) -> str:
    return f"""
[venue]
id = "soak"
[gateway]
id = "gw-soak"
tick_s = 0.5
health_interval_s = 2.0
[broker]
url = "{broker_url}"
[storage]
path = "{wd / 'agent.db'}"
checkpoint_interval_s = 1.0
[moments]
hold_s = 0
cooldown_s = 0
[[readers]]
id = "hall-a"
protocol = "em4100"
port = "{ports['hall-a']}"
zone = "hall"
role = "presence"
[[readers]]
id = "hall-b"
protocol = "em4100"
port = "{ports['hall-b']}"
zone = "hall"
role = "presence"
[[zones]]
id = "hall"
kind = "area"
capacity = 20
absence_timeout_s = 3
"""


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def _committed_seq(db: Path) -> int:
    """The last ``seq`` the guaranteed stream ever committed (the outbox's counter)."""
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT last_seq FROM outbox_seq WHERE stream = 'guaranteed'"
                          ).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def _start_running(cfg: Path, log: Path) -> Any:
    """Start the agent and return once it has run its first tick (a kill during start-up
    would test only Python's import machinery)."""
    ticks_before = log.read_text().count("first tick") if log.exists() else 0
    proc = start_agent(cfg, log)
    deadline = time.monotonic() + 180
    while log.read_text().count("first tick") == ticks_before:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.05)
    return proc


def soak(wd: Path, cycles: int, seed: int = 1) -> dict[str, Any]:
    from agent.broker import start_broker
    from simulators.pty_reader import VirtualSerialReader

    rng = random.Random(seed)
    readers = {rid: VirtualSerialReader(wd / rid, encode=em4100.encode)
               for rid in ("hall-a", "hall-b")}
    crowd = Crowd(list(readers.values()))
    figures: dict[str, Any] = {"cycles": cycles, "integrity_failures": 0, "restores": 0}
    with start_broker(prefer="mosquitto", workdir=wd / "broker") as broker:
        cfg = wd / "gateway.toml"
        cfg.write_text(_config(wd, {k: r.link_path for k, r in readers.items()}, broker.url))
        guaranteed = Collector(broker.url, "venue/soak/#")
        log = wd / "agent.log"
        crowd.start()
        started = time.monotonic()
        try:
            for _ in range(cycles):
                proc = _start_running(cfg, log)
                time.sleep(rng.uniform(0.3, 4.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                if _integrity(wd / "agent.db") != "ok":
                    figures["integrity_failures"] += 1
            final = _start_running(cfg, log)
            time.sleep(3.0)  # deliver what the last cycles left behind
            final.send_signal(signal.SIGTERM)
            rc = final.wait(30)
        finally:
            crowd.stop()
            for r in readers.values():
                r.close()
        committed = _committed_seq(wd / "agent.db")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = {json.loads(m.payload).get("seq") for m in guaranteed.messages
                   if m.topic.split("/")[2] in ("moment", "dispatch", "nudge")}
            if committed and set(range(1, committed + 1)) <= got:
                break
            time.sleep(0.5)
        guaranteed.stop()
    text = log.read_text()
    figures.update(
        rc=rc, committed=committed,
        lost=sorted(set(range(1, committed + 1)) - got),
        received=len(got), duplicates_or_unknown=sorted(s for s in got
                                                        if s is None or s > committed),
        restores=text.count("restored checkpoint"),
        minutes=round((time.monotonic() - started) / 60.0, 1),
        tracebacks=text.count("Traceback"), log_tail=text[-3000:])
    return figures


def _check(f: dict[str, Any]) -> None:
    print("soak:", json.dumps({k: v for k, v in f.items() if k not in ("lost", "log_tail")}),
          "lost:", len(f["lost"]))
    assert f["rc"] == 0, f["log_tail"]
    assert f["integrity_failures"] == 0
    assert f["committed"] > 0  # moments really were produced
    assert f["lost"] == [], f"committed but never delivered: seq {f['lost'][:20]}"
    assert f["duplicates_or_unknown"] == []
    assert f["tracebacks"] == 0, f["log_tail"]
    assert f["restores"] >= f["cycles"] // 2  # most restarts resumed from a checkpoint


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_soak_bounded(tmp_path: Path) -> None:
    _check(soak(tmp_path, BOUNDED_CYCLES))


@pytest.mark.soak
@pytest.mark.timeout(0)  # 1,000 cycles take one to two hours
def test_soak_full(tmp_path: Path) -> None:
    _check(soak(tmp_path, int(os.environ.get("SOAK_CYCLES", "1000"))))
