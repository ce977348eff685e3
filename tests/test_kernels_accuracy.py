"""Accuracy on simulated radio: BLE hysteresis under noise and lost adverts, and
capture-recapture read-rate correction of a queue whose readers miss tags.

The simulations are small, seeded and use only numpy; each compares the engine with the
ground truth of the simulation (not with the reference twin).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import (
    KIND_AREA,
    KIND_QUEUE,
    METHOD_MEASURED,
    QL_CORRECTED,
    ROLE_ENTRY,
    ROLE_EXIT,
    ROLE_PRESENCE,
    ReferenceEngine,
    Topology,
    ZoneEngine,
)

TWO_AREAS = Topology(
    reader_zone=np.array([0, 1]),
    reader_role=np.array([ROLE_PRESENCE, ROLE_PRESENCE]),
    zone_kind=np.array([KIND_AREA, KIND_AREA]),
    zone_timeout_s=np.array([30.0, 30.0]),
)


def adverts(
    rng: np.random.Generator, t0: float, t1: float, mean_dbm: float, loss: float
) -> tuple[np.ndarray, np.ndarray]:
    """1 Hz adverts heard by one scanner: times (s) and RSSI (dBm, sigma 5 dB, whole dBm)."""
    t = np.arange(t0, t1, 1.0) + rng.uniform(0, 0.2, int(np.ceil(t1 - t0)))[: int(t1 - t0)]
    keep = rng.random(t.size) >= loss
    t = t[keep]
    return t, np.round(mean_dbm + rng.normal(0, 5.0, t.size))


def zone_track(engine: ZoneEngine, ts: np.ndarray, reader: np.ndarray, rssi: np.ndarray) -> list:
    """Feed a single tag's adverts one second at a time; return its zone after each second."""
    order = np.argsort(ts, kind="stable")
    ts, reader, rssi = ts[order], reader[order], rssi[order]
    zones = []
    for sec in range(int(ts.max()) + 1):
        sel = (ts >= sec) & (ts < sec + 1)
        engine.ingest(ts[sel], np.ones(sel.sum(), np.uint64), reader[sel], rssi[sel])
        occ = engine.tick(sec + 1.0).occupancy
        zones.append(int(np.argmax(occ)) if occ.sum() else -1)
    return zones


def test_ble_hysteresis_stops_flapping_and_still_follows_a_move() -> None:
    rng = np.random.default_rng(7)
    # 10 min standing in zone 0 (scanner 0 at -62 dBm, neighbour at -68: 6 dB apart, at the
    # noise level), then walking to zone 1 for 5 min (-80 vs -60). 50 % of adverts lost.
    a0, r0 = adverts(rng, 0, 600, -62, 0.5)
    b0, s0 = adverts(rng, 0, 600, -68, 0.5)
    a1, r1 = adverts(rng, 600, 900, -80, 0.5)
    b1, s1 = adverts(rng, 600, 900, -60, 0.5)
    ts = np.concatenate([a0, b0, a1, b1])
    reader = np.concatenate(
        [np.zeros(a0.size), np.ones(b0.size), np.zeros(a1.size), np.ones(b1.size)]
    ).astype(np.int32)
    rssi = np.concatenate([r0, s0, r1, s1]).astype(np.float32)

    zones = zone_track(ZoneEngine(TWO_AREAS, max_tags=16), ts, reader, rssi)
    switches = sum(1 for a, b in zip(zones, zones[1:], strict=False) if a != b)
    assert zones[5:600].count(0) == len(zones[5:600])  # stays put for 10 minutes
    first_in_1 = zones.index(1, 600)
    assert first_in_1 - 600 < 20  # follows the move within 20 s
    assert all(z == 1 for z in zones[first_in_1:])
    assert switches == 1

    # The same adverts with a strongest-last-advert rule (no smoothing, no margin) flap.
    naive = ZoneEngine(
        TWO_AREAS,
        max_tags=16,
        ble_alpha_min=1.0,
        ble_margin_db=0.0,
        ble_min_reads=1,
        ble_decay_db_per_s=0.0,
    )
    naive_zones = zone_track(naive, ts, reader, rssi)
    assert sum(1 for a, b in zip(naive_zones, naive_zones[1:], strict=False) if a != b) > 20


QUEUE = Topology(
    reader_zone=np.array([0, 0]),
    reader_role=np.array([ROLE_ENTRY, ROLE_EXIT]),
    zone_kind=np.array([KIND_QUEUE]),
    zone_timeout_s=np.array([2700.0]),
)


def simulate_queue(
    rng: np.random.Generator, p_entry: float, p_exit: float, minutes: int = 90
) -> tuple[list[tuple[float, int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """A ride's FIFO queue building up: Poisson arrivals 8/min, loading one guest per 9-11 s
    (~6/min). Returns reads (missed with the given probabilities), arrival and exit times and
    the true wait of each guest."""
    n = int(8 * minutes)
    arrive = np.cumsum(rng.exponential(7.5, n))
    leave = np.empty(n)
    free_at = 0.0
    for i in range(n):
        free_at = max(free_at, arrive[i]) + rng.uniform(9.0, 11.0)
        leave[i] = free_at
    reads = []
    for i in range(n):
        if rng.random() < p_entry:
            reads.append((arrive[i], i + 1, 0))
        if rng.random() < p_exit:
            reads.append((leave[i], i + 1, 1))
    return reads, arrive, leave, leave - arrive


def run_queue(engine: ZoneEngine, reads: list, until: float) -> list:
    reads.sort()
    ts = np.array([r[0] for r in reads])
    tag = np.array([r[1] for r in reads], dtype=np.uint64)
    reader = np.array([r[2] for r in reads], dtype=np.int32)
    out = []
    for sec in range(0, int(until), 10):
        sel = (ts >= sec) & (ts < sec + 10)
        engine.ingest(ts[sel], tag[sel], reader[sel])
        out.append((sec + 10.0, engine.tick(sec + 10.0)))
    return out


def test_capture_recapture_corrects_missed_reads() -> None:
    rng = np.random.default_rng(3)
    reads, arrive, leave, wait = simulate_queue(rng, p_entry=0.8, p_exit=0.85)
    engine = ZoneEngine(QUEUE, max_tags=4096, fifo_slack_s=60.0)
    ticks = run_queue(engine, reads, until=90 * 60)
    errs, raw_errs, wait_errs = [], [], []
    for now, m in ticks:
        if now < 30 * 60:  # warm-up: windows filling
            continue
        true_len = np.sum((arrive <= now) & (leave > now))
        errs.append(abs(m.queue_length[0] - true_len) / true_len)
        raw_errs.append(abs(m.occupancy[0] - true_len) / true_len)
        # wait_s is the wait of the guests boarding now: those who left in the last 2 min
        recent = (leave <= now) & (leave > now - 120)
        wait_errs.append(abs(m.wait_s[0] - np.median(wait[recent])) / np.median(wait[recent]))
        assert m.wait_method[0] == METHOD_MEASURED
    last = ticks[-1][1]
    assert abs(last.entry_read_rate[0] - 0.8) < 0.1
    assert abs(last.exit_read_rate[0] - 0.85) < 0.1
    true_thr = np.sum((leave > 90 * 60 - 300) & (leave <= 90 * 60)) / 5
    assert abs(last.throughput_per_min[0] - true_thr) / true_thr < 0.2
    assert np.mean(errs) < 0.08  # corrected queue length: mean relative error
    assert np.mean(errs) < np.mean(raw_errs)  # and better than the raw count
    assert np.mean(wait_errs) < 0.05  # measured wait vs the true median wait


def test_reference_agrees_on_the_queue_simulation() -> None:
    rng = np.random.default_rng(5)
    reads, *_ = simulate_queue(rng, p_entry=0.75, p_exit=0.9, minutes=30)
    fast = run_queue(ZoneEngine(QUEUE, max_tags=4096), list(reads), until=30 * 60)
    slow = run_queue(ReferenceEngine(QUEUE, max_tags=4096), list(reads), until=30 * 60)  # type: ignore[arg-type]
    for (_, a), (_, b) in zip(fast, slow, strict=True):
        for name, got in a.arrays().items():
            np.testing.assert_allclose(got, b.arrays()[name], rtol=1e-12, equal_nan=True)


def test_wait_joining_predicts_the_wait_of_a_guest_joining_now() -> None:
    # The line builds (8/min against ~6/min): the guests boarding now joined long ago, so
    # wait_s lags the wait of a guest walking up; wait_joining_s reads it off the line.
    rng = np.random.default_rng(3)
    reads, arrive, leave, wait = simulate_queue(rng, p_entry=0.8, p_exit=0.85)
    ticks = run_queue(ZoneEngine(QUEUE, max_tags=4096, fifo_slack_s=60.0), reads, 90 * 60)
    joining, boarding, truth = [], [], []
    for now, m in ticks:
        nxt = np.searchsorted(arrive, now)
        if now < 20 * 60 or nxt >= arrive.size:
            continue
        truth.append(wait[nxt])  # the next guest to join
        joining.append(m.wait_joining_s[0])
        boarding.append(m.wait_s[0])
    t, j, b = np.array(truth), np.array(joining), np.array(boarding)
    assert np.isfinite(j).all()
    err_j = np.abs(j - t).sum() / t.sum()
    err_b = np.abs(b - t).sum() / t.sum()
    assert err_j < 0.10, err_j
    assert err_j < err_b / 2, (err_j, err_b)


def test_a_crowd_already_queueing_at_start_is_not_read_as_missed_entries() -> None:
    # 95 % readers; the engine starts an hour into a building line (~120 guests queueing
    # unread at the entry). Their exits come first and look like missed entry reads; counted,
    # they would drive the entry read rate toward 0 and multiply the line.
    rng = np.random.default_rng(8)
    reads, arrive, leave, _ = simulate_queue(rng, p_entry=0.95, p_exit=0.95, minutes=120)
    t0 = 60 * 60
    late = [r for r in reads if r[0] >= t0]
    engine = ZoneEngine(QUEUE, max_tags=4096, fifo_slack_s=60.0)
    engine.tick(float(t0))
    ql, occ, true = [], [], []
    for now, m in run_queue(engine, late, until=120 * 60):
        if now <= t0:
            continue
        true.append(np.sum((arrive <= now) & (leave > now)))
        ql.append(m.queue_length[0])
        occ.append(m.occupancy[0])
    q, o, tr = np.array(ql), np.array(occ), np.array(true, dtype=float)
    assert (q <= 1.1 * tr).all(), (q / tr).max()
    assert np.abs(q - tr).mean() <= np.abs(o - tr).mean() + 0.02 * tr.mean()
    last = engine.tick(120 * 60.0)
    assert last.queue_length_method[0] == QL_CORRECTED
    assert abs(last.entry_read_rate[0] - 0.95) < 0.04 and last.entry_read_rate_sd[0] < 0.03
    assert 1.0 <= last.queue_length_factor[0] < 1 / 0.9


def test_few_recaptures_shrink_the_correction_toward_none() -> None:
    e = ZoneEngine(QUEUE, max_tags=4096, min_recaptures=2, min_measured_waits=1)
    e.tick(0.0)
    # 4 guests read at both ends, 4 more only at the exit. Exits count from the 3rd measured
    # one (fifo_witnesses: the guests leaving from then on entered while the engine watched),
    # so 2 of 6 exits were read at the entry: the raw rate says 1/3 (x3)
    reads = [(float(i), i, 0) for i in range(1, 5)]
    reads += [(100.0 + i, i, 1) for i in range(1, 9)]
    e.ingest(*(np.array(c, dtype=d) for c, d in zip(zip(*reads, strict=True),
                                                     (float, np.uint64, np.int32), strict=True)))
    e.ingest(np.array([200.0, 201.0]), np.array([20, 21], np.uint64), np.array([0, 0], np.int32))
    m = e.tick(202.0)
    assert m.queue_length_method[0] == QL_CORRECTED
    # (2 + 10) / (6 + 10) = 0.75, plus one standard error (0.11): a factor ~1.17, not 3
    assert m.entry_read_rate[0] == pytest.approx(0.75)
    assert m.entry_read_rate_sd[0] == pytest.approx((0.75 * 0.25 / 16) ** 0.5)
    assert 1.0 < m.queue_length_factor[0] < 1.2
    assert m.queue_length[0] == pytest.approx(2 * m.queue_length_factor[0])
    assert m.queue_length[0] < m.occupancy[0] * 1.2


def noisy_reads(
    rng: np.random.Generator, reads: list, dup_prob: float, strays_per_s: float, until: float
) -> list:
    """Each read repeated (geometric, mean dup_prob / (1 - dup_prob)), plus single stray reads
    of passers-by (tags that belong to no guest) at both readers."""
    out = []
    for t, k, r in reads:
        out.append((t, k, r))
        while rng.random() < dup_prob:
            t += 0.3
            out.append((t, k, r))
    n = rng.poisson(strays_per_s * until)
    for i in range(n):
        out.append((rng.uniform(0, until), 10**6 + i, int(rng.integers(0, 2))))
    return out


def test_stray_reads_are_discounted_by_their_single_reads() -> None:
    # 60 % readers that repeat a lingering band (half the reads come twice or more) and read
    # passers-by once now and then (0.01/s per reader, ~7 % of the reads): single-read
    # entry-only tags that never exit are partly strays, and exit-only single reads too.
    # Without strays the discount must cost little (stray_z=100: no discount at all).
    def mean_errors(strays_per_s: float, **kw: float) -> tuple[float, float]:
        rng = np.random.default_rng(11)
        reads, arrive, leave, _ = simulate_queue(rng, p_entry=0.6, p_exit=0.6, minutes=90)
        reads = noisy_reads(rng, reads, dup_prob=0.5, strays_per_s=strays_per_s, until=5400)
        engine = ZoneEngine(QUEUE, max_tags=8192, fifo_slack_s=60.0, **kw)  # type: ignore[arg-type]
        errs = []
        for now, m in run_queue(engine, reads, 5400):
            if now < 45 * 60:
                continue
            true_len = np.sum((arrive <= now) & (leave > now))
            errs.append((m.queue_length[0] - true_len) / true_len)
        return float(np.mean(errs)), float(np.mean(np.abs(errs)))

    bias, mae = mean_errors(0.02)
    assert abs(bias) < 0.03 and mae < 0.05, (bias, mae)  # 25 % over without the discount
    assert mean_errors(0.02, stray_z=100.0)[1] > 0.07
    clean_bias, clean_mae = mean_errors(0.0)
    assert clean_mae < mean_errors(0.0, stray_z=100.0)[1] + 0.02, clean_mae


def test_reference_agrees_with_strays_and_repeats() -> None:
    rng = np.random.default_rng(12)
    reads, *_ = simulate_queue(rng, p_entry=0.6, p_exit=0.6, minutes=40)
    reads = noisy_reads(rng, reads, dup_prob=0.5, strays_per_s=0.05, until=40 * 60)
    kw = dict(max_tags=4096, min_recaptures=5, read_rate_window_s=1200.0)
    fast = run_queue(ZoneEngine(QUEUE, **kw), list(reads), until=40 * 60)  # type: ignore[arg-type]
    slow = run_queue(ReferenceEngine(QUEUE, **kw), list(reads), until=40 * 60)  # type: ignore[arg-type]
    for (_, a), (_, b) in zip(fast, slow, strict=True):
        for name, got in a.arrays().items():
            np.testing.assert_allclose(got, b.arrays()[name], rtol=1e-12, equal_nan=True)


def test_joining_wait_of_a_draining_line_is_not_floored_by_old_waits() -> None:
    # The engine starts on a long line that then drains (10/min join for an hour against
    # ~6/min service, then 3/min). Every wait it measures is long, and a wait joining now is
    # shorter than any of them: the shortest measured wait is no walk (nobody walked into an
    # empty line), so it must not floor wait_joining_s.
    rng = np.random.default_rng(4)
    arrive = np.cumsum(rng.exponential(6.0, 600))
    arrive = np.concatenate([arrive, arrive[-1] + np.cumsum(rng.exponential(20.0, 400))])
    leave = np.empty(arrive.size)
    free_at = 0.0
    for i in range(arrive.size):
        free_at = max(free_at, arrive[i]) + rng.uniform(9.0, 11.0)
        leave[i] = free_at
    reads = []
    for i in range(arrive.size):
        if rng.random() < 0.9:
            reads.append((arrive[i], i + 1, 0))
        if rng.random() < 0.9:
            reads.append((leave[i], i + 1, 1))
    t0 = arrive[599]  # the line is ~230 guests long (a 40 min wait), and drains from here
    late = [r for r in reads if r[0] >= t0]

    def joining_error(**kw: float) -> float:
        engine = ZoneEngine(QUEUE, max_tags=4096, fifo_slack_s=60.0, **kw)  # type: ignore[arg-type]
        engine.tick(float(t0))
        est, true = [], []
        for now, m in run_queue(engine, list(late), until=leave[-1]):
            nxt = min(int(np.searchsorted(arrive, now)), arrive.size - 1)
            # from when the guests who joined after t0 board until the line is short
            if not t0 + 2700 < now < t0 + 4200 or not np.isfinite(m.wait_joining_s[0]):
                continue
            est.append(m.wait_joining_s[0])
            true.append(leave[nxt] - arrive[nxt])
        e, t = np.array(est), np.array(true)
        return float(np.abs(e - t).sum() / t.sum())

    assert joining_error() < 0.1, joining_error()
    assert joining_error(walk_ahead=10**9) > 0.5  # every wait a walk: the old floor
