"""ZoneEngine.snapshot / restore: exact continuation, refusals, and the accounting of a gap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kernels import (
    KIND_AREA,
    KIND_QUEUE,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    ReferenceEngine,
    SnapshotMismatch,
    Topology,
    ZoneEngine,
)
from kernels.engine import assign_changed
from tests.test_kernels_accuracy import QUEUE, run_queue, simulate_queue

TOPO = Topology(
    reader_zone=np.array([0, 0, 1]),
    reader_role=np.array([ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE]),
    zone_kind=np.array([KIND_QUEUE, KIND_AREA]),
    zone_timeout_s=np.array([1800.0, 10.0]),
)


def batches(until: float) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    reads, *_ = simulate_queue(rng, p_entry=0.8, p_exit=0.85, minutes=int(until / 60))
    reads.sort()
    ts = np.array([r[0] for r in reads])
    tag = np.array([r[1] for r in reads], dtype=np.uint64)
    reader = np.array([r[2] for r in reads], dtype=np.int32)
    out = []
    for sec in range(0, int(until), 10):
        sel = (ts >= sec) & (ts < sec + 10)
        out.append((sec + 10.0, ts[sel], tag[sel], reader[sel]))
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name, got in a.items():
        np.testing.assert_array_equal(got, b[name], err_msg=name)


def test_restore_without_a_gap_continues_exactly(tmp_path: Path) -> None:
    steps = batches(3600.0)
    whole = ZoneEngine(QUEUE, max_tags=4096)
    first = ZoneEngine(QUEUE, max_tags=4096)
    half = len(steps) // 2
    for now, ts, tag, reader in steps[:half]:
        for e in (whole, first):
            e.ingest(ts, tag, reader)
            e.tick(now)
    # through a file, the way the agent keeps it
    np.savez(tmp_path / "engine.npz", **first.snapshot())
    with np.load(tmp_path / "engine.npz") as f:
        snap = {k: f[k] for k in f.files}
    resumed = ZoneEngine(QUEUE, max_tags=4096)
    resumed.restore(snap, steps[half - 1][0])
    for now, ts, tag, reader in steps[half:]:
        whole.ingest(ts, tag, reader)
        resumed.ingest(ts, tag, reader)
        a, b = whole.tick(now), resumed.tick(now)
        same(a.arrays(), b.arrays())
    assert resumed.reads == whole.reads and resumed.live_tags == whole.live_tags
    assert a.queue_length[0] > 0 and np.isfinite(a.wait_joining_s[0])


def test_snapshot_is_a_copy() -> None:
    e = ZoneEngine(TOPO, max_tags=64)
    snap = e.snapshot()
    e.ingest(np.array([1.0]), np.array([5], np.uint64), np.array([2], np.int32))
    assert snap["counters"].sum() == ZoneEngine(TOPO, max_tags=64).snapshot()["counters"].sum()


@pytest.mark.parametrize(
    "other, why",
    [
        ({"params": {"max_tags": 64, "window_s": 60.0}}, "parameters"),
        ({"params": {"max_tags": 128}}, "parameters"),
        ({"topo": Topology(TOPO.reader_zone, TOPO.reader_role, TOPO.zone_kind, [1800.0, 20.0])},
         "topology"),
        ({"topo": Topology(TOPO.reader_zone, TOPO.reader_role, TOPO.zone_kind,
                           TOPO.zone_timeout_s, reader_min_reads=[1, 2, 1])}, "topology"),
    ],
)
def test_restore_refuses_another_topology_or_params(other: dict, why: str) -> None:
    e = ZoneEngine(TOPO, max_tags=64)
    e.ingest(np.array([1.0]), np.array([5], np.uint64), np.array([0], np.int32))
    e.tick(2.0)
    target = ZoneEngine(other.get("topo", TOPO), **other.get("params", {"max_tags": 64}))
    before = target.snapshot()
    with pytest.raises(SnapshotMismatch, match=why):
        target.restore(e.snapshot(), 3.0)
    same(target.snapshot(), before)  # nothing changed


def test_restore_refuses_a_newer_format_and_missing_arrays() -> None:
    e = ZoneEngine(TOPO, max_tags=64)
    snap = e.snapshot()
    snap["format"] = snap["format"] + 1
    with pytest.raises(SnapshotMismatch, match="format"):
        ZoneEngine(TOPO, max_tags=64).restore(snap, 0.0)
    snap = e.snapshot()
    del snap["row_last"]
    with pytest.raises(SnapshotMismatch, match="row_last"):
        ZoneEngine(TOPO, max_tags=64).restore(snap, 0.0)


@pytest.mark.parametrize("make", [ZoneEngine, ReferenceEngine], ids=["numba", "reference"])
def test_a_gap_times_out_tags_at_the_next_tick_and_is_not_observed_time(make: type) -> None:
    e = make(TOPO, max_tags=64, rate_window_s=300.0)
    e.tick(0.0)
    # an area guest read from 100 to 150 s; five area visits ended earlier
    reads = [(float(t), 9, 2) for t in range(100, 151, 5)]
    reads += [(10.0 * k, 100 + k, 2) for k in range(5)]
    ts, tag, reader = (np.array(c) for c in zip(*reads, strict=True))
    e.ingest(ts.astype(float), tag.astype(np.uint64), reader.astype(np.int32))
    m = e.tick(151.0)
    assert m.occupancy[1] == 1
    snap = e.snapshot()
    fresh = make(TOPO, max_tags=64, rate_window_s=300.0)
    fresh.restore(snap, 400.0)  # down from 151 s to 400 s
    m = fresh.tick(401.0)
    assert m.occupancy[1] == 0  # its timeout (10 s) passed while down: gone at the next tick
    # dated at its last read, dwell 150 - 100 (the five others: one read, dwell 0)
    assert m.dwell_p90_s[1] == np.percentile([0.0] * 5 + [50.0], 90)
    # one departure (150 s) in the rate window (101, 401], which holds 51 s observed (101 to
    # 151, 400 to 401) and 249 s down: the rate is per observed minute
    assert m.throughput_per_min[1] == pytest.approx(60.0 / 51.0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_restore_writes_only_what_differs_from_a_fresh_engine() -> None:
    """A few tags restored into a big fresh engine make a few pages resident, not every
    array (the OS backs an allocated page only once written); the state is still exact,
    bit for bit (NaN, -0.0 and a change in the last row included)."""
    src = ZoneEngine(TOPO, max_tags=1 << 20)  # ~220 MB of state arrays
    src.ingest(np.array([1.0, 2.0]), np.array([5, 6], dtype=np.uint64),
               np.array([0, 2], dtype=np.int32))
    src.tick(3.0)
    snap = src.snapshot()
    total = sum(a.nbytes for a in snap.values())
    dst = ZoneEngine(TOPO, max_tags=1 << 20)
    before = _rss_bytes()
    dst.restore(snap, now=3.0)
    assert _rss_bytes() - before < 0.1 * total
    for name, arr in dst.snapshot().items():
        if name != "fingerprint":
            assert arr.tobytes() == snap[name].tobytes(), name
    small = np.array([0.0, np.nan, 1.0, 2.0])
    assign_changed(small, np.array([-0.0, np.nan, 1.0, 7.0]))
    assert small.tobytes() == np.array([-0.0, np.nan, 1.0, 7.0]).tobytes()


@pytest.mark.parametrize("make", [ZoneEngine, ReferenceEngine], ids=["numba", "reference"])
def test_guests_who_joined_while_down_are_counted_until_they_board(make: type) -> None:
    # A growing line (8/min in, ~6/min served); the gateway is down from 1800 s to 2100 s and
    # every read of that time is lost. The ~40 guests who joined meanwhile were never read at
    # the entry: the restored engine counts them at the arrival rate until they board.
    rng = np.random.default_rng(5)
    reads, arrive, leave, _ = simulate_queue(rng, p_entry=0.9, p_exit=0.9, minutes=60)
    down_lo, down_hi = 1800.0, 2100.0
    kept = [r for r in reads if not down_lo < r[0] <= down_hi]
    first = make(QUEUE, max_tags=4096, fifo_slack_s=60.0)
    before = [r for r in kept if r[0] <= down_lo]
    run_queue(first, before, until=down_lo)
    resumed = make(QUEUE, max_tags=4096, fifo_slack_s=60.0)
    resumed.restore(first.snapshot(), down_hi)
    after = [r for r in kept if r[0] > down_hi]
    after.sort()
    ts = np.array([r[0] for r in after])
    tag = np.array([r[1] for r in after], dtype=np.uint64)
    reader = np.array([r[2] for r in after], dtype=np.int32)
    errs = []
    for sec in range(int(down_hi) + 10, int(down_hi) + 600, 10):
        sel = (ts > sec - 10) & (ts <= sec)
        resumed.ingest(ts[sel], tag[sel], reader[sel])
        m = resumed.tick(float(sec))
        true_len = int(np.sum((arrive <= sec) & (leave > sec)))
        errs.append((m.queue_length[0] - true_len) / true_len)
    joined_while_down = int(np.sum((arrive > down_lo) & (arrive <= down_hi)))
    assert joined_while_down > 25
    # without the gap's guests the line would be short by ~joined_while_down for a whole wait
    assert abs(float(np.mean(errs))) < 0.08, np.round(errs, 2)
