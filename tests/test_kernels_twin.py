"""ZoneEngine and ReferenceEngine agree on random read streams.

Streams mix every reader role and zone kind, RFID reads and BLE adverts (RSSI), a small tag pool (so tags revisit, move between
zones and collide in the hash table), a table small enough to evict, out-of-order reads
within a batch, late reads, backward and forward clock steps, NaN timestamps, tag 0 and
unknown readers, and empty batches. Topologies draw per-reader RSSI floors and min_reads and
per-zone missed-read limits; runs are checkpointed and restored into fresh engines, with and
without a gap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from kernels.backends import choose
from kernels.ingest import CHUNK

# Half-second timestamps: exact in float64 and often equal, so ties in the sort matter.
offsets = st.integers(min_value=-10, max_value=10).map(lambda k: k / 2)


@st.composite
def read_batch(draw: st.DrawFn, n_readers: int) -> list[tuple[float, int, int, float]]:
    read = st.tuples(
        st.one_of(offsets, offsets, offsets, st.just(float("nan"))),
        st.integers(min_value=0, max_value=12),  # 0 is an invalid tag
        st.integers(min_value=-1, max_value=n_readers),  # -1 and n_readers are invalid
        # RSSI: none (RFID) or whole dBm as BLE scanners report it
        st.one_of(st.just(float("nan")), st.integers(-100, -40).map(float)),
    )
    return draw(st.lists(read, max_size=25))


@st.composite
def random_topology(draw: st.DrawFn) -> Topology:
    n_zones = draw(st.integers(min_value=1, max_value=3))
    n_readers = draw(st.integers(min_value=1, max_value=5))

    def column(values: st.SearchStrategy[Any], n: int) -> np.ndarray:
        return np.array(draw(st.lists(values, min_size=n, max_size=n)))

    return Topology(
        reader_zone=column(st.integers(0, n_zones - 1), n_readers),
        reader_role=column(st.sampled_from([ROLE_PRESENCE, ROLE_ENTRY, ROLE_EXIT]), n_readers),
        zone_kind=column(st.sampled_from([KIND_QUEUE, KIND_AREA]), n_zones),
        zone_timeout_s=column(st.sampled_from([3.0, 10.0, 40.0]), n_zones),
        reader_rssi_floor=column(st.sampled_from([-np.inf, -np.inf, -70.0]), n_readers),
        reader_min_reads=column(st.sampled_from([1, 1, 2, 3]), n_readers),
        zone_missed_reads=column(st.sampled_from([1.0, 4.0]), n_zones),
    )


@st.composite
def queue_topology(draw: st.DrawFn) -> Topology:
    """A queue with entry, exit and a mid-queue presence reader, next to an area."""
    return Topology(
        reader_zone=np.array([0, 0, 0, 1]),
        reader_role=np.array([ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE, ROLE_PRESENCE]),
        zone_kind=np.array([KIND_QUEUE, KIND_AREA]),
        zone_timeout_s=np.array([draw(st.sampled_from([20.0, 60.0])), 10.0]),
    )


def ble_topology() -> st.SearchStrategy[Topology]:
    """Three neighbouring areas with presence scanners (two in the middle one)."""
    return st.just(
        Topology(
            reader_zone=np.array([0, 1, 1, 2]),
            reader_role=np.full(4, ROLE_PRESENCE),
            zone_kind=np.full(3, KIND_AREA),
            zone_timeout_s=np.array([10.0, 10.0, 40.0]),
        )
    )


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    topo = draw(st.one_of(random_topology(), queue_topology(), ble_topology()))
    n_readers = topo.n_readers
    params = {
        "max_tags": draw(st.sampled_from([3, 8, 64])),
        "window_s": draw(st.sampled_from([20.0, 100.0])),
        "rate_window_s": draw(st.sampled_from([10.0, 60.0])),
        "horizon_s": draw(st.sampled_from([30.0, 900.0])),
        "fifo_slack_s": draw(st.sampled_from([0.0, 2.0, 15.0])),
        "fifo_witnesses": draw(st.integers(1, 3)),
        "min_measured_waits": draw(st.integers(1, 3)),
        "wait_recent": draw(st.integers(1, 4)),
        "exit_hold_s": draw(st.sampled_from([2.0, 20.0])),
        "min_recaptures": draw(st.integers(1, 3)),
        "read_rate_window_s": draw(st.sampled_from([30.0, 200.0])),
        "min_read_rate": draw(st.sampled_from([0.1, 0.5])),
        "ble_tau_s": draw(st.sampled_from([1.0, 4.0])),
        "ble_alpha_min": draw(st.sampled_from([0.0, 0.25])),
        "ble_stale_s": draw(st.sampled_from([3.0, 30.0])),
        "ble_decay_db_per_s": draw(st.sampled_from([0.0, 1.0])),
        "ble_holdoff_s": draw(st.sampled_from([0.0, 2.0])),
        "ble_margin_db": draw(st.sampled_from([0.0, 5.0])),
        "ble_min_reads": draw(st.integers(1, 3)),
        "ble_candidates": draw(st.integers(1, 3)),
        "read_rate_prior": draw(st.sampled_from([1.0, 10.0])),
        "read_rate_z": draw(st.sampled_from([0.0, 1.0])),
        "joining_window_s": draw(st.sampled_from([20.0, 600.0])),
        "stall_s": draw(st.sampled_from([2.0, 60.0])),
        "interval_alpha": draw(st.sampled_from([0.25, 1.0])),
    }
    steps = draw(
        st.lists(
            st.tuples(
                read_batch(n_readers),
                # how far the clock moves before the batch: mostly forward, sometimes a step back
                st.one_of(offsets, st.integers(min_value=-40, max_value=40).map(float)),
                st.booleans(),  # tick after the batch?
                # then checkpoint and restore into fresh engines? (None: no; else the gap, s)
                st.one_of(st.none(), st.none(), st.none(), st.sampled_from([0.0, 5.0, 60.0])),
            ),
            max_size=12,
        )
    )
    return {"topo": topo, "params": params, "steps": steps}


def assert_same(a: Any, b: Any) -> None:
    for name, got in a.arrays().items():
        want = b.arrays()[name]
        assert got.dtype == want.dtype, name
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9, equal_nan=True, err_msg=name)
    assert a.now == b.now


@pytest.mark.parametrize("backend", ["aot", "jit"])  # kernels/backends.py
@settings(max_examples=300, deadline=None)
@given(scenario())
def test_engine_matches_reference(backend: str, sc: dict[str, Any]) -> None:
    kernels = choose(backend)
    fast = ZoneEngine(sc["topo"], kernels=kernels, **sc["params"])
    ref = ReferenceEngine(sc["topo"], **sc["params"])
    clock = 1000.0
    for reads, advance, tick, restart in sc["steps"]:
        clock += advance
        ts = np.array([clock + off for off, _, _, _ in reads], dtype=np.float64)
        tag = np.array([k for _, k, _, _ in reads], dtype=np.uint64)
        reader = np.array([r for _, _, r, _ in reads], dtype=np.int32)
        rssi = np.array([x for _, _, _, x in reads], dtype=np.float32)
        fast.ingest(ts, tag, reader, rssi)
        ref.ingest(ts, tag, reader, rssi)
        assert (fast.reads, fast.bad_reads) == (ref.reads, ref.bad_reads)
        assert fast.filtered_reads == ref.filtered_reads
        assert (fast.live_tags, fast.evictions) == (ref.live_tags, ref.evictions)
        if tick:
            assert_same(fast.tick(clock + 1.0), ref.tick(clock + 1.0))
        if restart is not None:
            snap_fast, snap_ref = fast.snapshot(), ref.snapshot()
            fast = ZoneEngine(sc["topo"], kernels=kernels, **sc["params"])
            ref = ReferenceEngine(sc["topo"], **sc["params"])
            clock += restart
            fast.restore(snap_fast, clock)
            ref.restore(snap_ref, clock)
    assert_same(fast.tick(clock + 100.0), ref.tick(clock + 100.0))
    assert fast.live_tags == ref.live_tags


@pytest.mark.parametrize("backend", ["aot", "jit"])
# 64 rows evict in every batch (every read is then applied in order); 1,000 never do, so the
# kernel applies the common reads ahead of reads that take its general path (ingest.py)
@pytest.mark.parametrize("max_tags", [64, 1000])
@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_long_batches_match_reference(backend: str, max_tags: int, order: str) -> None:
    """Batches longer than the kernel's chunk of reads (ingest.CHUNK), where a tag's reads
    that take the general path (joins, moves, exits, BLE adverts, streaks) are followed in
    the same chunk, and across a chunk's end, by its common reads and by other tags'."""
    kernels = choose(backend)
    topo = Topology(
        reader_zone=np.array([0, 0, 0, 1, 2, 2]),
        reader_role=np.array(
            [ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE, ROLE_PRESENCE, ROLE_PRESENCE, ROLE_PRESENCE]
        ),
        zone_kind=np.array([KIND_QUEUE, KIND_AREA, KIND_AREA]),
        zone_timeout_s=np.array([60.0, 10.0, 30.0]),
        reader_rssi_floor=np.array([-np.inf, -np.inf, -np.inf, -np.inf, -80.0, -np.inf]),
        reader_min_reads=np.array([1, 1, 1, 2, 1, 1]),
    )
    params = {"max_tags": max_tags, "fifo_witnesses": 2, "min_measured_waits": 1}
    fast = ZoneEngine(topo, kernels=kernels, **params)
    ref = ReferenceEngine(topo, **params)
    rng = np.random.default_rng(11)
    n = 2 * CHUNK + 777
    clock = 1000.0
    for _ in range(3):
        ts = clock + np.sort(rng.random(n)) * 60.0
        clock = float(ts[-1])
        if order == "shuffled":  # a third of the batch out of order, with NaN timestamps
            k = rng.choice(n, n // 3, replace=False)
            ts[k] = ts[rng.permutation(k)]
            ts[k[:20]] = np.nan
        # 300 tags, each mostly read where it last was (the common read), sometimes moving
        tag = rng.integers(1, 301, n).astype(np.uint64)
        reader = rng.integers(0, 6, n).astype(np.int32)
        where = {}
        for j in range(n):
            t = int(tag[j])
            if t in where and rng.random() < 0.9:
                reader[j] = where[t]
            where[t] = int(reader[j])
        rssi = np.where(
            (reader >= 4) & (rng.random(n) < 0.5), rng.integers(-95, -45, n), np.nan
        ).astype(np.float32)
        fast.ingest(ts, tag, reader, rssi)
        ref.ingest(ts, tag, reader, rssi)
        assert (fast.reads, fast.bad_reads) == (ref.reads, ref.bad_reads)
        assert fast.filtered_reads == ref.filtered_reads
        assert (fast.live_tags, fast.evictions) == (ref.live_tags, ref.evictions)
        assert_same(fast.tick(clock + 1.0), ref.tick(clock + 1.0))
    assert_same(fast.tick(clock + 100.0), ref.tick(clock + 100.0))
