"""NumpyIngest (the bench's numpy baseline) agrees with ZoneEngine on what it implements.

Streams: RFID reads at PRESENCE and ENTRY readers of queue and area zones (NumpyIngest has no
exits, BLE, timeouts or eviction), a small tag pool so tags revisit and move between zones,
out-of-order and late reads, equal timestamps, NaN timestamps, tag 0, unknown readers, empty
batches, and tags spread over the 64-bit range (hash collisions and probing).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KIND_AREA, KIND_QUEUE, ROLE_ENTRY, ROLE_PRESENCE, Topology, ZoneEngine
from kernels.codes import TAG_FREE
from kernels.numpy_ingest import NumpyIngest

# Half-second timestamps: exact in float64 and often equal, so ties in the sort matter.
offsets = st.integers(min_value=-10, max_value=10).map(lambda k: k / 2)
# Small ids and ids that differ only in high bits, so home slots collide.
tags = st.one_of(st.integers(0, 12), st.integers(1, 6).map(lambda k: k << 60))


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    n_zones = draw(st.integers(1, 3))
    n_readers = draw(st.integers(1, 5))
    ints = st.integers(0, n_zones - 1)
    return Topology(
        reader_zone=np.array(draw(st.lists(ints, min_size=n_readers, max_size=n_readers))),
        reader_role=np.array(
            draw(
                st.lists(
                    st.sampled_from([ROLE_PRESENCE, ROLE_ENTRY]),
                    min_size=n_readers,
                    max_size=n_readers,
                )
            )
        ),
        zone_kind=np.array(
            draw(
                st.lists(
                    st.sampled_from([KIND_QUEUE, KIND_AREA]), min_size=n_zones, max_size=n_zones
                )
            )
        ),
        zone_timeout_s=np.full(n_zones, 60.0),
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[Topology, list[list[tuple[float, int, int]]]]:
    topo = draw(topologies())
    read = st.tuples(
        st.one_of(offsets, offsets, offsets, st.just(float("nan"))),
        tags,
        st.integers(-1, topo.n_readers),  # -1 and n_readers are unknown readers
    )
    return topo, draw(st.lists(st.lists(read, max_size=25), max_size=6))


def engine_tags(e: ZoneEngine) -> dict[int, tuple[int, float, float, bool]]:
    """ZoneEngine's per-tag state in NumpyIngest.tag_state's shape (read from its rows)."""
    f = e.tag_fields()
    used = np.flatnonzero(f["row_state"] != TAG_FREE)
    return {
        int(f["row_key"][i]): (
            int(f["row_zone"][i]),
            float(f["row_first"][i]),
            float(f["row_last"][i]),
            bool(f["row_entry"][i]),
        )
        for i in used
    }


def assert_same(e: ZoneEngine, npi: NumpyIngest) -> None:
    assert npi.reads == e.reads
    assert npi.bad_reads == e.bad_reads
    assert npi.zone_count.tolist() == e._zone_count.tolist()
    assert npi.arrivals.tolist() == e._arr_n.tolist()
    # Without exit readers or ticks, every departure is a move to another zone.
    assert npi.moved.tolist() == e.departures.tolist()
    assert npi.live_tags == e.live_tags
    assert npi.tag_state() == engine_tags(e)


@settings(max_examples=300, deadline=None)
@given(streams())
def test_numpy_ingest_matches_engine(stream: tuple[Topology, list[list[tuple]]]) -> None:
    topo, batches = stream
    e = ZoneEngine(topo, max_tags=64)
    npi = NumpyIngest(topo, max_tags=64)
    base = 100.0
    for batch in batches:
        cols = list(zip(*batch, strict=True)) if batch else [(), (), ()]
        ts = base + np.array(cols[0], dtype=np.float64)
        tag = np.array(cols[1], dtype=np.uint64)
        reader = np.array(cols[2], dtype=np.int32)
        e.ingest(ts, tag, reader)
        npi.ingest(ts, tag, reader)
        assert_same(e, npi)
        base += 3.0  # later batches overlap earlier ones: late reads


def test_large_stream_matches_engine() -> None:
    """A bench-shaped stream (thousands of tags, batches of 1000, 2 % moving) agrees too."""
    rng = np.random.default_rng(3)
    topo = Topology(
        reader_zone=np.repeat(np.arange(6), 2),
        reader_role=np.tile([ROLE_ENTRY, ROLE_PRESENCE], 6),
        zone_kind=np.array([KIND_QUEUE, KIND_AREA] * 3),
        zone_timeout_s=np.full(6, 600.0),
    )
    e = ZoneEngine(topo, max_tags=1 << 13)
    npi = NumpyIngest(topo, max_tags=1 << 13)
    keys = rng.integers(1, 2**63, size=3000, dtype=np.uint64)
    for b in range(20):
        ts = b + np.sort(rng.random(1000))
        tag = rng.choice(keys, 1000)
        reader = rng.integers(0, 12, 1000, dtype=np.int32)
        e.ingest(ts, tag, reader)
        npi.ingest(ts, tag, reader)
    assert_same(e, npi)


def test_full_table_raises() -> None:
    topo = Topology(
        np.array([0]), np.array([ROLE_PRESENCE]), np.array([KIND_AREA]), np.array([60.0])
    )
    npi = NumpyIngest(topo, max_tags=2)
    npi.ingest(np.array([1.0, 2.0]), np.array([5, 6], np.uint64), np.array([0, 0], np.int32))
    with pytest.raises(OverflowError):
        npi.ingest(np.array([3.0]), np.array([7], np.uint64), np.array([0], np.int32))
