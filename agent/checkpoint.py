"""Checkpoints of the gateway core, so a restart does not forget the queue.

A checkpoint is one ``.npz`` file (numpy's zip of arrays; no pickle, so a damaged or hostile
file can only fail to load, never run code) holding:

- ``engine/<name>``: every array of the zone engine's state (``ZoneEngine.snapshot()``),
  without its trailing run of rows equal to its last row (format 2, see below);
- ``tail/<name>``: that last row, for each array so shortened;
- ``meta``: UTF-8 JSON as uint8: the format version, the config fingerprint, the time the
  checkpoint was taken (the core's clock, seconds since the epoch), the moment rules'
  open moments and timers (``MomentRules.snapshot()``), and the full length of each
  shortened array (``rows``).

Why shortened: the engine's per-tag arrays are sized for ``estimation.max_tags`` (131,072
rows, 27 MB) and hand rows out from row 0, so at a venue most rows at the end are unused and
identical. Storing only the rows up to the last one that differs makes a checkpoint of a
few thousand tags a few MB to write and read instead of 27 MB to compress and inflate (the
inflating was ~0.15 s of every warm start, the compressing ~0.25 s of CPU per checkpoint
on a desktop). Lossless: rows are compared bit for bit (NaN included). Format 1 (every array
whole) is still read, so an upgrade keeps the queue.

It is written atomically and durably: to a temporary file in the same directory, fsync'd,
renamed over the old one, and the directory fsync'd, so a power cut leaves either the old
checkpoint or the new one, never half of one.

Loading never raises for a bad file: :func:`load` returns ``None`` with the reason (another
config, a newer format, a damaged file), and the agent starts empty and says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Config

FORMAT = 2
READABLE_FORMATS = (1, 2)
_ENGINE = "engine/"
_TAIL = "tail/"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why."""


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``taken_at``: the core's clock when it was taken (s)."""

    taken_at: float
    engine: dict[str, np.ndarray]
    moments: dict[str, Any]
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)  # JSON: staff acks, escalations


def fingerprint(cfg: Config) -> str:
    """What a checkpoint must match to be restored: the readers and zones (ids, order, roles,
    kinds, timeouts) and the estimation settings. Thresholds and broker settings may change
    between runs without losing the queue."""
    parts = {
        "readers": [(r.id, r.zone, r.role, r.protocol) for r in cfg.readers],
        "zones": [(z.id, z.kind, z.timeout_s) for z in cfg.zones],
        "estimation": sorted(vars(cfg.estimation).items()),
        "horizon_s": cfg.moments.forecast_horizon_s,
    }
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


_BLOCK_BYTES = 1 << 18  # rows compared at a time from the end: no array-sized temporary


def kept_rows(a: np.ndarray) -> int:
    """How many leading rows (along axis 0) of ``a`` to store: all but the trailing run of
    rows bitwise equal to the last row (that run is stored once, as the tail)."""
    if a.ndim == 0 or a.shape[0] < 2 or a.size == 0:
        return a.shape[0] if a.ndim else 0
    rows = np.ascontiguousarray(a).reshape(a.shape[0], -1).view(np.uint8)
    last = rows[-1]
    step = max(1, _BLOCK_BYTES // rows.shape[1])
    end = rows.shape[0]
    while end > 0:  # blocks from the end backwards, until one holds a row that differs
        start = max(0, end - step)
        differs = np.flatnonzero((rows[start:end] != last).any(axis=1))
        if differs.size:
            return start + int(differs[-1]) + 1
        end = start
    return 0


def save(path: Path, cp: Checkpoint) -> int:
    """Write ``cp`` to ``path`` atomically and durably; returns the bytes written."""
    arrays: dict[str, np.ndarray] = {}
    full_rows: dict[str, int] = {}
    for k, v in cp.engine.items():
        a = np.asarray(v)
        keep = kept_rows(a)
        if a.ndim and keep < a.shape[0] - 1:  # a run worth storing once
            full_rows[k] = int(a.shape[0])
            arrays[_TAIL + k] = a[-1:]
            a = a[:keep]
        arrays[_ENGINE + k] = a
    meta = {"format": FORMAT, "fingerprint": cp.fingerprint, "taken_at": cp.taken_at,
            "moments": cp.moments, "extra": cp.extra, "rows": full_rows}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    data = _npz(arrays)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself must survive a power cut
    finally:
        os.close(dfd)
    return len(data)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of an .npz (what np.load reads), deflated at level 1.

    Compressed, because an SD card pays for every byte written (every
    ``storage.checkpoint_interval_s``); at level 1 rather than numpy's savez_compressed
    level 6, which took about three times the CPU for a file 10-20 % smaller."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


def load(path: Path, expected_fingerprint: str) -> tuple[Checkpoint | None, str]:
    """The checkpoint at ``path``, or ``(None, why not)``. Never raises for a bad file."""
    if not path.exists():
        return None, "no checkpoint"
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {name: z[name] for name in z.files}
        meta = json.loads(bytes(files.pop("meta")).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError,
            EOFError) as e:
        return None, f"checkpoint {path} is damaged ({type(e).__name__}: {e})"
    if not isinstance(meta, dict):
        return None, f"checkpoint {path} is damaged (no metadata)"
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        return None, (f"checkpoint {path} has format {fmt!r}; this agent reads formats "
                      f"{', '.join(map(str, READABLE_FORMATS))}")
    if meta.get("fingerprint") != expected_fingerprint:
        return None, (f"checkpoint {path} is from another configuration (readers, zones or "
                      "estimation settings changed)")
    try:
        taken_at = float(meta["taken_at"])
        moments = dict(meta.get("moments") or {})
        extra = dict(meta.get("extra") or {})
    except (KeyError, TypeError, ValueError) as e:
        return None, f"checkpoint {path} is damaged (metadata: {e})"
    engine = {k[len(_ENGINE):]: v for k, v in files.items() if k.startswith(_ENGINE)}
    try:
        for name, n in dict(meta.get("rows") or {}).items():
            engine[name] = _lengthened(engine[name], files[_TAIL + name], int(n))
    except (KeyError, TypeError, ValueError) as e:
        return None, f"checkpoint {path} is damaged (shortened array: {e})"
    return Checkpoint(taken_at, engine, moments, expected_fingerprint, extra), "ok"


def _lengthened(head: np.ndarray, tail: np.ndarray, n: int) -> np.ndarray:
    """``head`` followed by copies of the one-row ``tail`` up to ``n`` rows (save's inverse)."""
    if (tail.shape[:1] != (1,) or head.shape[1:] != tail.shape[1:] or head.shape[0] > n
            or head.dtype != tail.dtype):
        raise ValueError(f"a head of {head.shape} {head.dtype} and a tail of {tail.shape} "
                         f"{tail.dtype} do not make {n} rows")
    out = np.empty((n, *head.shape[1:]), dtype=head.dtype)
    out[:head.shape[0]] = head
    out[head.shape[0]:] = tail
    return out
