"""Hand-made read streams with hand-computed expectations, run on both engines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kernels import (
    KIND_AREA,
    KIND_QUEUE,
    METHOD_LITTLE,
    METHOD_MEASURED,
    METHOD_NONE,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    ReferenceEngine,
    Topology,
    ZoneEngine,
)
from kernels.backends import choose

# Zone 0: a queue (reader 0 entry, reader 1 exit); zone 1: an area (reader 2 presence).
TOPO = Topology(
    reader_zone=np.array([0, 0, 1]),
    reader_role=np.array([ROLE_ENTRY, ROLE_EXIT, ROLE_PRESENCE]),
    zone_kind=np.array([KIND_QUEUE, KIND_AREA]),
    zone_timeout_s=np.array([1800.0, 60.0]),
)
ENTRY, EXIT, AREA = 0, 1, 2

# The compiled engine on both backends (kernels/backends.py: the ahead-of-time module the
# test session builds, and numba's JIT), and the plain-Python twin.
def compiled(backend: str) -> Any:
    def make(topo: Topology, **kw: Any) -> ZoneEngine:
        return ZoneEngine(topo, kernels=choose(backend), **kw)
    return make


ENGINES = {"numba-aot": compiled("aot"), "numba-jit": compiled("jit"),
           "reference": ReferenceEngine}


def feed(engine: Any, reads: list[tuple[float, int, int]]) -> None:
    ts, tag, reader = zip(*reads, strict=True) if reads else ((), (), ())
    engine.ingest(
        np.array(ts, dtype=np.float64),
        np.array(tag, dtype=np.uint64),
        np.array(reader, dtype=np.int32),
    )


@pytest.fixture(params=list(ENGINES.values()), ids=list(ENGINES))
def make(request: pytest.FixtureRequest) -> Any:
    def _make(**kw: Any) -> Any:
        kw.setdefault("max_tags", 1024)
        return request.param(TOPO, **kw)

    return _make


def test_enter_then_exit_measures_the_wait(make: Any) -> None:
    e = make(min_measured_waits=1)
    feed(e, [(100.0, 7, ENTRY), (101.0, 7, ENTRY)])  # a second entry read keeps the first
    m = e.tick(200.0)
    assert m.queue_length[0] == 1 and m.live_tags[0] == 1
    feed(e, [(400.0, 7, EXIT), (401.0, 7, EXIT)])  # a repeated exit read is not a new exit
    m = e.tick(402.0)
    assert m.queue_length[0] == 0
    assert m.wait_method[0] == METHOD_MEASURED and m.wait_s[0] == 300.0
    assert m.dwell_p50_s[0] == 300.0 and m.wait_samples[0] == 1
    assert m.throughput_per_min[0] == pytest.approx(1 / 5)  # one exit in the 5 min window
    assert m.arrivals_per_min[0] == 0.0  # its arrival (100) is older than the 5 min window
    assert np.isnan(m.queue_length[1]) and m.occupancy[1] == 0


def test_exit_only_tag_counts_as_throughput_without_wait(make: Any) -> None:
    e = make()
    e.tick(-300.0)  # running for a full rate window already: rates use all of it
    feed(e, [(10.0, 5, EXIT)])
    m = e.tick(11.0)
    assert m.throughput_per_min[0] == pytest.approx(1 / 5)
    assert m.wait_samples[0] == 0
    assert m.wait_method[0] == METHOD_LITTLE and m.wait_s[0] == 0.0  # empty queue


def test_few_measured_waits_fall_back_to_littles_law(make: Any) -> None:
    e = make(min_measured_waits=5)
    e.tick(-300.0)  # running for a full rate window already: rates use all of it
    # 10 tags join; 2 leave through the exit: 8 in the queue, 2 measured waits.
    feed(e, [(float(i), 100 + i, ENTRY) for i in range(10)])
    feed(e, [(60.0, 100, EXIT), (61.0, 101, EXIT)])
    m = e.tick(62.0)
    # Two exits are too little evidence of the service rate for Little's law either.
    assert m.queue_length[0] == 8 and m.wait_method[0] == METHOD_NONE
    assert np.isnan(m.wait_s[0])
    # Three more exits of tags whose entry read was missed: 5 exits in 5 min = 1/min.
    feed(e, [(62.5, 900, EXIT), (63.0, 901, EXIT), (63.5, 902, EXIT)])
    m = e.tick(64.0)
    assert m.queue_length[0] == 8
    assert m.wait_method[0] == METHOD_LITTLE
    assert m.wait_s[0] == pytest.approx(8 / (1.0 / 60))
    assert m.wait_samples[0] == 2


def test_queue_with_tags_but_no_exits_has_no_wait(make: Any) -> None:
    e = make()
    feed(e, [(0.0, 1, ENTRY)])
    m = e.tick(1.0)
    assert m.wait_method[0] == METHOD_NONE and np.isnan(m.wait_s[0])
    assert np.isnan(m.wait_forecast_s[0])


def test_fifo_clearing_needs_consecutive_witnesses(make: Any) -> None:
    e = make(fifo_slack_s=60.0, fifo_witnesses=3)
    # Tag 1 enters at 0 and its exit read is missed. Tags 2..4 enter at 200..202.
    feed(e, [(0.0, 1, ENTRY), (200.0, 2, ENTRY), (201.0, 3, ENTRY), (202.0, 4, ENTRY)])
    feed(e, [(500.0, 2, EXIT), (501.0, 3, EXIT)])
    assert e.tick(502.0).queue_length[0] == 2  # two witnesses are not enough
    feed(e, [(503.0, 4, EXIT)])
    m = e.tick(504.0)
    assert m.queue_length[0] == 0  # tag 1 cleared long before its 1800 s timeout
    assert m.throughput_per_min[0] == pytest.approx(3 / 5)  # a cleared tag is not an exit


def test_fifo_allows_overtakes_within_the_slack(make: Any) -> None:
    e = make(fifo_slack_s=60.0, fifo_witnesses=1)
    feed(e, [(0.0, 1, ENTRY), (30.0, 2, ENTRY)])
    feed(e, [(300.0, 2, EXIT)])  # tag 2 overtook tag 1 by 30 s < slack
    m = e.tick(301.0)
    # tag 1 stays (not cleared) but, being behind the FIFO frontier, is not counted as queueing
    assert m.occupancy[0] == 1 and m.live_tags[0] == 1 and m.queue_length[0] == 0
    feed(e, [(302.0, 1, EXIT)])
    m = e.tick(303.0)
    assert m.queue_length[0] == 0 and m.wait_samples[0] == 2


def test_timeout_departure_in_a_queue_and_an_area(make: Any) -> None:
    e = make()
    e.tick(-300.0)  # running for a full rate window already: rates use all of it
    feed(e, [(0.0, 1, ENTRY), (0.0, 2, AREA), (30.0, 2, AREA)])
    m = e.tick(90.0)
    assert m.occupancy[1] == 1  # unseen for 60 s: not more than the 60 s timeout
    m = e.tick(90.5)
    assert m.occupancy[1] == 0  # departed, dated at its last read (30): dwell 30 s
    assert m.dwell_p50_s[1] == 30.0 and m.throughput_per_min[1] == pytest.approx(1 / 5)
    assert e.tick(1800.0).queue_length[0] == 1
    m = e.tick(1800.5)
    assert m.queue_length[0] == 0 and m.throughput_per_min[0] == 0.0
    assert e.live_tags == 0


def test_area_dwell_percentiles(make: Any) -> None:
    e = make(window_s=10_000.0)
    # Ten visits with dwells 10, 20, ..., 100 s, each a first and a last read.
    reads = []
    for i in range(10):
        reads += [(0.0, 10 + i, AREA), (10.0 * (i + 1), 10 + i, AREA)]
    feed(e, reads)
    assert e.tick(30.0).occupancy[1] == 10
    m = e.tick(1000.0)
    assert m.occupancy[1] == 0 and m.wait_samples[1] == 10
    assert m.dwell_p50_s[1] == pytest.approx(55.0)  # numpy's linear interpolation
    assert m.dwell_p90_s[1] == pytest.approx(91.0)
    assert np.isnan(m.wait_s[1]) and m.wait_method[1] == METHOD_NONE


def test_moving_zones_ends_the_previous_visit(make: Any) -> None:
    e = make()
    feed(e, [(0.0, 1, AREA), (20.0, 1, AREA), (25.0, 1, ENTRY)])
    m = e.tick(26.0)
    assert m.occupancy[1] == 0 and m.dwell_p50_s[1] == 20.0
    assert m.queue_length[0] == 1


def test_out_of_order_reads_in_a_batch_are_sorted(make: Any) -> None:
    e = make(min_measured_waits=1)
    feed(e, [(50.0, 1, EXIT), (10.0, 1, ENTRY)])  # delivered exit first
    m = e.tick(51.0)
    assert m.wait_s[0] == 40.0 and m.queue_length[0] == 0


def test_late_read_never_makes_time_run_backwards(make: Any) -> None:
    e = make(min_measured_waits=1)
    feed(e, [(100.0, 1, ENTRY)])
    feed(e, [(40.0, 1, EXIT)])  # clock stepped back 60 s: applied at the last read
    m = e.tick(101.0)
    assert m.wait_s[0] == 0.0 and m.queue_length[0] == 0


def test_backwards_tick_holds_the_clock(make: Any) -> None:
    e = make()
    feed(e, [(0.0, 2, AREA)])
    assert e.tick(50.0).now == 50.0
    m = e.tick(10.0)
    assert m.now == 50.0 and m.occupancy[1] == 1


def test_bad_reads_are_skipped_and_counted(make: Any) -> None:
    e = make()
    e.ingest(
        np.array([1.0, np.nan, 2.0, 3.0]),
        np.array([0, 5, 6, 7], dtype=np.uint64),
        np.array([0, 0, 9, -1], dtype=np.int32),
    )
    assert e.bad_reads == 4 and e.reads == 0 and e.live_tags == 0


def test_empty_batch_and_empty_engine(make: Any) -> None:
    e = make()
    feed(e, [])
    m = e.tick(0.0)
    assert m.queue_length[0] == 0 and m.occupancy[1] == 0
    assert m.wait_s[0] == 0.0
    assert np.isnan(m.wait_forecast_s[0])  # no forecast before a full rate window has run
    assert e.tick(300.0).wait_forecast_s[0] == 0.0
    assert np.isnan(m.dwell_p50_s).all()


def test_full_table_evicts_the_stalest(make: Any) -> None:
    e = make(max_tags=64)  # evicts 1 at a time (64 // 64)
    feed(e, [(float(i), 1000 + i, AREA) for i in range(64)])
    feed(e, [(100.0, 1000, AREA)])  # refresh the oldest: tag 1001 is now the stalest
    feed(e, [(101.0, 5, AREA)])
    assert e.evictions == 1 and e.live_tags == 64
    feed(e, [(102.0, 1001, AREA)])  # comes back as a new visit, evicting 1002
    m = e.tick(62.0)  # before anyone's 60 s timeout
    assert e.evictions == 2 and m.occupancy[1] == 64 and e.live_tags == 64


def test_forecast_grows_when_arrivals_outpace_service(make: Any) -> None:
    e = make(min_measured_waits=1, horizon_s=1200.0)
    e.tick(-300.0)  # a full rate window of history (no forecast before)
    # 20 arrivals and 5 exits (waits 100 s) in the last 5 minutes.
    feed(e, [(float(i), 100 + i, ENTRY) for i in range(20)])
    feed(e, [(100.0 + i, 100 + i, EXIT) for i in range(5)])
    m = e.tick(105.0)
    lam, mu = 20 / 300, 5 / 300
    assert m.queue_length[0] == 15 and m.wait_s[0] == 100.0
    # 1200 s of service boards mu * 1200 = 20 guests: the 15 queueing and 5 newcomers; the
    # last of them joins 5 / lam = 75 s from now and boards 1200 s from now.
    assert m.wait_forecast_s[0] == pytest.approx(1200.0 - (mu * 1200.0 - 15) / lam)
    assert m.wait_forecast_s[0] > 10 * m.wait_s[0]


def test_forecast_reads_the_boarding_guest_off_the_line(make: Any) -> None:
    e = make(min_measured_waits=1, horizon_s=600.0)
    e.tick(-300.0)  # a full rate window of history
    # 100 guests joined at 0..99 s; the first 5 boarded at 200..204 s.
    feed(e, [(float(i), 100 + i, ENTRY) for i in range(100)])
    feed(e, [(200.0 + i, 100 + i, EXIT) for i in range(5)])
    m = e.tick(205.0)
    assert m.queue_length[0] == 95 and m.wait_s[0] == 200.0
    # 5 boardings per 300 s: 10 more in 600 s, so the guest who joined at 15 s boards at
    # 805 s, after a wait of 790 s.
    assert m.wait_forecast_s[0] == pytest.approx(790.0)


def test_topology_validation() -> None:
    with pytest.raises(ValueError, match="reader_zone"):
        Topology(np.array([2]), np.array([0]), np.array([1]), np.array([60.0]))
    with pytest.raises(ValueError, match="zone_timeout_s"):
        Topology(np.array([0]), np.array([0]), np.array([1]), np.array([0.0]))
    with pytest.raises(ValueError, match="reader_role"):
        Topology(np.array([0]), np.array([5]), np.array([1]), np.array([60.0]))
    src = np.array([0], dtype=np.int32)
    topo = Topology(src, np.array([0]), np.array([1]), np.array([60.0]))
    assert topo.reader_zone.dtype == np.int32 and src.flags.writeable  # a private copy


def test_fresh_engine_averages_rates_over_the_time_it_has_run(make: Any) -> None:
    # A gateway that started 30 s ago has seen 30 s of flow, not 300: dividing by the full
    # rate window would make its throughput look 10x too low and Little's-law waits 10x long.
    e = make(rate_window_s=300.0)
    e.tick(0.0)
    feed(e, [(float(i), 100 + i, ENTRY) for i in range(10)]
         + [(10.0 + i, 100 + i, EXIT) for i in range(5)])
    m = e.tick(30.0)
    assert m.throughput_per_min[0] == pytest.approx(5 * 60.0 / 30.0)
    assert m.arrivals_per_min[0] == pytest.approx(10 * 60.0 / 30.0)
    # ...but never over less than a tenth of the window, so one early exit is no flood.
    e2 = make(rate_window_s=300.0)
    e2.tick(0.0)
    feed(e2, [(0.5, 7, EXIT)])
    assert e2.tick(1.0).throughput_per_min[0] == pytest.approx(60.0 / 30.0)
    # After a full window the whole window is used.
    assert e.tick(400.0).throughput_per_min[0] == 0.0


def test_named_state_holds_the_engines_own_arrays() -> None:
    """The kernels' namedtuples (kernels/state.py) are views of nothing: each field is the
    engine attribute itself, so in-place writes (kernels, restore) reach both, and a snapshot
    holds the same arrays as before the tuples existed."""
    e = ZoneEngine(TOPO, max_tags=64)
    attrs = {id(v) for v in vars(e).values() if isinstance(v, np.ndarray)}
    attrs |= {id(a) for a in TOPO.arrays().values()}
    tuples = [v for k, v in vars(e).items() if k.startswith("_k_")]
    assert len(tuples) == 9
    for t in tuples:
        for name, value in t._asdict().items():
            if isinstance(value, np.ndarray):
                assert id(value) in attrs, f"{type(t).__name__}.{name} is no engine array"
    snap = e.snapshot()
    assert not any(k.startswith("k_") for k in snap)
    feed(e, [(1.0, 5, ENTRY), (2.0, 5, EXIT), (3.0, 6, AREA)])
    fresh = ZoneEngine(TOPO, max_tags=64)
    fresh.restore(e.snapshot(), 3.0)
    assert fresh._k_rows.key is fresh._row_key and (fresh._row_key != 0).sum() == 2
    np.testing.assert_equal(fresh.tick(4.0).arrays(), e.tick(4.0).arrays())


def test_read_only_read_columns_give_the_same_state() -> None:
    """A read-only batch is another numba type than the one the kernel was bound to
    (_jit.FixedCall, backends.AotCall): as_read_columns copies it, with the same result."""
    reads = [(1.0, 5, ENTRY), (1.5, 7, ENTRY), (2.0, 5, EXIT), (3.0, 6, AREA), (4.0, 7, EXIT)]
    ts = np.array([r[0] for r in reads])
    tag = np.array([r[1] for r in reads], dtype=np.uint64)
    reader = np.array([r[2] for r in reads], dtype=np.int32)
    a, b = ZoneEngine(TOPO, max_tags=64), ZoneEngine(TOPO, max_tags=64)
    a.ingest(ts, tag, reader)
    b.ingest(ts[:2].copy(), tag[:2].copy(), reader[:2].copy())  # binds the entry point
    b.ingest(ts[2:4].copy(), tag[2:4].copy(), reader[2:4].copy())  # ... and calls it
    for arr in (ts, tag, reader):
        arr.setflags(write=False)
    b.ingest(ts[4:], tag[4:], reader[4:])  # read-only: copied
    snap_a, snap_b = a.snapshot(), b.snapshot()
    for k in snap_a:
        if k != "fingerprint":
            np.testing.assert_array_equal(snap_a[k], snap_b[k], err_msg=k)
    np.testing.assert_equal(a.tick(5.0).arrays(), b.tick(5.0).arrays())


def test_fixed_call_binds_the_entry_point_or_keeps_the_dispatcher() -> None:
    """_jit.FixedCall: after its first call it calls the compiled entry point for those
    argument types; where numba keeps no such overload (another numba's internals) it keeps
    calling the dispatcher, and both give the kernel's result."""
    from kernels._jit import FixedCall, jit

    @jit
    def add(a: np.ndarray, x: float) -> float:
        return float(a.sum()) + x

    a = np.arange(4.0)
    bound = FixedCall(add)
    assert bound.call(a, 1.0) == 7.0
    assert bound.call is not add and bound.call(a, 2.0) == 8.0  # the entry point

    class NoOverloads:  # a dispatcher without the internals FixedCall looks for
        def __init__(self, kernel: object) -> None:
            self.kernel = kernel

        def __call__(self, *args: object) -> object:
            return self.kernel(*args)  # type: ignore[operator]

    fallback = FixedCall(NoOverloads(add))
    assert fallback.call(a, 1.0) == 7.0
    assert fallback.call is fallback.kernel and fallback.call(a, 3.0) == 9.0
