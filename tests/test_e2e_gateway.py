"""One gateway end to end on real parts.

Virtual EM4100 readers write real frames to pseudo-terminals; the agent runs as its own
process (`venue-agent run`) and reads them with pyserial; a real Mosquitto on a free loopback
port carries what it publishes; an independent paho client subscribes and the test compares
the retained zone state with the simulator's ground truth.
"""

from __future__ import annotations

import json
import math
import signal
import time
from typing import Any

import pytest

from agent.demo import DEMO_ESTIMATION, sim_config
from tests.agent_process import start_agent
from tests.contract_check import assert_valid
from tests.mqtt_helpers import Collector

pytestmark = pytest.mark.e2e

SEED = 11
# How far the agent's published estimates may be from the simulator's truth. The reads
# are real-time, noisy (5 % misses, duplicates, jitter) and the demo windows short, so the
# tolerances are stated as mean absolute errors over the run, not per sample.
QUEUE_MAE_GUESTS = 2.5
WAIT_MAE_PCT = 15.0


def _nan_none(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


@pytest.fixture(scope="module")
def gateway_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the demo scenario once through a real agent process; collect everything."""
    from agent.broker import start_broker
    from simulators.scenarios import demo_rush
    from simulators.venue import SimulatedVenue

    wd = tmp_path_factory.mktemp("gateway")
    scenario = demo_rush()
    with start_broker(prefer="mosquitto", workdir=wd / "broker") as broker:
        venue = SimulatedVenue(scenario, wd / "sim", seed=SEED)
        cfg = wd / "gateway.toml"
        cfg.write_text(sim_config(scenario.layout, venue.reader_paths, broker_url=broker.url,
                                  db_path=wd / "agent.db"))
        collector = Collector(broker.url, "venue/#")
        proc = start_agent(cfg, wd / "agent.log")
        try:
            # The agent opens the ports within a second or two of start (numba cache warm or
            # not, it compiles before it opens them); the replay waits for it.
            collector.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms), 60)
            venue.start(delay_s=1.0)
            # Sample the truth when each state message arrives (the replay is real time).
            truth: list[tuple[float, str, dict[str, Any]]] = []
            seen = 0
            end = time.time() + scenario.duration_s + 3.0
            while time.time() < end:
                time.sleep(0.2)
                msgs = collector.messages
                for m in msgs[seen:]:
                    if m.topic.endswith("/state"):
                        zone = m.topic.split("/")[3]
                        t = venue.truth_at(zone, m.received)
                        # The agent's wait is the median over its window of recent measured
                        # waits: compare it with the true median over the same window.
                        t["wait_s"] = _nan_none(venue.simulation.true_wait_s(
                            zone, t["sim_t"], window_s=DEMO_ESTIMATION["window_s"]))
                        truth.append((m.received, zone, t))
                seen = len(msgs)
            tags = [int(t) for t in venue.simulation.visits["tag"]]
            raw_tags = {format(t, "010x") for t in tags} | {str(t & 0xFFFFFFFF) for t in tags}
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            venue.stop()
        time.sleep(0.5)
        with Collector(broker.url, "venue/#") as late:  # a consumer that connects afterwards
            late.wait_for(lambda ms: len([m for m in ms if m.retain]) >= 4, 10)
        collector.stop()
    return {"messages": collector.messages, "truth": truth, "rc": rc, "raw_tags": raw_tags,
            "late": late.messages, "log": (wd / "agent.log").read_text()}


def _payloads(run: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in run["messages"] if m.topic.endswith(suffix)]


def test_agent_exits_cleanly_on_sigterm(gateway_run: dict[str, Any]) -> None:
    assert gateway_run["rc"] == 0, gateway_run["log"][-3000:]


def test_every_payload_has_the_envelope_and_no_raw_tag(gateway_run: dict[str, Any]) -> None:
    msgs = gateway_run["messages"]
    assert len(msgs) > 100
    topics = {"/".join(m.topic.split("/")[2:3]) for m in msgs}
    assert {"gateway", "zone", "moment", "dispatch"} <= topics
    for m in msgs:
        p = json.loads(m.payload)
        for key in ("schema", "id", "venue", "gateway", "at"):
            assert key in p, (m.topic, p)
        assert_valid(m.topic, p)  # its channel's JSON Schema (docs/schemas/)
        assert p["venue"] == "demo-park" and p["gateway"] == "gw-demo"
        text = m.payload.decode().lower()
        for tag in gateway_run["raw_tags"]:
            assert tag not in text, f"raw tag id {tag} leaked on {m.topic}"
    ids = [json.loads(m.payload)["id"] for m in msgs]
    assert len(set(ids)) == len(ids)


def test_guaranteed_stream_seq_is_gapless(gateway_run: dict[str, Any]) -> None:
    guaranteed = [json.loads(m.payload) for m in gateway_run["messages"]
                  if m.topic.split("/")[2] in ("moment", "dispatch", "nudge")]
    seqs = sorted({p["seq"] for p in guaranteed})
    assert seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_queue_long_opens_and_resolves(gateway_run: dict[str, Any]) -> None:
    moments = [p for p in _payloads(gateway_run, "/moment/dino-queue/queue_long")]
    statuses = [p["status"] for p in moments]
    assert "opened" in statuses, statuses
    opened = next(p for p in moments if p["status"] == "opened")
    resolved = [p for p in moments
                if p["status"] == "resolved" and p["moment_id"] == opened["moment_id"]]
    assert resolved, statuses
    dispatch = [p for p in _payloads(gateway_run, "/dispatch/dino-ops")
                if p["kind"] == "queue_long" and p["status"] == "opened"]
    assert dispatch and "Dino Ride" in dispatch[0]["action"]


def test_zone_state_tracks_ground_truth(gateway_run: dict[str, Any]) -> None:
    q_err, q_true, w_err, w_true = [], [], [], []
    by_id = {}
    for m in gateway_run["messages"]:
        if m.topic.endswith("/state"):
            by_id[m.received] = json.loads(m.payload)
    for received, zone, truth in gateway_run["truth"]:
        if zone != "dino-queue" or truth["sim_t"] < 10:
            continue
        state = by_id[received]
        q_err.append(abs(state["queue_length"] - truth["queue_length"]))
        q_true.append(truth["queue_length"])
        if state["wait_s"] is not None and truth.get("wait_s") is not None:
            w_err.append(abs(state["wait_s"] - truth["wait_s"]))
            w_true.append(truth["wait_s"])
    assert len(q_err) > 60 and len(w_err) > 40
    q_mae = sum(q_err) / len(q_err)
    w_mae_pct = 100.0 * sum(w_err) / sum(w_true)
    print(f"dino-queue: queue_length MAE {q_mae:.2f} guests (mean true {sum(q_true) / len(q_true):.1f}),"
          f" wait MAE {w_mae_pct:.1f} % of the true wait")
    assert q_mae <= QUEUE_MAE_GUESTS
    assert w_mae_pct <= WAIT_MAE_PCT
    assert max(q_true) > 30  # the rush really happened


def test_retained_state_reaches_a_late_subscriber(gateway_run: dict[str, Any]) -> None:
    retained = {m.topic: json.loads(m.payload) for m in gateway_run["late"] if m.retain}
    status = retained["venue/demo-park/gateway/gw-demo/status"]
    assert status["online"] is False  # the graceful shutdown replaced the birth message
    state = retained["venue/demo-park/zone/dino-queue/state"]
    assert state["schema"] == "venue-agent/zone-state@1"
    assert not math.isnan(state["seq"])
    for key in ("queue_length", "wait_s", "wait_method", "throughput_per_min"):
        assert key in state
