"""Checkpoints of the gateway core, so a restart does not forget the queue.

A checkpoint is one ``.npz`` file (numpy's zip of arrays; no pickle, so a damaged or hostile
file can only fail to load, never run code) holding:

- ``engine/<name>``: every array of the zone engine's state (``ZoneEngine.snapshot()``);
- ``meta``: UTF-8 JSON as uint8: the format version, the config fingerprint, the time the
  checkpoint was taken (the core's clock, seconds since the epoch), and the moment rules'
  open moments and timers (``MomentRules.snapshot()``).

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

FORMAT = 1
_ENGINE = "engine/"


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


def save(path: Path, cp: Checkpoint) -> int:
    """Write ``cp`` to ``path`` atomically and durably; returns the bytes written."""
    meta = {"format": FORMAT, "fingerprint": cp.fingerprint, "taken_at": cp.taken_at,
            "moments": cp.moments, "extra": cp.extra}
    arrays = {_ENGINE + k: np.asarray(v) for k, v in cp.engine.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    # Compressed: the tag table is mostly empty rows, and an SD card pays for every byte.
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # stubs: positional only
    data = buf.getvalue()
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
    if fmt != FORMAT:
        return None, (f"checkpoint {path} has format {fmt!r}; this agent reads format "
                      f"{FORMAT}")
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
    return Checkpoint(taken_at, engine, moments, expected_fingerprint, extra), "ok"
