"""The posted wait (wait_joining_s) of a ride that loads in batches, the service rate around a
stop, and a gateway that starts on a line it never saw enter (warming up).

Small seeded simulations in numpy, compared with their own ground truth; the helpers of
window_stats are called directly where a number can be worked out by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernels import (
    KIND_QUEUE,
    METHOD_AT_LEAST,
    METHOD_MEASURED,
    QL_WARMING,
    ROLE_ENTRY,
    ROLE_EXIT,
    ReferenceEngine,
    Topology,
    ZoneEngine,
)
from kernels.codes import DEP_EXIT, DEP_FIFO
from kernels.window_stats import dispatch_rate, joining_wait, serving_time

QUEUE = Topology(
    reader_zone=np.array([0, 0]),
    reader_role=np.array([ROLE_ENTRY, ROLE_EXIT]),
    zone_kind=np.array([KIND_QUEUE]),
    zone_timeout_s=np.array([3600.0]),
)
ENGINES = [ZoneEngine, ReferenceEngine]


def batch_ride(
    rng: np.random.Generator, rate: np.ndarray, seats: int, every_s: float, walk_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ride dispatching ``seats`` every ``every_s`` s; guests join at ``rate[k]``/s in second
    k, walk ``walk_s`` to the platform and take the first free seat FIFO. Returns the
    arrival and boarding times and the seat times."""
    arrive = np.sort(np.concatenate([k + rng.random(rng.poisson(r)) for k, r in
                                     enumerate(rate)]))
    seat_t = np.repeat(np.arange(rng.uniform(0, every_s), rate.size + 7200, every_s), seats)
    leave = np.empty(arrive.size)
    k = -1
    for i, a in enumerate(arrive):
        k = max(k + 1, int(np.searchsorted(seat_t, a + walk_s)))
        leave[i] = seat_t[k]
    return arrive, leave, seat_t


def joining_truth(arrive: np.ndarray, leave: np.ndarray, seat_t: np.ndarray, walk_s: float,
                  now: float) -> float:
    """The wait of a guest joining at ``now`` behind everyone who joined before."""
    ahead = int(np.searchsorted(arrive, now, side="right"))
    prev = int(np.searchsorted(seat_t, leave[ahead - 1], side="left")) if ahead else -1
    own = max(prev + 1, int(np.searchsorted(seat_t, now + walk_s)))
    return float(seat_t[own] - now)


def run(engine: Any, arrive: np.ndarray, leave: np.ndarray, until: float, step: float = 10.0,
        read: float = 1.0, seed: int = 0) -> list[tuple[float, Any]]:
    rng = np.random.default_rng(seed)
    n = arrive.size
    ts = np.concatenate([arrive, leave])
    tag = np.concatenate([np.arange(1, n + 1), np.arange(1, n + 1)]).astype(np.uint64)
    reader = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int32)
    keep = rng.random(ts.size) < read
    ts, tag, reader = ts[keep], tag[keep], reader[keep]
    order = np.argsort(ts, kind="stable")
    ts, tag, reader = ts[order], tag[order], reader[order]
    out = []
    for now in np.arange(step, until + step / 2, step):
        sel = (ts > now - step) & (ts <= now)
        engine.ingest(ts[sel], tag[sel], reader[sel])
        out.append((float(now), engine.tick(float(now))))
    return out


def test_a_short_line_of_a_batch_ride_posts_the_walk_and_the_next_dispatch() -> None:
    # Trains of 20 every 40 s (0.5/s), a 60 s walk, 0.4/s joining: 25-50 guests between the
    # readers, most of them walking; a guest joining boards the first train after the walk
    # (60-100 s). Queue length / exit rate would say 60-125 s: the exits run at the demand
    # (0.4/s), and the walkers ahead hold nobody up.
    rng = np.random.default_rng(1)
    arrive, leave, seat_t = batch_ride(rng, np.full(5400, 0.4), 20, 40.0, 60.0)
    est, true = [], []
    for now, m in run(ZoneEngine(QUEUE, max_tags=4096), arrive, leave, 5400.0, read=0.9):
        if now < 1200:
            continue
        est.append(m.wait_joining_s[0])
        true.append(joining_truth(arrive, leave, seat_t, 60.0, now))
    e, t = np.array(est), np.array(true)
    assert np.isfinite(e).all()
    err = np.abs(e - t).sum() / t.sum()
    assert err < 0.13, err  # ~0.19 with queue length / service rate
    assert abs(e.mean() / t.mean() - 1) < 0.06, (e.mean(), t.mean())


def test_a_surge_after_a_lull_is_served_at_the_capacity_remembered() -> None:
    # 0.7/s against 0.5/s for 30 min (a busy line: ~12 min waits), 0.05/s for 30 min (the
    # line drains, then the exits measure the lull's demand), then 0.45/s again: the line
    # that forms is served at the capacity seen in the busy half hour, not at the lull's rate.
    rng = np.random.default_rng(2)
    rate = np.concatenate([np.full(1800, 0.7), np.full(1800, 0.05), np.full(1500, 0.45)])
    arrive, leave, seat_t = batch_ride(rng, rate, 20, 40.0, 60.0)
    est, true = [], []
    for now, m in run(ZoneEngine(QUEUE, max_tags=4096), arrive, leave, 5100.0, read=0.9):
        if now < 3900:
            continue
        est.append(m.wait_joining_s[0])
        true.append(joining_truth(arrive, leave, seat_t, 60.0, now))
    e, t = np.array(est), np.array(true)
    err = np.abs(e - t).sum() / t.sum()
    assert err < 0.15, err
    assert e.max() < 1.6 * t.max(), (e.max(), t.max())


def test_joining_wait_by_hand() -> None:
    line = np.array([0.0, 1.0, 2.0, 3.0])  # four guests at the platform long ago
    # at the platform: they board at 0.5/s from now on (2 s apart, the first now), the
    # joiner 2 s after the last: 4 / 0.5 = 8 s
    assert joining_wait(100.0, line, 4.0, 0.5, 10, 5, 5.0, False) == pytest.approx(8.0)
    # all four joined just now: they are walking (30 s) and so is the joiner
    walking = np.array([99.0, 99.5, 99.8, 100.0])
    assert joining_wait(100.0, walking, 4.0, 0.5, 10, 5, 30.0, False) == pytest.approx(
        max(30.0, 99.0 + 30.0 + 4 * 2.0 - 100.0))
    assert joining_wait(100.0, line[:0], 0.0, 0.5, 10, 5, 30.0, False) == 30.0  # empty line
    assert np.isnan(joining_wait(100.0, line, 4.0, 0.5, 10, 5, 5.0, True))  # stalled
    assert np.isnan(joining_wait(100.0, line, 4.0, 0.5, 4, 5, 5.0, False))  # no evidence


def test_serving_time_after_a_stop_counts_one_dispatch_interval_for_the_first_train() -> None:
    # 20 exits (one train) after a 20 min stop, 5 s ago: no gap between them yet, so the
    # first train's gap counts as stall_s (60 s), and the 5 s since: 20 / 65 s, not 19 / 5 s
    assert serving_time(1200.0, 0.0, 5.0, 60.0, 20) == pytest.approx(65.0)
    # two trains 40 s apart: the stop before the first counts as one interval (40 s) and
    # the 10 s since the last train (shorter than an interval) not at all: 40 exits / 80 s
    assert 40.0 + serving_time(1200.0, 40.0, 10.0, 60.0, 40) == pytest.approx(80.0)
    # silent for 55 s after 40 s intervals: 15 s of it did not serve
    assert serving_time(40.0, 40.0, 55.0, 60.0, 40) == pytest.approx(55.0)
    assert serving_time(np.inf, 0.0, 0.0, 60.0, 0) == 0.0


def test_dispatch_rate_is_the_fullest_train_per_interval() -> None:
    # trains every 40 s carrying 12, 20, 7 and 15 guests (exits read at once): 20 / 40 s
    sizes = [12, 20, 7, 15]
    t = np.concatenate([np.full(s, 100.0 + 40.0 * i) for i, s in enumerate(sizes)])
    cap = 64
    dep_t = np.zeros((1, cap))
    dep_kind = np.full((1, cap), DEP_EXIT, dtype=np.int8)
    dep_t[0, : t.size] = t
    dep_kind[0, 3] = DEP_FIFO  # a departure without an exit read is no exit
    dep_n = np.array([t.size], dtype=np.int64)
    residual = 40.0 * 40.0 * 3 / (2 * 120.0)  # sum g^2 / 2 sum g over the 3 gaps
    assert dispatch_rate(dep_t, dep_kind, dep_n, 0, 0.0, 60.0, residual) == pytest.approx(0.5)
    assert dispatch_rate(dep_t, dep_kind, dep_n, 0, 200.0, 60.0, residual) == 0.0  # 1 train


@pytest.mark.parametrize("cls", ENGINES, ids=["numba", "reference"])
def test_a_line_already_there_at_start_is_marked_warming_up(cls: Any) -> None:
    e = cls(QUEUE, max_tags=1024, min_measured_waits=3)
    e.tick(0.0)
    # 40 guests who entered before the engine started board at 0.5/s from t = 10; 10 guests
    # join from t = 5 on and board after them
    old = [(10.0 + 2 * i, 1000 + i, 1) for i in range(40)]
    new = [(5.0 + i, 1 + i, 0) for i in range(10)]
    reads = sorted(old + new)
    ts, tag, reader = (np.array(c) for c in zip(*reads, strict=True))
    e.ingest(ts.astype(float), tag.astype(np.uint64), reader.astype(np.int32))
    m = e.tick(90.0)
    assert m.queue_length_method[0] == QL_WARMING
    assert m.wait_method[0] == METHOD_AT_LEAST
    assert m.wait_s[0] == pytest.approx(88.0)  # the latest exit, 88 s after the start
    assert m.queue_length[0] == 10.0  # the guests it saw enter: a lower bound
    # the first guests who entered after the start board: warming up is over
    exits = [(100.0 + i, 1 + i, 1) for i in range(4)]
    ts, tag, reader = (np.array(c) for c in zip(*exits, strict=True))
    e.ingest(ts.astype(float), tag.astype(np.uint64), reader.astype(np.int32))
    m = e.tick(105.0)
    assert m.queue_length_method[0] != QL_WARMING
    assert m.wait_method[0] == METHOD_MEASURED


def test_gateway_names_every_method_the_kernels_produce() -> None:
    import kernels
    from agent import contract, gateway

    gateway.WAIT_METHOD_NAMES.clear()
    gateway.QUEUE_METHOD_NAMES.clear()
    from agent.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "minimal.toml")
    gateway.engine_for(cfg, max_tags=64)
    waits = {v for k, v in vars(kernels).items() if k.startswith("METHOD_")}
    lengths = {v for k, v in vars(kernels).items() if k.startswith("QL_")}
    assert set(gateway.WAIT_METHOD_NAMES) == waits
    assert set(gateway.QUEUE_METHOD_NAMES) == lengths
    assert set(gateway.WAIT_METHOD_NAMES.values()) == set(contract.WAIT_METHODS)
    assert set(gateway.QUEUE_METHOD_NAMES.values()) == set(contract.QUEUE_LENGTH_METHODS)



@pytest.mark.parametrize("cls", ENGINES, ids=["numba", "reference"])
def test_a_stopped_ride_goes_blank_after_two_missed_dispatches(cls: Any) -> None:
    # Trains of 10 every 40 s for 10 min with a line of 30 guests, then the ride stops: the
    # posted wait goes blank once two dispatches (80 s) are missed, not after 2 * stall_s
    e = cls(QUEUE, max_tags=4096)
    e.tick(0.0)
    reads, tag = [], 1
    for k in range(15):
        for _ in range(10):
            reads.append((40.0 * k - 300.0, tag, 0))
            reads.append((40.0 * k + 0.1, tag, 1))
            tag += 1
    for k in range(30):  # still in line when the ride stops
        reads.append((300.0 + k, tag + k, 0))
    ts, tg, reader = (np.array(c) for c in zip(*sorted(r for r in reads if r[0] > 0),
                                               strict=True))
    e.ingest(ts.astype(float), tg.astype(np.uint64), reader.astype(np.int32))
    last = 40.0 * 14 + 0.1
    assert np.isfinite(e.tick(last + 70.0).wait_joining_s[0])
    assert np.isnan(e.tick(last + 90.0).wait_joining_s[0])
    # it restarts 20 min later: the first train (10 exits read at once) is no rate yet, the
    # second one 40 s later is
    for k, at in enumerate((last + 1200.0, last + 1240.0)):
        ts = np.full(10, at)
        tg = np.arange(tag + 10 * k, tag + 10 * k + 10, dtype=np.uint64)
        e.ingest(ts, tg, np.ones(10, np.int32))
        m = e.tick(at + 1.0)
        assert np.isnan(m.wait_joining_s[0]) if k == 0 else np.isfinite(m.wait_joining_s[0])
