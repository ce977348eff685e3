"""SimulatedVenue: a scenario replayed in real time through virtual readers and pyserial."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import serial

from firmware_bridge.em4100 import Em4100Decoder
from simulators.scenarios import demo_rush
from simulators.venue import SimulatedVenue

SPEED = 20.0


class PortListener(threading.Thread):
    """Reads one port like the agent would: pyserial, decode, stamp on receipt."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.port = serial.Serial(str(path), 9600, timeout=0.02)
        self.decoder = Em4100Decoder()
        self.reads: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.port.read(256)
            except serial.SerialException:
                return
            now = time.time()
            self.reads.extend((now, r.tag_id) for r in self.decoder.feed(data))


@pytest.mark.e2e
def test_replays_every_read_in_order_on_schedule(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.jsonl"
    venue = SimulatedVenue("demo_rush", tmp_path, speed=SPEED, seed=3, truth_path=truth_path)
    assert set(venue.reader_paths) == {r.id for r in venue.layout.readers}
    listeners = {rid: PortListener(path) for rid, path in venue.reader_paths.items()}
    for listener in listeners.values():
        listener.start()
    try:
        venue.start(delay_s=0.3)
        assert venue.join(timeout=venue.duration_s / SPEED + 10.0)
        time.sleep(0.2)
    finally:
        for listener in listeners.values():
            listener.stop.set()
            listener.join()
            listener.port.close()
        venue.stop()

    assert venue.reads_dropped == 0
    assert venue.reads_sent == len(venue.simulation.reads)
    lateness: list[float] = []
    for rid, listener in listeners.items():
        schedule = venue.simulation.read_schedule(rid)
        assert [tag for _, tag in listener.reads] == [tag for _, tag in schedule], rid
        lateness += [got - venue.wall_time(ts)
                     for (got, _), (ts, _) in zip(listener.reads, schedule, strict=True)]
    late = np.array(lateness)
    # Never early; usually within a few ms. Generous bounds: CI machines stall.
    assert late.min() > -0.01
    assert np.median(late) < 0.1
    assert np.quantile(late, 0.95) < 0.5

    lines = [json.loads(line) for line in truth_path.read_text().splitlines()]
    zones = [z.id for z in venue.layout.zones]
    assert len(lines) == len(zones) * (int(venue.duration_s) + 1)
    dino = [rec for rec in lines if rec["zone"] == "dino-queue"]
    assert [rec["sim_t"] for rec in dino] == [float(t) for t in range(len(dino))]
    at_60 = dino[60]
    assert at_60["queue_length"] == int(venue.simulation.true_queue_length("dino-queue", 60.0))
    assert at_60["wall_ts"] == pytest.approx(venue.wall_time(60.0))
    truth = venue.truth_at("dino-queue", venue.wall_time(60.0))
    assert truth["queue_length"] == at_60["queue_length"]
    assert truth["wait_s"] == pytest.approx(at_60["wait_s"])
    assert truth["wait_joining_s"] is not None and truth["wait_joining_s"] > 30
    plaza = venue.truth_at("plaza", venue.wall_time(60.0))
    assert plaza["wait_s"] is None and isinstance(plaza["occupancy"], int)


@pytest.mark.e2e
def test_stop_ends_the_replay_and_unplugs(tmp_path: Path) -> None:
    venue = SimulatedVenue("demo_rush", tmp_path, speed=1.0, seed=1)
    venue.start()
    time.sleep(0.2)
    started = time.monotonic()
    venue.stop()
    assert time.monotonic() - started < 1.0
    assert venue.join(timeout=0)  # the replay thread is gone
    assert not any(p.exists() for p in venue.reader_paths.values())
    venue.stop()  # idempotent


@pytest.mark.e2e
def test_unplugged_reader_loses_reads(tmp_path: Path) -> None:
    with SimulatedVenue("demo_rush", tmp_path, speed=100.0, seed=2) as venue:
        venue.readers["dino-entry"].unplug()
        venue.start()
        assert venue.join(timeout=venue.duration_s / 100.0 + 10.0)
        expected = len(venue.simulation.reads_for("dino-entry"))
        assert venue.reads_dropped == expected > 0
        assert venue.readers["dino-exit"].sent > 0


def test_time_mapping_and_refusals(tmp_path: Path) -> None:
    with SimulatedVenue("demo_rush", tmp_path, speed=4.0, seed=0) as venue:
        with pytest.raises(RuntimeError):
            venue.truth_at("plaza", time.time())
        venue.start(delay_s=100.0)  # nothing is due for a while
        assert venue.sim_time(venue.wall_time(42.0)) == pytest.approx(42.0)
        assert venue.wall_time(40.0) - venue.wall_time(0.0) == pytest.approx(10.0)
        with pytest.raises(RuntimeError):
            venue.start()
    sc = demo_rush()
    readers = tuple(replace(r, protocol="uhf-m100") if r.id == "plaza-gate" else r
                    for r in sc.layout.readers)
    uhf = replace(sc, layout=replace(sc.layout, readers=readers))
    with pytest.raises(ValueError, match="uhf-m100"):
        SimulatedVenue(uhf, tmp_path / "x", seed=0)
    # Encoders for other reader types plug in from outside.
    with SimulatedVenue(uhf, tmp_path / "y", seed=0, encoders={"uhf-m100": bytes}) as venue:
        assert set(venue.readers) == {r.id for r in readers}
