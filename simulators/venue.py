"""A simulated venue in real time: virtual serial readers replaying a crowd simulation.

Simulated time ``s`` maps to wall-clock time ``t0 + s / speed`` (``t0``: Unix seconds when
the replay starts). The agent stamps every read with its own clock on receipt, exactly as on a
gateway, so the only timing it sees is when the bytes arrive. ``speed > 1`` compresses time
for quick smoke tests only: waits the agent measures are then ``1 / speed`` of the simulated
ones, and scheduling jitter of a few ms becomes large in simulated terms.

Ground truth is kept in simulated units: ``truth_at`` converts a wall-clock time to simulated
time and reports the crowd model's counts, waits (s) and rates (per simulated minute).
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from firmware_bridge import em4100
from simulators.crowd import Layout, Simulation, tag_bytes
from simulators.pty_reader import VirtualSerialReader
from simulators.scenarios import Scenario, get_scenario

Encoder = Callable[[bytes], bytes]

TruthValue = float | int | None


def default_encoders(*, crlf: bool = False) -> dict[str, Encoder]:
    """Frame encoders per reader protocol that the simulator ships with.

    crlf: EM4100 readers send the 16-byte ID-12LA/ID-20LA frame instead of the RDM6300 one.
    """
    return {"em4100": functools.partial(em4100.encode, crlf=crlf)}


class SimulatedVenue:
    """Virtual readers at ``workdir/"dev"/<reader id>`` replaying a scenario in real time.

    scenario: a :class:`Scenario` or the name of one (``simulators.scenarios.SCENARIOS``).
    speed: simulated seconds per wall-clock second.
    truth_path: if given, ground truth is appended there as JSON lines while the replay runs,
        one line per zone every ``truth_period_s`` simulated seconds (never ahead of time).
    encoders: frame encoders by reader protocol, added to :func:`default_encoders` (how
        simulators for other reader types plug in). A reader whose protocol has none is refused.
    """

    def __init__(
        self,
        scenario: Scenario | str,
        workdir: Path,
        *,
        speed: float = 1.0,
        seed: int,
        truth_path: Path | None = None,
        truth_period_s: float = 1.0,
        encoders: Mapping[str, Encoder] | None = None,
        crlf: bool = False,
    ) -> None:
        if speed <= 0 or truth_period_s <= 0:
            raise ValueError("speed and truth_period_s must be > 0")
        self.scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        self.speed = float(speed)
        self.simulation: Simulation = self.scenario.run(seed=seed)
        self.truth_path = truth_path
        self.truth_period_s = float(truth_period_s)
        self.t0: float | None = None
        #: Reads handed to a virtual reader / lost because it was unplugged or full.
        self.reads_sent = 0
        self.reads_dropped = 0

        codecs = {**default_encoders(crlf=crlf), **(encoders or {})}
        missing = {r.protocol for r in self.layout.readers} - codecs.keys()
        if missing:
            raise ValueError(f"no virtual reader for protocol(s): {', '.join(sorted(missing))}")
        dev = Path(workdir) / "dev"
        self.readers: dict[str, VirtualSerialReader] = {}
        try:
            for r in self.layout.readers:
                self.readers[r.id] = VirtualSerialReader(dev / r.id, encode=codecs[r.protocol])
        except BaseException:
            self._close_readers()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the agent needs to know --------------------------------------------------------

    @property
    def layout(self) -> Layout:
        """Zones and readers (ids, kinds, roles, protocols) for writing an agent config."""
        return self.scenario.layout

    @property
    def reader_paths(self) -> dict[str, Path]:
        """Stable serial port path of each reader, by reader id."""
        return {rid: r.link_path for rid, r in self.readers.items()}

    @property
    def duration_s(self) -> float:
        """Length of the scenario in simulated seconds (wall seconds: divide by ``speed``)."""
        return self.scenario.duration_s

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, delay_s: float = 0.0) -> None:
        """Start replaying ``delay_s`` wall seconds from now (time for the agent to open the
        ports: pyserial discards whatever was sent before it opened one)."""
        if self._thread is not None:
            raise RuntimeError("SimulatedVenue already started")
        self.t0 = time.time() + delay_s
        self._thread = threading.Thread(target=self._replay, name="simulated-venue", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the replay to reach the end of the scenario. True when it has."""
        if self._thread is None:
            raise RuntimeError("SimulatedVenue not started")
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop the replay and unplug every reader. Safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._close_readers()

    def __enter__(self) -> SimulatedVenue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- time and truth -----------------------------------------------------------------------

    def sim_time(self, wall_ts: float) -> float:
        """Simulated seconds at Unix time ``wall_ts``."""
        return (wall_ts - self._started()) * self.speed

    def wall_time(self, sim_s: float) -> float:
        """Unix time at which simulated second ``sim_s`` is replayed."""
        return self._started() + sim_s / self.speed

    def truth_at(self, zone_id: str, wall_ts: float) -> dict[str, TruthValue]:
        """Ground truth of a zone at Unix time ``wall_ts``, in simulated units.

        Keys: ``sim_t``; ``queue_length`` and ``occupancy`` (both the number of guests in the
        zone); ``wait_s`` (median wait of guests who left a queue in the last 60 simulated s,
        ``None`` for areas or when nobody left); ``wait_joining_s`` (queues: the wait of a
        guest joining now); ``dwell_p50_s``/``dwell_p90_s`` (areas, last 300 s);
        ``arrivals_per_min``, ``throughput_per_min``. NaN is reported as ``None``.
        """
        t = self.sim_time(wall_ts)
        return self._truth_record(zone_id, t)

    # -- internals --------------------------------------------------------------------------

    def _started(self) -> float:
        if self.t0 is None:
            raise RuntimeError("SimulatedVenue not started: t0 is not set yet")
        return self.t0

    def _truth_record(self, zone_id: str, t: float) -> dict[str, TruthValue]:
        grid = self.simulation.truth_grid(zone_id, np.array([t]))
        count = int(self.simulation.true_count(zone_id, t))
        out: dict[str, TruthValue] = {
            "sim_t": t,
            "queue_length": count,
            "occupancy": count,
            "wait_s": None,
        }
        for key, values in grid.items():
            if key in ("queue_length", "occupancy"):
                continue
            v = float(values[0])
            out[key] = None if math.isnan(v) else v
        return out

    def _replay(self) -> None:
        sim = self.simulation
        reads = sim.reads
        ts = reads["ts"]
        reader_ids = [r.id for r in self.layout.readers]
        next_truth = 0.0
        truth_file: IO[str] | None = None
        if self.truth_path is not None:
            self.truth_path.parent.mkdir(parents=True, exist_ok=True)
            truth_file = self.truth_path.open("a", encoding="utf-8")
        try:
            i = 0
            while True:
                due = min(float(ts[i]) if i < len(reads) else math.inf, next_truth)
                if due > sim.duration_s:
                    break
                delay = self.wall_time(due) - time.time()
                if delay > 0 and self._stop.wait(delay):
                    break
                if self._stop.is_set():
                    break
                # Catch up on everything due by now, so a late wake-up sends a burst in order
                # rather than drifting behind the schedule.
                now_sim = self.sim_time(time.time())
                while i < len(reads) and ts[i] <= now_sim:
                    reader = self.readers[reader_ids[int(reads["reader"][i])]]
                    if reader.send(tag_bytes(reads["tag"][i])):
                        self.reads_sent += 1
                    else:
                        self.reads_dropped += 1
                    i += 1
                while next_truth <= min(now_sim, sim.duration_s):
                    if truth_file is not None:
                        self._write_truth(truth_file, next_truth)
                    next_truth += self.truth_period_s
        finally:
            if truth_file is not None:
                truth_file.close()

    def _write_truth(self, f: IO[str], t: float) -> None:
        wall = self.wall_time(t)
        for zone in self.layout.zones:
            record: dict[str, object] = {"wall_ts": wall, "zone": zone.id, "kind": zone.kind}
            record.update(self._truth_record(zone.id, t))
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
        f.flush()

    def _close_readers(self) -> None:
        for reader in self.readers.values():
            reader.close()
