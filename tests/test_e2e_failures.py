"""The agent process under bad conditions: each gives a clear message and loses nothing.

- a missing serial port: named in the log, `reader_down` published, the agent keeps running;
- an unreachable broker: named in the log, the agent keeps running and buffers in SQLite;
- a power cut (SIGKILL) while buffering, then a restart with the broker back: everything
  buffered is delivered and the guaranteed stream's `seq` carries on without a gap.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import tomli_w

from agent.broker import free_port, start_broker
from tests.agent_process import start_agent
from tests.mqtt_helpers import Collector, poll_until

pytestmark = pytest.mark.e2e



def _write_config(wd: Path, port: int) -> Path:
    cfg = {
        "venue": {"id": "fail-park"},
        "gateway": {"id": "gw-f", "health_interval_s": 1.0},
        "broker": {"url": f"mqtt://127.0.0.1:{port}"},
        "storage": {"path": str(wd / "state" / "agent.db")},
        "moments": {"reader_down_after_s": 1.0, "hold_s": 0.0},
        "zones": [{"id": "q", "kind": "queue"}],
        "readers": [{"id": "missing-reader", "protocol": "em4100",
                     "port": str(wd / "no-such-tty"), "zone": "q", "role": "entry"}],
    }
    path = wd / "gateway.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def _outbox_depth(db: Path) -> int:
    """Messages waiting in the agent's outbox, read with plain sqlite3 as an outsider."""
    with sqlite3.connect(db) as con:
        try:
            return int(con.execute("select count(*) from outbox_messages").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def test_missing_port_and_broker_down_then_power_cut_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    cfg = _write_config(tmp_path, port)
    log = tmp_path / "agent.log"
    db = tmp_path / "state" / "agent.db"

    proc = start_agent(cfg, log)
    try:
        # Both problems are named in the log, and the agent keeps running and buffering.
        assert poll_until(lambda: "missing-reader" in log.read_text()
                     and "no-such-tty" in log.read_text(), 30), log.read_text()
        assert poll_until(lambda: f"127.0.0.1:{port}" in log.read_text(), 30), log.read_text()
        assert poll_until(lambda: db.exists() and _outbox_depth(db) >= 3, 30)
        time.sleep(1.5)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert "No such file or directory" in text
        assert "reader missing-reader: offline" in text
        assert "refused" in text.lower() or "unreachable" in text.lower(), text
        depth_before_kill = _outbox_depth(db)
    finally:
        # A power cut: no chance to flush or say goodbye.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert depth_before_kill >= 3

    with start_broker(prefer="mosquitto", port=port, workdir=tmp_path / "broker") as broker:
        collector = Collector(broker.url, "venue/#")
        proc = start_agent(cfg, log)
        try:
            down = "venue/fail-park/moment/q/reader_down"
            # The reader_down opened before the power cut arrives, then the new one.
            assert poll_until(lambda: len(collector.on(down)) >= 2, 40), log.read_text()[-2000:]
            assert poll_until(lambda: _outbox_depth(db) <= 1, 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        collector.stop()
    assert rc == 0, log.read_text()[-2000:]
    guaranteed = [json.loads(m.payload) for m in collector.messages
                  if m.topic.split("/")[2] in ("moment", "dispatch", "nudge")]
    seqs = sorted({p["seq"] for p in guaranteed})
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1)), seqs
    first_run = [p for p in guaranteed if p.get("kind") == "reader_down"]
    assert len({p["moment_id"] for p in first_run}) >= 2  # one per agent life
