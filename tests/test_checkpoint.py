"""Checkpoints of the gateway core: atomic files, refused when they do not fit, and a restore
that resumes the queue and the open moments."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

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
