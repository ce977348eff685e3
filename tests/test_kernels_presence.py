"""Per-reader filtering (RSSI floor, min_reads) and per-tag departure from the tag's own read
interval, on both engines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kernels import (
    KIND_AREA,
    KIND_QUEUE,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    ReferenceEngine,
    Topology,
    ZoneEngine,
)

ENGINES = [ZoneEngine, ReferenceEngine]
ENTRY, EXIT, GATE, BLE = 0, 1, 2, 3


def topo(**kw: Any) -> Topology:
    """Zone 0: a queue (entry, exit); zone 1: an RFID area (gate); zone 2: a BLE area."""
    return Topology(
        reader_zone=np.array([0, 0, 1, 2]),
        reader_role=np.array([ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE, ROLE_PRESENCE]),
        zone_kind=np.array([KIND_QUEUE, KIND_AREA, KIND_AREA]),
        zone_timeout_s=np.array([2700.0, 600.0, 120.0]),
        **kw,
    )


def feed(e: Any, reads: list[tuple[float, int, int, float]]) -> None:
    ts, tag, reader, rssi = (np.array(c) for c in zip(*reads, strict=True))
    e.ingest(ts.astype(float), tag.astype(np.uint64), reader.astype(np.int32), rssi)


@pytest.fixture(params=ENGINES, ids=["numba", "reference"])
def make(request: pytest.FixtureRequest) -> Any:
    return lambda t, **kw: request.param(t, max_tags=256, **kw)


def test_defaults_keep_old_topologies_working() -> None:
    t = topo()
    assert t.reader_rssi_floor.tolist() == [-np.inf] * 4
    assert t.reader_min_reads.tolist() == [1] * 4 and t.reader_min_reads.dtype == np.int32
    assert t.zone_missed_reads.tolist() == [4.0] * 3
    with pytest.raises(ValueError, match="reader_min_reads"):
        topo(reader_min_reads=[1, 0, 1, 1])
    with pytest.raises(ValueError, match="zone_missed_reads"):
        topo(zone_missed_reads=[4.0, 4.0])
    with pytest.raises(ValueError, match="reader_rssi_floor"):
        topo(reader_rssi_floor=[np.nan, 0, 0, 0])


def test_reads_below_the_floor_are_ignored(make: Any) -> None:
    e = make(topo(reader_rssi_floor=[-np.inf, -np.inf, -60.0, -75.0]))
    feed(e, [(1.0, 1, BLE, -80.0), (1.0, 2, GATE, np.nan), (1.0, 3, GATE, -65.0),
             (2.0, 4, BLE, -70.0)])
    m = e.tick(2.0)
    assert e.filtered_reads == 2 and e.reads == 2
    assert m.occupancy.tolist() == [0, 1, 1]  # RFID (no RSSI) never filtered


def test_min_reads_keeps_a_passer_by_out_and_dates_the_join_at_the_first_read(make: Any) -> None:
    e = make(topo(reader_min_reads=[2, 2, 1, 1]), min_measured_waits=1)
    feed(e, [(10.0, 1, ENTRY, np.nan)])  # a passer-by, read once
    feed(e, [(20.0, 2, ENTRY, np.nan), (20.3, 2, ENTRY, np.nan)])  # a guest, read twice
    m = e.tick(30.0)
    assert m.occupancy[0] == 1 and m.queue_length[0] == 1 and e.live_tags == 2
    feed(e, [(320.0, 2, EXIT, np.nan)])
    assert e.tick(321.0).occupancy[0] == 1  # one exit read is not an exit yet
    feed(e, [(320.5, 2, EXIT, np.nan)])
    m = e.tick(322.0)
    assert m.occupancy[0] == 0 and m.wait_s[0] == 300.0  # exit 320 - entry 20
    e.tick(10.0 + 2700.5)  # the passer-by's pending read is forgotten after the zone timeout
    assert e.live_tags == 0


def test_min_reads_resets_when_another_read_comes_between(make: Any) -> None:
    e = make(topo(reader_min_reads=[1, 1, 2, 1]))
    feed(e, [(1.0, 1, ENTRY, np.nan), (5.0, 1, GATE, np.nan), (6.0, 1, ENTRY, np.nan),
             (7.0, 1, GATE, np.nan)])
    m = e.tick(8.0)
    assert m.occupancy.tolist() == [1, 0, 0]  # never two gate reads in a row
    feed(e, [(9.0, 1, GATE, np.nan)])
    m = e.tick(10.0)
    assert m.occupancy.tolist() == [0, 1, 0]


def beacon(tag: int, t0: float, t1: float, period: float) -> list[tuple[float, int, int, float]]:
    return [(t, tag, BLE, -60.0) for t in np.arange(t0, t1, period)]


def test_a_ble_zone_empties_within_seconds_of_a_beacon_stopping(make: Any) -> None:
    e = make(topo())
    feed(e, beacon(1, 0.0, 300.0, 1.0))  # 1 Hz for 5 minutes, last advert at 299 s
    assert e.tick(299.5).occupancy[2] == 1
    gone = next(t for t in np.arange(300.0, 420.0, 1.0) if e.tick(t).occupancy[2] == 0)
    assert gone - 299.0 <= 10.0  # not the zone's 120 s timeout
    m = e.tick(gone)
    assert m.dwell_p50_s[2] == 299.0  # dated at the last advert


def test_lost_adverts_do_not_end_a_visit(make: Any) -> None:
    rng = np.random.default_rng(1)
    reads = [r for r in beacon(1, 0.0, 1200.0, 1.0) if rng.random() > 0.5]  # 50 % lost
    e = make(topo())
    for t in range(0, 1200, 5):
        batch = [r for r in reads if t <= r[0] < t + 5]
        if batch:
            feed(e, batch)
        m = e.tick(t + 5.0)
        assert m.occupancy[2] == 1 and m.wait_samples[2] == 0, t  # no visit ended


def test_rfid_tags_without_an_interval_keep_the_zone_timeout(make: Any) -> None:
    e = make(topo())
    feed(e, [(0.0, 1, ENTRY, np.nan), (0.3, 1, ENTRY, np.nan), (0.0, 2, GATE, np.nan)])
    assert e.tick(599.0).occupancy.tolist() == [1, 1, 0]
    assert e.tick(601.0).occupancy.tolist() == [1, 0, 0]  # the gate's 600 s
    assert e.tick(2700.0).occupancy[0] == 1  # repeated entry reads give no interval
    assert e.tick(2701.0).occupancy[0] == 0
