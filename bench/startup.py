"""Agent process measurements: start-up time (cold, warm) and steady RSS.

Each launch runs ``venue-agent run --config F`` as a subprocess, exactly as a gateway's
service does, against the demo layout's simulated readers (virtual serial ports) and a local
broker. Start-up is timed from just before the process is spawned to the runtime's log line
"first tick ..." (written after the engine is built and its kernels compiled or loaded, the
broker client created, the readers opened and the first tick run). Cold
launches point NUMBA_CACHE_DIR at an empty directory and use numba's JIT, so every kernel
compiles; then ``venue-agent build-kernels`` builds the ahead-of-time module there, and warm
launches reuse the directory: on that module (as an installed gateway starts) and, for
comparison, on numba's cache (VENUE_AGENT_KERNELS=jit).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.backends import AOT_DESCRIPTION, BACKEND_ENV
from tests.agent_process import die_with_parent

READY_MARK = "first tick "  # from agent/runtime.py: "first tick %.3f s after the agent was created"
START_TIMEOUT_S = 180.0  # a cold start compiles every kernel; a slow Pi needs minutes


def agent_command() -> list[str]:
    """The installed ``venue-agent`` script beside this interpreter, else ``-m agent.cli``."""
    script = Path(sys.executable).with_name("venue-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agent.cli"]


@dataclass
class AgentProcess:
    """A running agent whose stderr is drained by a thread that watches for READY_MARK."""

    proc: subprocess.Popen[bytes]
    spawned_at: float
    ready_at: float | None = None
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if self.ready_at is None and READY_MARK in line:
                self.ready_at = time.monotonic()
                self._ready.set()
            self.lines.append(line)
        self._ready.set()  # exited: wake the waiter, who sees ready_at is None

    def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn to the ready log line; raises if it never comes."""
        self._ready.wait(timeout)
        if self.ready_at is None:
            tail = "\n".join(self.lines[-20:])
            raise RuntimeError(f"the agent did not report running in {timeout:.0f} s:\n{tail}")
        return self.ready_at - self.spawned_at

    def rss_mb(self) -> dict[str, float]:
        """VmRSS (now) and VmHWM (peak) of the agent process, MiB, from /proc."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024.0  # kB -> MiB
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_agent(config: Path, cache_dir: Path, kernels: str = "auto") -> AgentProcess:
    """``venue-agent run`` on ``config`` with numba's cache (and the ahead-of-time module's
    folder) in ``cache_dir``; ``kernels``: VENUE_AGENT_KERNELS (kernels/backends.py)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    env[BACKEND_ENV] = kernels
    spawned = time.monotonic()
    proc = subprocess.Popen(
        die_with_parent([*agent_command(), "run", "--config", str(config)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    ap = AgentProcess(proc, spawned)
    threading.Thread(target=ap._drain, name="agent-stderr", daemon=True).start()
    return ap


def ingest_kernel_cached(cache_dir: Path) -> bool:
    """True once numba has written the compiled ingest kernel to ``cache_dir``."""
    return any(cache_dir.rglob("ingest.ingest_reads-*.nbi"))


def measure_agent(
    workdir: Path, *, warm_repeats: int, steady_s: float, seed: int = 7,
    prebuilt: Path | None = None,
) -> dict[str, Any]:
    """Cold start once, build the ahead-of-time kernels, then ``warm_repeats`` warm starts
    on them and as many on numba's warm cache. Returns (seconds, MiB):

    cold_start_s: spawn to running with an empty cache, on numba's JIT (the start-up warm-up
        compiles every kernel, the ingest kernel too: ZoneEngine.ingest runs its first batch
        through the kernel even when empty). The cold launch then replays simulated reads
        until the ingest kernel is in the cache: cold_first_ingest_s is spawn to that
        moment, rss_cold_mb the RSS then (compiler memory included). This leaves numba's
        cache complete for the warm JIT launches.
    aot_build_s: ``venue-agent build-kernels`` into the same cache (what an install runs);
        None when the module is copied from ``prebuilt`` instead (a folder holding the module
        for this code: the same build, for a bounded run).
    warm_start_s: median spawn-to-running of the warm launches on the ahead-of-time kernels,
        as an installed gateway starts (each one in warm_starts_s); warm_start_jit_s the
        same with VENUE_AGENT_KERNELS=jit (numba loading its cached kernels).
    rss_mb / rss_peak_mb: VmRSS / VmHWM of the last warm launch (ahead of time) after
        ``steady_s`` seconds of simulated reads; rss_jit_mb the same on JIT.
    """
    from agent.broker import start_broker
    from agent.demo import sim_config
    from simulators.scenarios import demo_rush
    from simulators.venue import SimulatedVenue

    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "numba-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    broker = start_broker(prefer="auto", workdir=workdir / "broker")
    venues: list[SimulatedVenue] = []

    def launch(i: int, kernels: str) -> tuple[AgentProcess, SimulatedVenue]:
        # Fresh virtual readers per launch (a replay runs once); the state directory is
        # shared, as across restarts of one gateway.
        venue = SimulatedVenue(demo_rush(), workdir / f"sim{i}", seed=seed)
        venues.append(venue)
        config = workdir / f"gateway{i}.toml"
        config.write_text(
            sim_config(
                venue.layout,
                venue.reader_paths,
                broker_url=broker.url,
                db_path=workdir / "state" / "agent.db",
            )
        )
        return spawn_agent(config, cache, kernels), venue

    def alive(ap: AgentProcess) -> None:
        if ap.proc.poll() is not None:
            raise RuntimeError("the agent exited:\n" + "\n".join(ap.lines[-20:]))

    try:
        ap, venue = launch(0, "jit")
        try:
            cold = ap.wait_ready(START_TIMEOUT_S)
            venue.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ingest_kernel_cached(cache):
                alive(ap)
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent never compiled the ingest kernel")
                time.sleep(0.05)
            cold_first_ingest = time.monotonic() - ap.spawned_at
            rss_cold = ap.rss_mb()["VmRSS"]
        finally:
            ap.stop()
        aot_build: float | None = None
        if prebuilt is not None:
            shutil.copytree(prebuilt, cache / "aot")
        else:
            t0 = time.monotonic()
            subprocess.run([*agent_command(), "build-kernels", "--dir", str(cache / "aot")],
                           check=True, stdout=subprocess.DEVNULL,
                           env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
            aot_build = time.monotonic() - t0
        warm: dict[str, list[float]] = {"auto": [], "jit": []}
        rss: dict[str, dict[str, float]] = {}
        reads = 0
        launches = 0
        for i in range(1, warm_repeats + 1):
            for kernels in ("auto", "jit"):  # alternated: the machine's load hits both alike
                launches += 1
                ap, venue = launch(launches, kernels)
                try:
                    warm[kernels].append(ap.wait_ready(START_TIMEOUT_S))
                    if kernels == "auto" and not any(AOT_DESCRIPTION in line
                                                     for line in ap.lines):
                        raise RuntimeError("the agent did not load the ahead-of-time kernels:"
                                           "\n" + "\n".join(ap.lines[-20:]))
                    if i == warm_repeats:
                        venue.start()
                        time.sleep(steady_s)
                        alive(ap)
                        rss[kernels] = ap.rss_mb()
                        reads = venue.reads_sent
                finally:
                    ap.stop()
        return {
            "cold_start_s": cold,
            "cold_first_ingest_s": cold_first_ingest,
            "rss_cold_mb": rss_cold,
            "aot_build_s": aot_build,
            "warm_start_s": statistics.median(warm["auto"]),
            "warm_starts_s": warm["auto"],
            "warm_start_jit_s": statistics.median(warm["jit"]),
            "warm_starts_jit_s": warm["jit"],
            "rss_mb": rss["auto"]["VmRSS"],
            "rss_peak_mb": rss["auto"]["VmHWM"],
            "rss_jit_mb": rss["jit"]["VmRSS"],
            "steady_s": steady_s,
            "reads_replayed_steady": reads,
            "broker": broker.kind,
            "start_measured_to": "log line 'first tick ...' (after the first tick ran)",
        }
    finally:
        for v in venues:
            v.stop()
        broker.stop()
