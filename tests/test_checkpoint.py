"""Checkpoints of the gateway core: atomic files, refused when they do not fit, and a restore
that resumes the queue and the open moments."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import checkpoint
from agent.config import parse_config
from agent.gateway import GatewayCore
from firmware_bridge.records import RawRead
from tests.test_gateway import CONFIG, KEY


def core(text: str = CONFIG) -> GatewayCore:
    c = GatewayCore(parse_config(text), key=KEY, max_tags=1024, started_at=0.0)
    for rid in c.readers:
        c.reader_state(rid, True, None, 0.0)
    return c


def band(i: int) -> RawRead:
    return RawRead("ble", bytes([0x20, 0, 0, 0, i]), -60.0)


def crowded() -> GatewayCore:
    """A core whose plaza holds 5 guests and has a zone_crowded moment open."""
    c = core()
    for t in range(1, 7):
        c.accept_reads("plaza-ble", float(t), [band(i) for i in range(5)])
        c.step(float(t))
    assert c.moments.rules.snapshot()  # the crowded moment is open
    return c


def test_a_restored_core_publishes_what_the_old_one_would_have(tmp_path: Path) -> None:
    old = crowded()
    path = tmp_path / "checkpoint.npz"
    assert checkpoint.save(path, old.checkpoint()) > 0
    cp, why = checkpoint.load(path, checkpoint.fingerprint(old.cfg))
    assert cp is not None, why
    new = core()
    assert new.restore(cp, 7.0) == 1
    a, b = old.step(7.0), new.step(7.0)
    assert a.values["plaza"]["occupancy"] == b.values["plaza"]["occupancy"] == 5
    # the open moment is not opened again
    assert not [e for e in b.events if e.status == "opened"]
    mid = old.moments.rules.snapshot()["zone_crowded/plaza"]["moment_id"]
    assert new.moments.rules.snapshot()["zone_crowded/plaza"]["moment_id"] == mid


def test_the_open_moment_resolves_under_its_old_id_after_the_gap(tmp_path: Path) -> None:
    old = crowded()
    mid = old.moments.rules.snapshot()["zone_crowded/plaza"]["moment_id"]
    new = core()
    new.restore(old.checkpoint(), 600.0)  # down 10 min: the area's guests timed out
    events = [e for t in range(600, 700) for e in new.step(float(t)).events]
    resolved = [e for e in events if e.kind == "zone_crowded" and e.status == "resolved"]
    assert resolved and resolved[0].moment_id == mid


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_refused_with_the_reason(tmp_path: Path, damage: str) -> None:
    c = crowded()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, c.checkpoint())
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 4096,
                      "empty": b""}[damage])
    cp, why = checkpoint.load(path, checkpoint.fingerprint(c.cfg))
    assert cp is None and "damaged" in why


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    c = crowded()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, c.checkpoint())
    other = parse_config(CONFIG.replace('id = "plaza"', 'id = "lobby"').replace(
        'zone = "plaza"', 'zone = "lobby"'))
    cp, why = checkpoint.load(path, checkpoint.fingerprint(other))
    assert cp is None and "another configuration" in why


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    c = crowded()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, c.checkpoint())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["format"] = checkpoint.FORMAT + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path.open("wb"), **arrays)
    cp, why = checkpoint.load(path, checkpoint.fingerprint(c.cfg))
    assert cp is None and "format" in why


def test_an_engine_of_other_settings_refuses_the_state() -> None:
    c = crowded()
    cp = c.checkpoint()
    cfg = parse_config(CONFIG)
    other = GatewayCore(dataclasses.replace(cfg, estimation=dataclasses.replace(
        cfg.estimation, window_s=60.0)), key=KEY, max_tags=1024)
    with pytest.raises(checkpoint.CheckpointError):
        other.restore(cp, 10.0)


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    c = crowded()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, c.checkpoint())
    checkpoint.save(path, c.checkpoint())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_unused_rows_are_stored_once_and_restored_bit_for_bit(tmp_path: Path) -> None:
    """The engine's arrays are sized for max_tags; a checkpoint stores the rows up to the
    last one that differs from the final row, and that row once. NaN, -1 and 2-d rows come
    back bit for bit; an array without such a run is stored whole."""
    c = crowded()
    cp = c.checkpoint()
    cp.engine["probe_nan"] = np.array([1.0, np.nan, 2.0] + [np.nan] * 50)
    cp.engine["probe_2d"] = np.vstack([np.arange(6).reshape(3, 2), np.full((40, 2), -1)])
    cp.engine["probe_whole"] = np.arange(30, dtype=np.int32)
    cp.engine["probe_empty"] = np.zeros((0, 3))
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, cp)
    with np.load(path) as z:
        stored = {k: z[k].shape for k in z.files}
        stored_bytes = sum(z[k].nbytes for k in z.files)
    assert stored["engine/probe_nan"] == (3,) and stored["tail/probe_nan"] == (1,)
    assert stored["engine/probe_2d"] == (3, 2) and stored["engine/probe_whole"] == (30,)
    rows = c.engine.params.max_tags
    assert stored["engine/row_last"][0] < rows // 10  # 5 guests, not 1,024 rows
    back, why = checkpoint.load(path, checkpoint.fingerprint(c.cfg))
    assert back is not None, why
    for name, want in cp.engine.items():
        got = back.engine[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name
    # what is inflated on load: a small part of the engine (the hash slots and the free-row
    # stack stay whole); every array stored whole (format 1) is still read
    assert stored_bytes < sum(np.asarray(v).nbytes for v in cp.engine.values()) / 2
    whole = tmp_path / "whole.npz"
    meta = {"format": 1, "fingerprint": cp.fingerprint, "taken_at": cp.taken_at,
            "moments": cp.moments, "extra": cp.extra}
    np.savez_compressed(whole, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                        **{"engine/" + k: v for k, v in cp.engine.items()})
    old, why = checkpoint.load(whole, checkpoint.fingerprint(c.cfg))
    assert old is not None, why
    assert old.engine["row_last"].tobytes() == back.engine["row_last"].tobytes()


def test_a_shortened_array_without_its_tail_is_damage(tmp_path: Path) -> None:
    c = crowded()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, c.checkpoint())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "tail/row_last"}
    np.savez(path.open("wb"), **arrays)
    cp, why = checkpoint.load(path, checkpoint.fingerprint(c.cfg))
    assert cp is None and "damaged (shortened array" in why


def _kept_rows_naive(a: np.ndarray) -> int:
    """kept_rows by its definition, one row at a time (the oracle)."""
    n = a.shape[0]
    while n > 0 and a[n - 1].tobytes() == a[-1].tobytes():
        n -= 1
    return n


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 3000), st.integers(0, 3000), st.sampled_from([1, 3, 9000]),
       st.sampled_from([np.float64, np.int8, np.int32]), st.booleans())
def test_kept_rows_matches_its_definition(n: int, head: int, width: int, dtype: type,
                                          nan_fill: bool) -> None:
    """Across the block boundaries of the backwards scan, 1-d and wide 2-d rows, NaN tails."""
    head = min(head, n)
    shape = (n,) if width == 1 else (n, width)
    fill = np.nan if nan_fill and dtype is np.float64 else 0
    a = np.full(shape, fill, dtype=dtype)
    a[:head] = np.arange(1, head + 1, dtype=dtype).reshape((head,) + (1,) * (a.ndim - 1))
    assert checkpoint.kept_rows(a) == _kept_rows_naive(a)
