"""Per-zone ring buffers of recent departures and arrivals.

Each zone owns a row of fixed capacity C in 2-d arrays (Z x C); ``*_n[z]`` counts every event
ever pushed, so the ring holds the last ``min(n, C)`` events at positions ``n % C``. Windowed
statistics read the whole ring and keep the events inside their window, so a ring must hold
at least a window's worth of events (C = history); older events are overwritten first.

Departures: ``dep_t`` float64 seconds (the departure time), ``dep_dur`` float64 seconds (the
measured wait for queue exits seen at both ends, the dwell for area visits, NaN otherwise),
``dep_kind`` int8 (codes.DEP_*), ``dep_entry`` int8 bits (queue zones): DEP_OBSERVED if the
visit was read at the entry reader while the engine watched (the capture-recapture read-rate
estimates count these), DEP_ONE_IN if by a single read there, DEP_ONE_OUT for an exit read only
once so far (a tag held after its exit clears it at its second exit read, if its record is
still in the ring). Strays (passers-by read once) show as an excess of single reads.
Arrivals: ``arr_t`` float64 seconds (first read of a visit).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit


@jit
def push_departure(
    dep_t: np.ndarray,
    dep_dur: np.ndarray,
    dep_kind: np.ndarray,
    dep_entry: np.ndarray,
    dep_n: np.ndarray,
    z: int,
    t: float,
    dur: float,
    kind: int,
    entry: int,
) -> None:
    k = dep_n[z] % dep_t.shape[1]
    dep_t[z, k] = t
    dep_dur[z, k] = dur
    dep_kind[z, k] = kind
    dep_entry[z, k] = entry
    dep_n[z] += 1


@jit
def push_arrival(arr_t: np.ndarray, arr_n: np.ndarray, z: int, t: float) -> None:
    arr_t[z, arr_n[z] % arr_t.shape[1]] = t
    arr_n[z] += 1


@jit
def push_fifo_witness(
    fifo_entry: np.ndarray,
    fifo_n: np.ndarray,
    fifo_cutoff: np.ndarray,
    z: int,
    entry_t: float,
    slack_s: float,
) -> None:
    """Record the entry time of a tag that exited queue ``z`` and raise its FIFO cutoff.

    The cutoff is ``min(entry times of the last K measured exits) - slack_s`` (K = width of
    ``fifo_entry``): K tags in a row that all entered more than ``slack_s`` after a tag prove
    that tag has left, while one overtaker (or a stray read) proves nothing.
    """
    width = fifo_entry.shape[1]
    fifo_entry[z, fifo_n[z] % width] = entry_t
    fifo_n[z] += 1
    if fifo_n[z] >= width:
        cut = fifo_entry[z, 0]
        for k in range(1, width):
            cut = min(cut, fifo_entry[z, k])
        cut -= slack_s
        if cut > fifo_cutoff[z]:
            fifo_cutoff[z] = cut
