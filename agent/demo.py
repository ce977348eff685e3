"""`venue-agent demo` and `venue-agent simulate`.

The demo is the product's main job on simulated parts: a broker (the local Mosquitto if
installed, else an embedded one), a simulated venue whose virtual readers write real EM4100
frames to pseudo-terminals, the agent reading them exactly as it reads USB readers, and a
staff console that sees only what comes over MQTT.

The demo venue runs in real time, so its thresholds are scaled down: a "long" queue is a
30-second wait rather than 30 minutes. Everything else is the production path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tomli_w

from agent.config import load_config
from agent.progress import progress

log = logging.getLogger("venue_agent.demo")

# Real-time thresholds for the demo venue (the scenario's waits are tens of seconds).
DEMO_ZONE_SETTINGS: dict[str, dict[str, Any]] = {
    "dino-queue": {"name": "Dino Ride", "team": "dino-ops", "queue_long_wait_s": 20.0,
                   "queue_long_clear_s": 12.0, "wait_short_s": 0.0,
                   "absence_timeout_s": 300.0},
    "jungle-queue": {"name": "Jungle Cruise", "team": "jungle-ops", "queue_long_wait_s": 60.0,
                     "wait_short_s": 20.0, "absence_timeout_s": 300.0},
    "plaza": {"name": "Central Plaza", "team": "plaza-ops", "absence_timeout_s": 10.0,
              "dwell_long_s": 120.0},
}
DEMO_ESTIMATION = {"window_s": 30.0, "rate_window_s": 30.0, "fifo_slack_s": 10.0,
                   "min_measured_waits": 3}
DEMO_MOMENTS = {"hold_s": 3.0, "cooldown_s": 30.0, "update_interval_s": 10.0,
                "forecast_horizon_s": 30.0, "reader_down_after_s": 10.0}


def sim_config(layout: Any, reader_paths: dict[str, Path], *, broker_url: str, db_path: Path,
               venue: str = "demo-park", gateway: str = "gw-demo",
               zone_settings: dict[str, dict[str, Any]] | None = None,
               moments: dict[str, Any] | None = None) -> str:
    """A gateway config (TOML text) for a simulated layout whose readers sit at
    ``reader_paths``."""
    settings = DEMO_ZONE_SETTINGS if zone_settings is None else zone_settings
    data: dict[str, Any] = {
        "venue": {"id": venue, "name": "Demo Park"},
        "gateway": {"id": gateway, "health_interval_s": 5.0},
        "broker": {"url": broker_url},
        "storage": {"path": str(db_path)},
        "moments": dict(DEMO_MOMENTS if moments is None else moments),
        "estimation": dict(DEMO_ESTIMATION),
        "zones": [{"id": z.id, "kind": z.kind, "capacity": int(z.capacity),
                   **settings.get(z.id, {})} for z in layout.zones],
        "readers": [{"id": r.id, "protocol": r.protocol, "port": str(reader_paths[r.id]),
                     "zone": r.zone, "role": r.role} for r in layout.readers],
    }
    return tomli_w.dumps(data)


class AgentThread:
    """Runs an :class:`~agent.runtime.Agent` on its own asyncio loop in a thread, so the
    demo's console can own the main thread."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.agent: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="agent", daemon=True)

    def _main(self) -> None:
        from agent.runtime import Agent

        async def main() -> None:
            # The agent's resources (its SQLite connection above all) belong to this thread.
            self.agent = Agent(self.cfg)
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.agent.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def run_demo(*, duration_s: float | None, broker: str = "auto", seed: int = 7,
             workdir: Path | None = None, console: bool = True) -> int:
    from agent.broker import start_broker
    from agent.console import watch
    from simulators.scenarios import demo_rush
    from simulators.venue import SimulatedVenue

    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="venue-agent-demo-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    scenario = demo_rush()
    if duration_s is None:
        duration_s = scenario.duration_s + 30.0
    print(f"venue-agent demo: scenario {scenario.name!r}, {duration_s:.0f} s, files in {wd}",
          file=out, flush=True)
    brk = start_broker(prefer=broker, workdir=wd / "broker")  # type: ignore[arg-type]
    print(f"broker: {brk.kind} at {brk.url}  (see every message: "
          f"mosquitto_sub -p {brk.port} -t 'venue/#' -v)", file=out, flush=True)
    venue = SimulatedVenue(scenario, wd / "sim", seed=seed)
    agent: AgentThread | None = None
    interrupted = threading.Event()
    prev = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    try:
        cfg_path = wd / "gateway.toml"
        cfg_path.write_text(sim_config(scenario.layout, venue.reader_paths, broker_url=brk.url,
                                       db_path=wd / "agent.db"))
        cfg = load_config(cfg_path)
        print(f"agent config: {cfg_path}", file=out, flush=True)
        agent = AgentThread(cfg)
        # A cold numba cache compiles the kernels first: seconds on a desktop, minutes on a Pi.
        with progress("starting the agent (a cold start compiles the kernels)"):
            agent.start()
        if agent.error is not None:
            raise agent.error
        venue.start(delay_s=1.0)  # the agent opens the ports first
        replay_at = time.strftime("%H:%M:%S", time.gmtime(venue.t0 or time.time()))
        print(f"simulated readers: replay started at {replay_at} UTC; "
              "watch the queue build at Dino Ride "
              f"(queue_long opens when the wait passes "
              f"{DEMO_ZONE_SETTINGS['dino-queue']['queue_long_wait_s']:.0f} s)\n",
              file=out, flush=True)
        if console:
            state = watch(brk.url, cfg.venue.id, duration_s=duration_s, out=out,
                          stop_check=interrupted.is_set)
            dispatches = [a for a in state.alerts if "DISPATCH" in a]
            print(f"\ndemo finished: {len(state.zones)} zones seen, {len(dispatches)} dispatch "
                  f"alerts ({sum('queue_long' in a for a in dispatches)} queue_long)",
                  file=out, flush=True)
        else:
            end = time.monotonic() + duration_s
            with progress(f"demo {scenario.name}", total=duration_s) as advance:
                while time.monotonic() < end and not interrupted.is_set():
                    time.sleep(0.2)
                    advance(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, prev)
        if agent is not None:  # the agent first, so it does not report the readers vanishing
            agent.stop()
        venue.stop()
        brk.stop()
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)
    if agent is not None and agent.error is not None:
        print(f"venue-agent demo: the agent failed: {agent.error}", file=sys.stderr)
        return 1
    return 0


def run_simulate(*, scenario: str, workdir: Path, broker_url: str, seed: int,
                 truth_path: Path | None, duration_s: float | None) -> int:
    """Only the virtual readers: prints where they are and writes an agent config for them."""
    from simulators import scenarios
    from simulators.venue import SimulatedVenue

    make = getattr(scenarios, scenario, None)
    if make is None or not callable(make):
        print(f"venue-agent simulate: unknown scenario {scenario!r}", file=sys.stderr)
        return 2
    sc = make()
    workdir.mkdir(parents=True, exist_ok=True)
    venue = SimulatedVenue(sc, workdir / "sim", seed=seed, truth_path=truth_path)
    cfg_path = workdir / "gateway.toml"
    cfg_path.write_text(sim_config(sc.layout, venue.reader_paths, broker_url=broker_url,
                                   db_path=workdir / "agent.db"))
    print(f"agent config: {cfg_path}", flush=True)
    for rid, path in venue.reader_paths.items():
        print(f"reader {rid}: {path}", flush=True)
    venue.start()
    total = duration_s if duration_s is not None else sc.duration_s + 5.0
    end = time.monotonic() + total
    try:
        with progress(f"simulating {sc.name}", total=total) as advance:
            while time.monotonic() < end:
                time.sleep(0.2)
                advance(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        venue.stop()
    return 0
