"""The read streams the speed bench feeds every engine: one venue, generated up front.

Layout: ``n_zones`` zones (default 20), half queues with an ENTRY reader and a PRESENCE reader
mid-queue, half areas with two PRESENCE readers, so every zone has exactly two readers. These
are the roles every engine in the bench implements the same way (kernels/numpy_ingest.py has
no exits, BLE or timeouts), so all of them do the same work on the same reads.

Stream: ``n_tags`` live tags (random 64-bit keys, like the agent's pseudonyms) each start in a
random zone; a prefill batch reads each once so the table holds them all before timing starts.
Then reads pick tags uniformly at random at ``reads_per_s`` (simulated time) and a reader of
the tag's current zone; a fraction ``move_frac`` of reads first moves its tag to another zone
(guests walking on), so a few percent of reads start a new visit and the rest refresh one.
Timestamps ascend within the stream, as a gateway's ticks deliver them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kernels import KIND_AREA, KIND_QUEUE, ROLE_ENTRY, ROLE_PRESENCE, Topology

READERS_PER_ZONE = 2


def bench_topology(n_zones: int = 20) -> Topology:
    """``n_zones`` zones alternating queue / area, two readers each (reader 2z and 2z+1).

    Timeouts (queues 45 min, areas 10 min) exceed any gap a live tag sees in the stream, so
    the tick bench measures a full table rather than one draining through timeouts.
    """
    kinds = np.array([KIND_QUEUE if z % 2 == 0 else KIND_AREA for z in range(n_zones)])
    roles = np.array(
        [[ROLE_ENTRY if k == KIND_QUEUE else ROLE_PRESENCE, ROLE_PRESENCE] for k in kinds]
    ).reshape(-1)
    return Topology(
        reader_zone=np.repeat(np.arange(n_zones), READERS_PER_ZONE),
        reader_role=roles,
        zone_kind=kinds,
        zone_timeout_s=np.where(kinds == KIND_QUEUE, 2700.0, 600.0),
    )


@dataclass(frozen=True)
class Reads:
    """Read columns as ZoneEngine.ingest takes them: ts float64 s, tag uint64, reader int32."""

    ts: np.ndarray
    tag: np.ndarray
    reader: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ts.size)

    def head(self, n: int) -> Reads:
        """The first ``n`` reads."""
        return Reads(self.ts[:n], self.tag[:n], self.reader[:n])

    def batches(self, size: int) -> Iterator[Reads]:
        """Consecutive batches of ``size`` reads (the last may be shorter)."""
        for i in range(0, self.size, size):
            yield Reads(self.ts[i : i + size], self.tag[i : i + size], self.reader[i : i + size])

    def batch_list(self, size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The batches as (ts, tag, reader) tuples, sliced before timing starts."""
        return [(b.ts, b.tag, b.reader) for b in self.batches(size)]


@dataclass(frozen=True)
class Workload:
    """A prefill batch (one read per tag) and the stream timed after it."""

    topo: Topology
    n_tags: int
    prefill: Reads
    stream: Reads
    reads_per_s: float
    move_frac: float


def make_workload(
    *,
    n_tags: int = 50_000,
    n_zones: int = 20,
    n_reads: int = 4_000_000,
    reads_per_s: float = 4000.0,
    move_frac: float = 0.01,
    seed: int = 1,
) -> Workload:
    """Generate the prefill and ``n_reads`` stream reads (deterministic for a seed).

    reads_per_s: reads per simulated second (sets the timestamps; 4000/s is a venue gateway
        with 40 readers at ~100 reads/s each).
    move_frac: fraction of reads that first move their tag to another zone.
    """
    if n_zones < 2 or n_tags < 1 or reads_per_s <= 0:
        raise ValueError(
            "need n_zones >= 2 (tags move between zones), n_tags >= 1, reads_per_s > 0"
        )
    rng = np.random.default_rng(seed)
    topo = bench_topology(n_zones)
    keys = np.unique(rng.integers(1, np.iinfo(np.uint64).max, size=n_tags, dtype=np.uint64))
    while keys.size < n_tags:  # 64-bit collisions are all but impossible; stay exact anyway
        more = rng.integers(1, np.iinfo(np.uint64).max, size=n_tags - keys.size, dtype=np.uint64)
        keys = np.unique(np.concatenate([keys, more]))
    keys = rng.permutation(keys)
    zone_of = rng.integers(0, n_zones, size=n_tags)

    def readers_in(zones: np.ndarray) -> np.ndarray:
        return (zones * READERS_PER_ZONE + rng.integers(0, READERS_PER_ZONE, zones.size)).astype(
            np.int32
        )

    prefill = Reads(np.sort(rng.random(n_tags)), keys.copy(), readers_in(zone_of))

    # Generated in chunks of one simulated second; movers change zone at their chunk's start.
    chunk = max(1, int(reads_per_s))
    ts_parts, tag_parts, reader_parts = [], [], []
    t0 = 1.0
    for start in range(0, n_reads, chunk):
        m = min(chunk, n_reads - start)
        who = rng.integers(0, n_tags, size=m)
        movers = who[rng.random(m) < move_frac]
        # Another zone, never the same one: a move is a move.
        zone_of[movers] = (zone_of[movers] + rng.integers(1, n_zones, movers.size)) % n_zones
        ts_parts.append(t0 + np.sort(rng.random(m)) * (m / reads_per_s))
        tag_parts.append(keys[who])
        reader_parts.append(readers_in(zone_of[who]))
        t0 += m / reads_per_s
    stream = Reads(
        np.concatenate(ts_parts), np.concatenate(tag_parts), np.concatenate(reader_parts)
    )
    return Workload(topo, n_tags, prefill, stream, reads_per_s, move_frac)
