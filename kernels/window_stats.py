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
    queue_length = tags in the queue / entry read rate (float64); occupancy = tags in the
        queue as read (uncorrected)
    throughput_per_min = exits read at the exit reader in the rate window / exit read rate
    waits = measured waits (exit - entry) of exits in ``window_s``; ``wait_samples`` = how many
    wait_s = median(waits) if wait_samples >= min_measured (METHOD_MEASURED); else Little's law
        queue_length / (throughput_per_min / 60) if at least min_measured exits were read in
        the rate window, or 0 for an empty queue
        (METHOD_LITTLE); else NaN (METHOD_NONE)
    dwell_p50_s, dwell_p90_s = 50th / 90th percentile of the same waits
    wait_forecast_s: arrivals and throughput are held at their current rates for horizon_s;
        the queue grows by (arrivals - throughput) * horizon (never below 0) and each extra
        tag adds 1 / throughput to the current wait. NaN without throughput unless the queue
        is projected empty (0).
Per area zone:
    occupancy = tags present; queue_length, wait_s, wait_forecast_s = NaN, METHOD_NONE
    throughput_per_min = departures of any kind in the rate window
    dwell_p50_s, dwell_p90_s over dwells (last - first read) of visits that ended in window_s
Both: arrivals_per_min = visits begun in the rate window (queues: / entry read rate).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import DEP_EXIT
from .topology import KIND_AREA, METHOD_LITTLE, METHOD_MEASURED, METHOD_NONE


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
def zone_metrics(
    now: float,
    window_s: float,
    rate_window_s: float,
    rate_span_s: float,
    horizon_s: float,
    min_measured: int,
    min_recaptures: int,
    min_read_rate: float,
    read_rate_window_s: float,
    zone_kind: np.ndarray,
    zone_count: np.ndarray,
    dep_t: np.ndarray,
    dep_dur: np.ndarray,
    dep_kind: np.ndarray,
    dep_entry: np.ndarray,
    dep_n: np.ndarray,
    arr_t: np.ndarray,
    arr_n: np.ndarray,
    out_f: np.ndarray,
    out_method: np.ndarray,
    out_samples: np.ndarray,
) -> None:
    """Fill ``out_f`` (float64[10, Z]), ``out_method`` (int8[Z]) and ``out_samples`` (int64[Z]).

    Rows of out_f, in this order: queue_length, occupancy, wait_s, dwell_p50_s, dwell_p90_s,
    arrivals_per_min, throughput_per_min, wait_forecast_s, entry_read_rate, exit_read_rate.
    """
    per_min = 60.0 / rate_span_s  # shorter than the window early in a run (engine.rate_span_s)
    rate_lo = now - rate_window_s
    win_lo = now - window_s
    read_rate_lo = now - read_rate_window_s
    cap = dep_t.shape[1]
    out_f[:] = np.nan
    buf = np.empty(cap, dtype=np.float64)
    for z in range(zone_kind.size):
        area = zone_kind[z] == KIND_AREA
        n_dep = min(dep_n[z], cap)
        served = 0
        m = 0
        exits = 0  # exits read, in read_rate_window_s
        both = 0  # ... whose visit was also read at the entry
        missed = 0  # entry-read visits that left without an exit read, in read_rate_window_s
        for k in range(n_dep):
            t = dep_t[z, k]
            kind = dep_kind[z, k]
            if t > rate_lo and (area or kind == DEP_EXIT):
                served += 1
            if t > win_lo:
                d = dep_dur[z, k]
                if not np.isnan(d):
                    buf[m] = d
                    m += 1
            if t > read_rate_lo:
                if kind == DEP_EXIT:
                    exits += 1
                    both += dep_entry[z, k]
                else:
                    missed += dep_entry[z, k]
        arrived = 0
        for k in range(min(arr_n[z], arr_t.shape[1])):
            if arr_t[z, k] > rate_lo:
                arrived += 1
        arrivals = arrived * per_min
        throughput = served * per_min
        count = np.float64(zone_count[z])
        out_f[1, z] = count
        out_samples[z] = m
        if m > 0:
            out_f[3, z] = np.percentile(buf[:m], 50.0)
            out_f[4, z] = np.percentile(buf[:m], 90.0)
        if area:
            out_f[5, z] = arrivals
            out_f[6, z] = throughput
            out_method[z] = METHOD_NONE
            continue
        if both >= min_recaptures:
            p_in = both / exits
            p_out = both / (both + missed)
            out_f[8, z] = p_in
            out_f[9, z] = p_out
            arrivals /= max(p_in, min_read_rate)
            throughput /= max(p_out, min_read_rate)
            count /= max(p_in, min_read_rate)
        out_f[0, z] = count
        out_f[5, z] = arrivals
        out_f[6, z] = throughput
        if m >= min_measured:
            wait = out_f[3, z]
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
        out_f[2, z] = wait
        out_method[z] = method
        out_f[7, z] = forecast_wait(wait, count, arrivals / 60.0, throughput / 60.0, horizon_s)
