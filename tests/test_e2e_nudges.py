"""Venue-wide nudges across two gateways, end to end on real parts.

Two `venue-agent run` processes read virtual EM4100 readers (pseudo-terminals) of one
simulated venue: gateway A owns Dino Ride, whose line grows from the start, and gateway B
owns Jungle Cruise, a short line. A follows B's retained zone state and status through a
real Mosquitto and nudges Dino Ride's guests to Jungle Cruise, naming both waits and the
walk; when B stops (its clean stop publishes status offline) A withdraws the nudge.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.demo import DEMO_MOMENTS, sim_config
from tests.agent_process import start_agent
from tests.contract_check import assert_valid
from tests.mqtt_helpers import Collector

pytestmark = pytest.mark.e2e

SEED = 5
WALK_S = 5.0
MARGIN_S = 3.0


def _scenario() -> Any:
    from simulators.crowd import QueueFlow, RateSchedule
    from simulators.scenarios import Scenario, standard_layout

    layout = standard_layout(read_prob=0.95, jitter_s=0.1, dino_capacity=80,
                             jungle_capacity=40)
    flows = {
        # Demand five times the service from the start: the line (and its wait) grows.
        "dino-queue": QueueFlow(arrivals=RateSchedule.constant(2.5),
                                service=RateSchedule.constant(0.5), walk_s=5.0),
        "jungle-queue": QueueFlow(arrivals=RateSchedule.constant(0.3),
                                  service=RateSchedule.constant(1.0), walk_s=3.0),
    }
    return Scenario("two_gateways", "", layout, flows, 90.0, realtime=True)


def _gateway_config(layout: Any, zone: str, gateway: str, venue: Any, url: str, wd: Path,
                    settings: dict[str, Any]) -> Path:
    part = SimpleNamespace(zones=tuple(z for z in layout.zones if z.id == zone),
                           readers=tuple(r for r in layout.readers if r.zone == zone))
    moments = dict(DEMO_MOMENTS, nudge_holdout=0.0, remote_stale_s=10.0)
    path = wd / f"{gateway}.toml"
    path.write_text(sim_config(part, venue.reader_paths, broker_url=url,
                               db_path=wd / gateway / "agent.db", gateway=gateway,
                               zone_settings={zone: settings}, moments=moments))
    return path


def _nudges(c: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in c.messages if m.topic.endswith("/nudge/dino-queue")]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def test_a_long_line_on_one_gateway_is_nudged_to_a_short_one_on_another(
        tmp_path: Path) -> None:
    from agent.broker import start_broker
    from simulators.venue import SimulatedVenue

    scenario = _scenario()
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker:
        venue = SimulatedVenue(scenario, tmp_path / "sim", seed=SEED)
        cfg_a = _gateway_config(scenario.layout, "dino-queue", "gw-a", venue, broker.url,
                                tmp_path, {"name": "Dino Ride", "queue_long_wait_s": 600.0,
                                           "wait_short_s": 0.0, "nudge_margin_s": MARGIN_S,
                                           "alternatives": [{"zone": "jungle-queue",
                                                             "walk_s": WALK_S}]})
        cfg_b = _gateway_config(scenario.layout, "jungle-queue", "gw-b", venue, broker.url,
                                tmp_path, {"name": "Jungle Cruise", "wait_short_s": 0.0})
        seen = Collector(broker.url, "venue/#")
        t_start = time.monotonic()
        a = start_agent(cfg_a, tmp_path / "a.log")
        b = start_agent(cfg_b, tmp_path / "b.log")
        logs = lambda: ((tmp_path / "a.log").read_text()[-3000:]  # noqa: E731
                        + (tmp_path / "b.log").read_text()[-3000:])
        try:
            seen.wait_for(lambda ms: {m.topic for m in ms if m.topic.endswith("/status")} >= {
                "venue/demo-park/gateway/gw-a/status", "venue/demo-park/gateway/gw-b/status"},
                60)
            print(f"both gateways up after {time.monotonic() - t_start:.1f} s")
            venue.start(delay_s=0.5)
            seen.wait_for(lambda ms: any(n.get("status") == "active" for n in _nudges(seen)),
                          40)
            print(f"nudge after {time.monotonic() - t_start:.1f} s")
            active = next(n for n in _nudges(seen) if n.get("status") == "active")
            assert active["gateway"] == "gw-a" and active["kind"] == "alternative"
            alt = active["alternative"]
            assert alt["zone"] == "jungle-queue" and alt["gateway"] == "gw-b"
            assert alt["zone_name"] == "Jungle Cruise" and alt["walk_s"] == WALK_S
            # Both waits and the walk, in the message and as numbers: the line's own wait
            # beats the alternative's on arrival plus the walk by the margin.
            assert active["wait_s"] >= alt["wait_s"] + WALK_S + MARGIN_S - 1  # rounding
            assert active["message"].startswith("Dino Ride is ")
            assert "Jungle Cruise: " in active["message"] and " walk." in active["message"]
            assert_valid("venue/demo-park/nudge/dino-queue", active)

            assert _stop(b) == 0, logs()
            seen.wait_for(lambda ms: any(n.get("status") == "withdrawn"
                                         for n in _nudges(seen)), 15)
            print(f"withdrawn after {time.monotonic() - t_start:.1f} s")
            withdrawn = next(n for n in _nudges(seen) if n.get("status") == "withdrawn")
            assert withdrawn["reason"] == "alternative_offline", withdrawn
            assert withdrawn["alternative"]["zone"] == "jungle-queue"
            assert_valid("venue/demo-park/nudge/dino-queue", withdrawn)
            # No new offer towards the stopped gateway's zone.
            n_after = len(_nudges(seen))
            time.sleep(2.0)
            assert all(n.get("status") != "active" for n in _nudges(seen)[n_after:])
        finally:
            venue.stop()
            rc_a, _ = _stop(a), _stop(b)
            seen.stop()
        assert rc_a == 0, logs()
        # The opportunity was recorded in A's database (sent: nudge_holdout is 0 here).
        from agent.experiment import OpportunityStore

        store = OpportunityStore(tmp_path / "gw-a" / "agent.db", readonly=True)
        assert store.counts().get("sent", 0) >= 1
        store.close()
