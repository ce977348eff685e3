"""In-process speed measurements: ingest throughput of each engine, and tick latency.

Every figure here is measured on the workload of bench/workloads.py in the calling process;
run.py pins that process to one core and sets NUMBA_NUM_THREADS=1 before numba is imported.
Engines are warm: the numba kernels are compiled (or loaded from the cache) before any timer
starts, and each repeat starts from a fresh engine holding the prefill, so repeats measure the
same work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bench.bare import BareLoop
from bench.workloads import Reads, Workload
from kernels import ReferenceEngine, ZoneEngine
from kernels.numpy_ingest import NumpyIngest


class Ingester(Protocol):
    def ingest(self, ts: np.ndarray, tag: np.ndarray, reader: np.ndarray) -> Any: ...


MAX_TAGS = 1 << 17  # the agent's default estimation.max_tags


def numba_engine(w: Workload) -> ZoneEngine:
    return ZoneEngine(w.topo, max_tags=MAX_TAGS)


def reference_engine(w: Workload) -> ReferenceEngine:
    return ReferenceEngine(w.topo, max_tags=MAX_TAGS)


def numpy_engine(w: Workload) -> NumpyIngest:
    return NumpyIngest(w.topo, max_tags=MAX_TAGS)


def bare_loop(w: Workload) -> BareLoop:
    return BareLoop(w.topo.reader_zone, max_tags=MAX_TAGS)


ENGINES: dict[str, Callable[[Workload], Ingester]] = {
    "numba": numba_engine,
    "bare": bare_loop,
    "python": reference_engine,
    "numpy": numpy_engine,
}


def warm_up(w: Workload) -> None:
    """Compile (or load) every numba kernel the timed paths call, outside any timer."""
    e = numba_engine(w)
    b = w.stream.head(64)
    e.ingest(b.ts, b.tag, b.reader)
    e.ingest(b.ts[::-1].copy(), b.tag[::-1].copy(), b.reader[::-1].copy())  # the sort path
    e.tick(float(b.ts[-1]))
    n = numpy_engine(w)
    n.ingest(b.ts, b.tag, b.reader)
    bare_loop(w).ingest(b.ts, b.tag, b.reader)


@dataclass(frozen=True)
class Rate:
    """Reads per second (median of repeats) with every repeat kept for the record."""

    reads_per_s: float
    repeats: list[float]
    reads: int
    batch: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads_per_s": self.reads_per_s,
            "repeats_reads_per_s": self.repeats,
            "reads": self.reads,
            "batch": self.batch,
        }


def ingest_rate(w: Workload, engine: str, reads: Reads, batch: int, repeats: int) -> Rate:
    """Median reads/s of ``engine`` ingesting ``reads`` in batches of ``batch`` reads.

    Each repeat builds a fresh engine and ingests the prefill (untimed), then times the whole
    stream: per-batch Python overhead is part of the figure, as it is in the agent.
    """
    make = ENGINES[engine]
    batches = reads.batch_list(batch)
    rates = []
    for _ in range(repeats):
        e = make(w)
        e.ingest(w.prefill.ts, w.prefill.tag, w.prefill.reader)
        t0 = time.perf_counter()
        for ts, tag, reader in batches:
            e.ingest(ts, tag, reader)
        rates.append(reads.size / (time.perf_counter() - t0))
    return Rate(statistics.median(rates), rates, reads.size, batch)


@dataclass(frozen=True)
class Paired:
    """Two engines timed in alternation on the same batches: the rate of each, and the ratio
    ``a / b`` as the median of the per-round ratios (a round times each engine once, back to
    back, so load that comes and goes on a shared machine hits both sides of a ratio)."""

    a: Rate
    b: Rate
    ratio: float
    ratios: list[float]


def paired_rate(
    w: Workload, a: str, b: str, reads: Reads, batch: int, repeats: int
) -> Paired:
    """``ingest_rate`` of engines ``a`` and ``b``, one repeat of each per round."""
    ra: list[float] = []
    rb: list[float] = []
    for _ in range(repeats):
        ra += ingest_rate(w, a, reads, batch, 1).repeats
        rb += ingest_rate(w, b, reads, batch, 1).repeats
    ratios = [x / y for x, y in zip(ra, rb, strict=True)]
    return Paired(
        Rate(statistics.median(ra), ra, reads.size, batch),
        Rate(statistics.median(rb), rb, reads.size, batch),
        statistics.median(ratios),
        ratios,
    )


def tick_latency(w: Workload, batch: int, n_ticks: int) -> dict[str, Any]:
    """ZoneEngine.tick latency (ms) with the workload's tags live, one tick per batch.

    Between ticks the engine ingests the next gateway batch (untimed), as the agent does each
    tick, so every tick sweeps a table that changed. Reported: p50, p99, max, and the live
    tags at the last tick.
    """
    e = numba_engine(w)
    e.ingest(w.prefill.ts, w.prefill.tag, w.prefill.reader)
    times = []
    live = []
    for ts, tag, reader in w.stream.batch_list(batch)[:n_ticks]:
        e.ingest(ts, tag, reader)
        now = float(ts[-1])
        t0 = time.perf_counter()
        m = e.tick(now)
        times.append((time.perf_counter() - t0) * 1e3)
        live.append(int(m.live_tags.sum()))
    arr = np.array(times)
    return {
        "tick_ms_p50": float(np.percentile(arr, 50)),
        "tick_ms_p99": float(np.percentile(arr, 99)),
        "tick_ms_max": float(arr.max()),
        "ticks": len(times),
        "live_tags_min": min(live),
        "live_tags_last": live[-1],
        "zones": w.topo.n_zones,
        "max_tags": MAX_TAGS,
    }
