"""The line in each queue zone as sorted entry times, for the FIFO frontier and the forecast.

After the tick's departures are swept, ``queue_entries`` writes the first-read times of every
tag in each queue zone into one buffer: zone z's tags are
``out_first[out_off[z]:out_off[z + 1]]`` (``out_off[z + 1] - out_off[z] == zone_count[z]``;
area zones get empty segments), in one pass over the tag rows; the engine then sorts each
segment ascending (``engine.sort_lines``: numpy's sort, outside the compiled kernels).

``fifo_frontier`` is the earliest entry time among the last K measured exits of a queue (K =
``fifo_witnesses``; -inf until K exits were measured). In a FIFO line everyone who entered
before it has boarded: a tag older than the frontier that is still "in the queue" either had
its exit read missed (the common case, cleared by FIFO clearing once it is ``fifo_slack_s``
older than the frontier) or was overtaken. window_stats counts only tags at or after the
frontier as queueing, and reads the forecast off the same sorted line.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from .codes import TAG_IN
from .state import F_FIRST, I_NREADS, I_STATE, I_ZONE, QueueLines, TagRows, ZoneState
from .topology import KIND_AREA


@jit
def queue_entries(
    zone_kind: np.ndarray, zones: ZoneState, rows: TagRows, lines: QueueLines
) -> None:
    """Write each queue's line into ``lines`` (see the module doc).

    zone_kind: int8[Z], KIND_QUEUE | KIND_AREA (TopologyArrays.zone_kind).
    zones: ``tags`` read (tags in each zone).
    rows: state, zone, first, nreads (packed columns) and ``entry`` read.
    lines: written: ``first`` (float64[M + 1]) and ``off`` (int64[Z + 1]), zone z's entry
        times in ``first[off[z]:off[z + 1]]``; and ``one`` (float64[M + 1]) the same way,
        zone z's segment starting at ``off[z]``, with the ``one_n[z]`` tags that joined by a
        single entry read (the stray candidates). In row order: ``engine.sort_lines`` sorts them.
    """
    zone_count = zones.tags
    row_i32, row_f64, row_entry = rows.i32, rows.f64, rows.entry
    out_first, out_off, out_one, out_one_n = lines.first, lines.off, lines.one, lines.one_n
    nz = zone_kind.size
    out_off[0] = 0
    for z in range(nz):
        n = zone_count[z] if zone_kind[z] != KIND_AREA else 0
        out_off[z + 1] = out_off[z] + n
        out_one_n[z] = 0
    fill = out_off[:nz].copy()
    # Every tag in a zone is written, an area's to the spare last entry (index M) and a
    # queue's to its place, with selects: whether a row's zone is a queue changes from row
    # to row, and a mispredicted branch per row cost more than the scan.
    spare = out_first.size - 1
    for row in range(row_i32.shape[0]):
        if row_i32[row, I_STATE] == TAG_IN:
            z = row_i32[row, I_ZONE]
            queue = zone_kind[z] != KIND_AREA
            first = row_f64[row, F_FIRST]
            out_first[fill[z] if queue else spare] = first
            fill[z] += queue
            one = queue & (row_entry[row] == 1) & (row_i32[row, I_NREADS] == 1)
            out_one[out_off[z] + out_one_n[z] if one else spare] = first
            out_one_n[z] += one


@jit
def fifo_frontier(fifo_entry: np.ndarray, fifo_n: np.ndarray, z: int) -> float:
    """Earliest entry time of queue z's last K measured exits; -inf before K of them."""
    width = fifo_entry.shape[1]
    if fifo_n[z] < width:
        return -np.inf
    f = fifo_entry[z, 0]
    for k in range(1, width):
        f = min(f, fifo_entry[z, k])
    return f


@jit
def unseen_in_gap(frontier: float, gap_lo: float, gap_hi: float) -> float:
    """Seconds (float) of the engine's last down time, ``gap_lo`` to ``gap_hi``, whose
    entrants are still in line: those after the FIFO ``frontier`` (the earliest entry of the
    last K measured exits; -inf before K of them). 0 when there was no gap. Guests who joined
    in that time were never read at the entry; times the arrival rate, this is how many."""
    if not gap_hi > gap_lo:
        return 0.0
    return max(0.0, gap_hi - max(gap_lo, frontier))
