"""Per-zone metrics over the history rings: rates, waits, dwell percentiles, a forecast.

Windows are half-open on the left and open on the right: an event at time t counts at ``now``
if ``t > now - window`` (events dated after ``now`` count too). Rates are per minute over
``rate_window_s`` (during the first ``rate_window_s`` of a run they under-read, as the window
is not yet full). Percentiles use linear interpolation between order statistics (numpy's
default): the p-th percentile of sorted x[0..n-1] is at fractional index p/100 * (n - 1).

Read rates (queue zones, capture-recapture / Lincoln-Petersen over departures in
``read_rate_window_s``, longer than window_s because a reader's read rate changes slowly and a
long window halves the sampling noise):
    entry_read_rate = exits whose visit was read at the entry / all exits read
    exit_read_rate = those same exits / (them + entry-read visits that left unread at the exit:
        FIFO-cleared, timed out, or found in another zone)
    Both NaN (and no correction) until ``min_recaptures`` tags were read at both ends; the
    correction divides by max(rate, min_read_rate) so one bad window cannot explode a count.

Per queue zone:
    queue_length = tags queueing (entered at or after the FIFO frontier, queue_order.py) /
        entry read rate (float64); occupancy = tags in the queue as read (uncorrected)
    throughput_per_min = exits read at the exit reader in the rate window / exit read rate
    waits = measured waits (exit - entry) of exits in ``window_s``; ``wait_samples`` = how many
    wait_s = median of the latest ``wait_recent`` waits (in the order recorded) if
        wait_samples >= min_measured (METHOD_MEASURED); else Little's law
        queue_length / (throughput_per_min / 60) if at least min_measured exits were read in
        the rate window, or 0 for an empty queue
        (METHOD_LITTLE); else NaN (METHOD_NONE)
    dwell_p50_s, dwell_p90_s = 50th / 90th percentile of the same waits
    wait_forecast_s: the wait of the guest boarding horizon_s from now, with arrivals and
        throughput held (forecast_boarding_wait); NaN during the first rate_window_s of a
        run (rate_span_s < rate_window_s).
Per area zone:
    occupancy = tags present; queue_length, wait_s, wait_forecast_s = NaN, METHOD_NONE
    throughput_per_min = departures of any kind in the rate window
    dwell_p50_s, dwell_p90_s over dwells (last - first read) of visits that ended in window_s
Both: arrivals_per_min = visits begun in the rate window (queues: / entry read rate).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import (
    DEP_EXIT,
    DEP_OBSERVED,
    DEP_ONE_IN,
    DEP_ONE_OUT,
    M_ARRIVALS,
    M_DWELL_P50,
    M_DWELL_P90,
    M_ENTRY_READ_RATE,
    M_ENTRY_READ_RATE_SD,
    M_EXIT_READ_RATE,
    M_FORECAST,
    M_LENGTH_FACTOR,
    M_OCCUPANCY,
    M_QUEUE_LENGTH,
    M_THROUGHPUT,
    M_WAIT,
    M_WAIT_JOINING,
)
from .queue_order import fifo_frontier, unseen_in_gap
from .state import History, MetricParams, QueueLines, ZoneState
from .topology import (
    KIND_AREA,
    METHOD_AT_LEAST,
    METHOD_LITTLE,
    METHOD_MEASURED,
    METHOD_NONE,
    QL_CORRECTED,
    QL_NONE,
    QL_UNCORRECTED,
    QL_WARMING,
)


@jit
def forecast_wait(
    wait_s: float,
    queue_len: float,
    arrivals_per_s: float,
    service_per_s: float,
    horizon_s: float,
) -> float:
    """Wait (s) expected ``horizon_s`` from now if both rates (per s) stay as they are."""
    projected = max(0.0, queue_len + (arrivals_per_s - service_per_s) * horizon_s)
    if np.isnan(wait_s):
        return np.nan
    if service_per_s > 0.0:
        return max(0.0, wait_s + (projected - queue_len) / service_per_s)
    if projected == 0.0:
        return 0.0
    return np.nan


@jit
def forecast_boarding_wait(
    now: float,
    wait_s: float,
    queue_len: float,
    arrivals_per_s: float,
    service_per_s: float,
    horizon_s: float,
    read_rate: float,
    line: np.ndarray,
    shortest_s: float,
) -> float:
    """Wait (s) of the guest who will board ``horizon_s`` from now, FIFO, rates held.

    ``line``: sorted entry times of the tags queueing now (at or after the FIFO frontier);
    ``read_rate``: the fraction of guests the entry reader reads; ``queue_len``: guests
    queueing (corrected); ``shortest_s``: the shortest measured wait lately (NaN: none).
    The guests boarding in the next ``horizon_s`` are the first service * horizon guests of
    the line, i.e. its first ``j = floor(service * horizon * read_rate)`` tags:

    - the line is longer than that: the guest boarding then is queueing now, and their wait
      will be ``now + horizon_s - line[j]``;
    - else, with service and arrivals: that guest is the (service * horizon - queue_len)-th to
      join from now, at ``now + (service * horizon - queue_len) / arrivals``; their wait is
      the rest of the horizon, but not below ``shortest_s`` (the walk of an empty line);
    - else ``forecast_wait`` (0 for a queue projected empty, NaN without service).
    NaN while ``wait_s`` is NaN (no evidence of the service yet).
    """
    if np.isnan(wait_s):
        return np.nan
    j = np.floor(service_per_s * horizon_s * read_rate)
    if j < line.size:
        return max(0.0, now + horizon_s - line[np.int64(j)])
    if service_per_s > 0.0 and arrivals_per_s > 0.0:
        fc = horizon_s - (service_per_s * horizon_s - queue_len) / arrivals_per_s
        floor = 0.0 if np.isnan(shortest_s) else shortest_s
        return max(fc, floor)
    return forecast_wait(wait_s, queue_len, arrivals_per_s, service_per_s, horizon_s)


@jit
def stray_count(ones: int, n: int, both_ones: int, both: int, z_sd: float) -> float:
    """Strays among ``n`` one-ended tags (entry-only or exit-only) of which ``ones`` were read
    once at that reader, given that ``both_ones`` of ``both`` genuine tags (read at both
    ends) were read once there: a genuine band is read once with probability s = both_ones /
    both, a stray always once, so ``ones = s (n - strays) + strays`` and ``strays = (ones -
    s n) / (1 - s)``. Less ``z_sd`` standard errors (binomial, with the uncertainty of s),
    within [0, ones]: the smallest discount the evidence supports. 0 when every genuine tag
    was read once (repeats are needed to tell strays apart) or without recaptures."""
    if both <= 0 or both_ones >= both or n <= 0:
        return 0.0
    s = both_ones / both
    est = (ones - s * n) / (1.0 - s)
    var = (n * s * (1.0 - s) + n * n * s * (1.0 - s) / both) / ((1.0 - s) * (1.0 - s))
    return min(max(0.0, est - z_sd * np.sqrt(var)), float(ones))


@jit
def read_rate(
    both: int, seen: float, prior: float, z_sd: float, floor: float
) -> tuple[float, float, float]:
    """A read rate from ``both`` of ``seen`` tags recaptured: (estimate, sd, rate to divide by).

    The estimate is shrunk toward 1.0 (no correction) by ``prior`` pseudo-recaptures, which is
    Chapman's bias correction of Lincoln-Petersen for prior = 1: ``(both + prior) / (seen +
    prior)``; sd its binomial standard error. A count is divided by the estimate plus ``z_sd``
    standard errors (capped at 1, floored at ``floor``): the smallest correction the evidence
    supports, so a few recaptures can never multiply a count.
    """
    n = seen + prior
    p = (both + prior) / n
    sd = np.sqrt(p * (1.0 - p) / n)
    return p, sd, max(min(1.0, p + z_sd * sd), floor)


@jit
def zone_metrics(
    now: float,
    rate_span_s: float,
    gap_lo: float,
    gap_hi: float,
    t_start: float,
    zone_kind: np.ndarray,
    params: MetricParams,
    zones: ZoneState,
    hist: History,
    lines: QueueLines,
    out_f: np.ndarray,
    out_method: np.ndarray,
    out_ql_method: np.ndarray,
    out_samples: np.ndarray,
) -> None:
    """Fill the metrics of every zone at ``now`` (see the module doc).

    now: s, the tick's time.
    rate_span_s: s, what the rates are averaged over (engine.rate_span_s: the rate window,
        shorter early in a run, less the part of it the engine was down).
    gap_lo, gap_hi: s, the last time the engine was down (-inf, -inf: never).
    t_start: s, the engine's first read or tick (inf: none yet).
    zone_kind: int8[Z], KIND_QUEUE | KIND_AREA (TopologyArrays.zone_kind).
    params: the windows, thresholds and read-rate settings (state.MetricParams).
    zones: ``tags``, ``fifo_entry``, ``fifo_n``, ``rr_from``, ``min_wait`` read;
        ``capacity`` read and written (the remembered capacity).
    hist: departure and arrival rings (read).
    lines: each queue's line, from queue_order.queue_entries at this tick (read).
    out_f: float64[N_FLOAT_METRICS, Z], written, one row per metric (codes.M_*).
    out_method: int8[Z], written, how wait_s was produced (METHOD_*).
    out_ql_method: int8[Z], written, how queue_length was produced (QL_*).
    out_samples: int64[Z], written, the measured waits (queues) or dwells (areas) behind
        the percentiles.
    See state.py for every field.
    """
    window_s, rate_window_s, horizon_s = params.window_s, params.rate_window_s, params.horizon_s
    min_measured, wait_recent = params.min_measured_waits, params.wait_recent
    min_recaptures, min_read_rate = params.min_recaptures, params.min_read_rate
    read_rate_window_s, read_rate_prior = params.read_rate_window_s, params.read_rate_prior
    read_rate_z, stray_z = params.read_rate_z, params.stray_z
    joining_window_s, stall_s, capacity_s = (
        params.joining_window_s,
        params.stall_s,
        params.capacity_s,
    )
    zone_count, fifo_entry, fifo_n = zones.tags, zones.fifo_entry, zones.fifo_n
    rr_from, min_wait, capacity = zones.rr_from, zones.min_wait, zones.capacity
    dep_t, dep_dur, dep_kind = hist.dep_t, hist.dep_dur, hist.dep_kind
    dep_entry, dep_n, arr_t, arr_n = hist.dep_entry, hist.dep_n, hist.arr_t, hist.arr_n
    q_first, q_off, q_one, q_one_n = lines.first, lines.off, lines.one, lines.one_n
    per_min = 60.0 / rate_span_s  # shorter than the window early in a run (engine.rate_span_s)
    rate_lo = now - rate_window_s
    win_lo = now - window_s
    read_rate_lo = now - read_rate_window_s
    join_lo = now - joining_window_s
    cap = dep_t.shape[1]
    out_f[:] = np.nan
    buf = np.empty(cap, dtype=np.float64)
    for z in range(zone_kind.size):
        area = zone_kind[z] == KIND_AREA
        n_dep = min(dep_n[z], cap)
        served = 0
        served_j = 0  # exits read in joining_window_s
        busy = 0.0  # ... the time between them the queue was serving (stalls cut to stall_s)
        busy_sq = 0.0  # ... the sum of the squares of those gaps (the residual, below)
        longest = 0.0  # ... the longest of those gaps
        first_gap = np.inf  # ... the gap before the first of them (inf: no exit before)
        prev_exit = -np.inf  # the latest exit before joining_window_s
        exits_kept = 0  # exits read in the ring (all of them, however old)
        last_exit = -np.inf
        m = 0
        exits = 0  # exits read, in read_rate_window_s (see rr_from)
        both = 0  # ... whose visit was also read at the entry
        missed = 0  # entry-read visits that left without an exit read, in read_rate_window_s
        both_one_in = 0  # ... the same with a single entry read
        both_one_out = 0
        missed_one = 0
        exit_only_one = 0  # exits read once whose visit was not read at the entry
        shortest = np.nan  # shortest measured wait in read_rate_window_s
        for i in range(dep_n[z] - n_dep, dep_n[z]):  # oldest to newest
            k = i % cap
            t = dep_t[z, k]
            kind = dep_kind[z, k]
            if t > rate_lo and (area or kind == DEP_EXIT):
                served += 1
            if t > join_lo and kind == DEP_EXIT:
                if served_j > 0:
                    gap = min(max(0.0, t - last_exit), stall_s)
                    busy += gap
                    busy_sq += gap * gap
                    longest = max(longest, gap)
                else:
                    first_gap = t - prev_exit
                served_j += 1
                last_exit = max(last_exit, t)
            elif kind == DEP_EXIT:
                prev_exit = max(prev_exit, t)
            if kind == DEP_EXIT:
                exits_kept += 1
            if t > win_lo:
                d = dep_dur[z, k]
                if not np.isnan(d):
                    buf[m] = d
                    m += 1
            if t > read_rate_lo:
                d = dep_dur[z, k]
                if not np.isnan(d) and not d >= shortest:  # shortest may still be NaN
                    shortest = d
                if t >= rr_from[z] or t <= gap_lo:
                    flags = dep_entry[z, k]
                    obs = flags & DEP_OBSERVED
                    one_in = 1 if flags & DEP_ONE_IN else 0
                    one_out = 1 if flags & DEP_ONE_OUT else 0
                    if kind == DEP_EXIT:
                        exits += 1
                        both += obs
                        if obs:
                            both_one_in += one_in
                            both_one_out += one_out
                        else:
                            exit_only_one += one_out
                    else:
                        missed += obs
                        missed_one += one_in
        silence = now - last_exit  # since the latest exit (inf if none in the window)
        # mean time from a random moment to the next exit (renewal theory: E[g^2] / 2 E[g]):
        # half the dispatch interval of a ride loading in batches, ~0 for a steady trickle
        residual = busy_sq / (2.0 * busy) if busy > 0.0 else 0.0
        busy += serving_time(first_gap, longest, silence, stall_s, served_j)
        arrived = 0
        for k in range(min(arr_n[z], arr_t.shape[1])):
            if arr_t[z, k] > rate_lo:
                arrived += 1
        arrivals = arrived * per_min
        throughput = served * per_min
        count = np.float64(zone_count[z])
        out_f[M_OCCUPANCY, z] = count
        line = q_first[q_off[z] : q_off[z + 1]]
        out_samples[z] = m
        if m > 0:
            out_f[M_DWELL_P50, z] = np.percentile(buf[:m], 50.0)
            out_f[M_DWELL_P90, z] = np.percentile(buf[:m], 90.0)
        if area:
            out_f[M_ARRIVALS, z] = arrivals
            out_f[M_THROUGHPUT, z] = throughput
            out_method[z] = METHOD_NONE
            out_ql_method[z] = QL_NONE
            continue
        # Queueing: the tags at or after the FIFO frontier (older ones have boarded unread).
        frontier = fifo_frontier(fifo_entry, fifo_n, z)
        line = line[np.searchsorted(line, frontier) :]
        count = np.float64(line.size)
        rate_in = 1.0
        rate_out = 1.0
        keep_out = 1.0  # share of the exits read that were guests (not strays)
        out_ql_method[z] = QL_UNCORRECTED
        if both >= min_recaptures:
            strays_in = stray_count(missed_one, missed, both_one_in, both, stray_z)
            strays_out = stray_count(
                exit_only_one, exits - both, both_one_out, both, stray_z
            )
            if strays_in > 0.0:
                # each single-read tag in line is a stray with the odds seen in departures
                ones = q_one[q_off[z] : q_off[z] + q_one_n[z]]
                n_ones = ones.size - np.searchsorted(ones, frontier)
                count -= n_ones * strays_in / (both_one_in + missed_one)
                arrivals *= 1.0 - strays_in / (both + missed)
            keep_out = 1.0 - strays_out / exits
            p_in, sd_in, rate_in = read_rate(
                both, exits - strays_out, read_rate_prior, read_rate_z, min_read_rate
            )
            p_out, _, rate_out = read_rate(
                both, both + missed - strays_in, read_rate_prior, read_rate_z, min_read_rate
            )
            out_f[M_ENTRY_READ_RATE, z] = p_in
            out_f[M_ENTRY_READ_RATE_SD, z] = sd_in
            out_f[M_EXIT_READ_RATE, z] = p_out
            out_ql_method[z] = QL_CORRECTED
        arrivals /= rate_in
        throughput *= keep_out / rate_out
        count /= rate_in
        # Guests who joined while the gateway was down (gap_lo..gap_hi, a restart) were never
        # read at the entry: until the guests boarding entered after the gap, count them at
        # the arrival rate measured around it (arrivals leaves the gap out of its span).
        count += arrivals / 60.0 * unseen_in_gap(frontier, gap_lo, gap_hi)
        out_f[M_LENGTH_FACTOR, z] = 1.0 / rate_in
        out_f[M_QUEUE_LENGTH, z] = count
        out_f[M_ARRIVALS, z] = arrivals
        out_f[M_THROUGHPUT, z] = throughput
        if m >= min_measured:
            # the latest waits: the guests boarding now (the window's median lags a ramp)
            wait = float(np.percentile(buf[m - min(m, wait_recent) : m], 50.0))
            method = METHOD_MEASURED
        elif throughput > 0.0 and served >= min_measured:
            # Little's law needs a few exits as evidence of the service rate: one early exit
            # over a short span would quote a wait off by any factor.
            wait = count / (throughput / 60.0)
            method = METHOD_LITTLE
        elif count == 0.0:
            wait = 0.0
            method = METHOD_LITTLE
        else:
            wait = np.nan
            method = METHOD_NONE
        if fifo_n[z] == 0 and exits_kept >= fifo_entry.shape[1] and last_exit > t_start:
            # warming up: guests are boarding (fifo_witnesses of them, too many to be missed
            # entry reads), but none of those who entered while the engine watched: the line
            # was there before the start, its guests who entered then are not in count, and
            # FIFO, they board before anyone the engine saw enter
            out_ql_method[z] = QL_WARMING
            if not wait >= last_exit - t_start:  # wait may be NaN
                wait = last_exit - t_start
                method = METHOD_AT_LEAST
        out_f[M_WAIT, z] = wait
        out_method[z] = method
        service = served_j / busy * keep_out / rate_out if busy > 0.0 else 0.0
        # stalled: silent for two dispatch intervals (twice the longest gap of the window,
        # at least stall_s), and at most 2 * stall_s: a stopped ride's posted wait goes
        # blank within two missed dispatches, not two minutes
        stalled = silence > min(2.0 * stall_s, max(stall_s, 2.0 * longest))
        walk = 0.0 if np.isinf(min_wait[z]) else min_wait[z]
        busy_line = (served_j >= min_measured and not stalled
                     and method == METHOD_MEASURED and wait > walk + 4.0 * residual)
        if busy_line:
            # a busy line: the guests boarding now waited more than the walk and two
            # dispatch intervals (a dispatch interval is twice the residual), so the dispatch
            # before theirs left full: the exits ran at the ride's capacity
            capacity[z, 0] = service
            capacity[z, 1] = now
        else:
            # a short line is served at capacity as soon as guests are in it: the exits of a
            # short line measure the demand (a parade's lull), not the service rate. The
            # capacity is the rate last measured on a busy line, or at least the fullest
            # dispatch of the window per dispatch interval
            if capacity[z, 1] > now - capacity_s and capacity[z, 0] > service:
                service = capacity[z, 0]
            seats = dispatch_rate(dep_t, dep_kind, dep_n, z, join_lo, stall_s, residual)
            service = max(service, seats * keep_out / rate_out)
        empty = walk + residual  # the wait of an empty line
        if method == METHOD_MEASURED and not busy_line:
            # ... but on a line that is not busy the guests boarding now walked it and caught
            # the next dispatch: their wait is the empty line's, measured. The walk is only
            # the shortest wait of a guest who had few exits ahead, which a ride loading many
            # at a time rarely shows (long by part of a dispatch interval), and one read
            # stamped late (a reader's line that buffered it) shortens it for good
            empty = wait
        # a rate needs exits spread in time: the first train after a stop loads all at once
        spread = served_j if longest > 0.0 else 0
        out_f[M_WAIT_JOINING, z] = joining_wait(
            now, line, count, service, spread, min_measured, empty, stalled
        )
        if rate_span_s < rate_window_s:
            # a fresh engine: rates over a part-window are biased by the line filling up
            # (arrivals counted from the first one, exits only once guests reach the exit)
            continue
        out_f[M_FORECAST, z] = forecast_boarding_wait(
            now, wait, count, arrivals / 60.0, throughput / 60.0, horizon_s, rate_in, line,
            shortest,
        )


@jit
def dispatch_rate(
    dep_t: np.ndarray,
    dep_kind: np.ndarray,
    dep_n: np.ndarray,
    z: int,
    join_lo: float,
    stall_s: float,
    residual: float,
) -> float:
    """Exits/s (as read) of queue z's fullest dispatch of the joining window (exits after
    ``join_lo``, in the order recorded) per dispatch interval, 0 without two dispatches: a
    lower bound of the ride's capacity from the exits alone. A gap between exits (cut to
    ``stall_s``) longer than ``residual`` (half the dispatch interval of a ride loading in
    batches, the mean gap of a steady trickle) starts a new dispatch; the dispatch interval
    is the mean of those gaps."""
    cap = dep_t.shape[1]
    n_dep = min(dep_n[z], cap)
    last = -np.inf
    size = 0
    fullest = 0
    gaps = 0.0
    n_gaps = 0
    for i in range(dep_n[z] - n_dep, dep_n[z]):
        k = i % cap
        t = dep_t[z, k]
        if not (t > join_lo and dep_kind[z, k] == DEP_EXIT):
            continue
        if size > 0:
            gap = min(max(0.0, t - last), stall_s)
            if gap > residual:
                fullest = max(fullest, size)
                size = 0
                gaps += gap
                n_gaps += 1
        size += 1
        last = max(last, t)
    fullest = max(fullest, size)
    if n_gaps == 0 or gaps <= 0.0:
        return 0.0
    return fullest / (gaps / n_gaps)


@jit
def serving_time(
    first_gap: float, longest: float, silence: float, stall_s: float, served: int
) -> float:
    """Seconds to add to the sum of the gaps between the ``served`` exits of the joining
    window (each cut to ``stall_s``; ``longest`` the longest) for the time the queue was
    serving them: the gap before the first of them (``first_gap``, inf when no exit came
    before), which the first exit ends, cut to the longest gap between them (a ride
    restarting after a stop, or before the window, loads its first train after one dispatch
    interval, not after the whole stop) and to ``stall_s``; plus the silence since the last
    exit (``silence``, cut to ``stall_s``) beyond the longest gap, which counts as time the
    ride did not serve (a slowing or stopping ride). In steady service the silence is shorter
    than a gap, so exits / serving time is unbiased from the first full dispatch interval."""
    if served == 0:
        return 0.0
    cap = longest if longest > 0.0 else stall_s
    return min(max(0.0, first_gap), cap, stall_s) + max(
        0.0, min(max(0.0, silence), stall_s) - longest)


@jit
def joining_wait(
    now: float,
    line: np.ndarray,
    queue_len: float,
    service_per_s: float,
    served: int,
    min_measured: int,
    empty_s: float,
    stalled: bool,
) -> float:
    """Wait (s) of a guest joining the line at ``now``.

    ``line``: sorted entry times (s) of the tags queueing (``queue_len`` guests, corrected:
    each tag stands for queue_len / line.size guests); ``service_per_s`` the service rate
    (guests/s, corrected); ``empty_s`` the wait of an empty line: the walk plus the mean time
    from a random moment to the next dispatch. Every guest in line reaches the loading point
    a walk after entering and boards at the next dispatch, but not before the guests ahead of
    them have boarded at the service rate: board_i = max(board_{i-1} + 1 / service, entry_i +
    empty_s), the first at ``now`` at the earliest (seat k of a ride loading b seats
    every d s leaves on average k / service from now: the residual and the seats of the same
    dispatch cancel). The joiner boards likewise behind the last of them. A long line gives
    queue_len / service; a short one ``empty_s`` (guests still walking the line do not
    hold the joiner up). NaN without evidence of service: fewer than ``min_measured`` exits
    read (``served``; 0 when they were all read at one time, one train: no rate yet), or
    ``stalled`` (the exit reader has been silent for two dispatch intervals: a stopped ride,
    whose wait depends on when it restarts)."""
    floor = empty_s
    if queue_len <= 0.0 or line.size == 0:
        return floor
    if served < min_measured or not service_per_s > 0.0 or stalled:
        return np.nan
    step = queue_len / line.size / service_per_s
    board = now - step
    for e in line:
        board = max(board + step, e + floor)
    return max(board + 1.0 / service_per_s - now, floor)
