"""A restart keeps the queue: SIGKILL mid-rush, restart, and the gateway picks up where it was.

Virtual EM4100 readers keep feeding the same crowd through PTYs while the agent process is
killed with SIGKILL (no clean shutdown, no final checkpoint) and started again. What the
restarted agent publishes is compared with the simulator's ground truth, and the moment that
was open before the kill must be resolved under its old ``moment_id``.
"""

from __future__ import annotations

import json
import signal
import time
import tomllib
from typing import Any

import pytest
import tomli_w

from agent.demo import sim_config
from tests.agent_process import start_agent
from tests.mqtt_helpers import Collector

pytestmark = pytest.mark.e2e

SEED = 5
CHECKPOINT_S = 2.0
QUEUE_MAE_PCT = 15.0  # of the true mean, from 10 s after the restart


@pytest.fixture(scope="module")
def restart_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from agent.broker import start_broker
    from simulators.scenarios import demo_rush
    from simulators.venue import SimulatedVenue

    wd = tmp_path_factory.mktemp("restart")
    scenario = demo_rush()
    with start_broker(prefer="mosquitto", workdir=wd / "broker") as broker:
        venue = SimulatedVenue(scenario, wd / "sim", seed=SEED)
        data = tomllib.loads(sim_config(scenario.layout, venue.reader_paths,
                                        broker_url=broker.url, db_path=wd / "agent.db"))
        data["storage"]["checkpoint_interval_s"] = CHECKPOINT_S
        cfg = wd / "gateway.toml"
        cfg.write_text(tomli_w.dumps(data))
        collector = Collector(broker.url, "venue/#")
        log = wd / "agent.log"
        proc = start_agent(cfg, log)
        second = None
        try:
            # a cold numba compile on a busy machine can take a minute or more
            collector.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms), 240)
            venue.start(delay_s=1.0)

            def opened(ms: list[Any]) -> bool:
                return any(m.topic.endswith("/moment/dino-queue/queue_long")
                           and json.loads(m.payload)["status"] == "opened" for m in ms)

            collector.wait_for(opened, scenario.duration_s)
            time.sleep(2 * CHECKPOINT_S + 0.5)  # at least one checkpoint with it open
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed_at = time.time()
            second = start_agent(cfg, log)
            truth: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
            seen = 0
            end = venue.wall_time(scenario.duration_s) + 3.0
            while time.time() < end:
                time.sleep(0.2)
                msgs = collector.messages
                for m in msgs[seen:]:
                    if m.topic.endswith("/zone/dino-queue/state") and m.received > killed_at:
                        truth.append((m.received, json.loads(m.payload),
                                      venue.truth_at("dino-queue", m.received)))
                seen = len(msgs)
            second.send_signal(signal.SIGTERM)
            rc = second.wait(30)
        finally:
            for p in (proc, second):
                if p is not None and p.poll() is None:
                    p.kill()
            venue.stop()
        collector.stop()
    return {"messages": collector.messages, "truth": truth, "killed_at": killed_at, "rc": rc,
            "log": log.read_text()}


def test_the_restarted_agent_says_it_resumed(restart_run: dict[str, Any]) -> None:
    assert restart_run["rc"] == 0, restart_run["log"][-3000:]
    assert "restored checkpoint" in restart_run["log"], restart_run["log"][-3000:]


def test_queue_length_after_the_restart_tracks_the_truth(restart_run: dict[str, Any]) -> None:
    samples = [(s, t) for received, s, t in restart_run["truth"]
               if received >= restart_run["killed_at"] + 10.0 and t["queue_length"] > 0]
    assert len(samples) >= 20, len(samples)
    err = sum(abs(s["queue_length"] - t["queue_length"]) for s, t in samples)
    true = sum(t["queue_length"] for _, t in samples)
    mae_pct = 100.0 * err / true
    print(f"queue_length after restart: MAE {mae_pct:.1f} % of the true mean "
          f"({true / len(samples):.1f} guests, {len(samples)} samples)")
    assert mae_pct <= QUEUE_MAE_PCT


def test_the_open_moment_is_resolved_under_its_old_id(restart_run: dict[str, Any]) -> None:
    moments = [(m.received, json.loads(m.payload)) for m in restart_run["messages"]
               if m.topic.endswith("/moment/dino-queue/queue_long")]
    before = [p for r, p in moments if r < restart_run["killed_at"] and p["status"] == "opened"]
    assert before
    mid = before[-1]["moment_id"]
    after = [p for r, p in moments if r > restart_run["killed_at"]]
    assert not [p for p in after if p["status"] == "opened"], after  # no second opening
    assert any(p["status"] == "resolved" and p["moment_id"] == mid for p in after), after
