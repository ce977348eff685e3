"""The forward-secure key and the carry-over of visits across a rotation.

The key file holds the current epoch's key alone; each rotation replaces it with the next
key of a one-way ratchet, so no earlier key is left on the disk. Wristbands inside a zone at
the rotation keep their pseudonym until they leave (the previous key in memory only, for at
most ``privacy.carry_over_s``), so a visit across the rotation is measured once. Two
simulated days through the gateway core show both, and a checkpoint taken after the
rotation resumes with the key file's pseudonyms.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from agent import checkpoint
from agent.config import parse_config
from agent.gateway import GatewayCore
from agent.privacy import (
    EpochKey,
    KeyFileError,
    Pseudonymizer,
    Rotation,
    epoch_key,
    load_or_create_key,
    store_key,
)
from firmware_bridge.records import RawRead
from tests.configs import RIDE_READERS

pytestmark = pytest.mark.timeout(120)

UTC = Rotation(24, "04:00", utcoffset=lambda _ts: 0)
T0 = 1_780_000_000.0
TAG = bytes.fromhex("62E3086CED")
K = bytes(range(32))


# ------------------------------------------------------------------------- the ratchet
def test_the_ratchet_goes_forward_only_and_in_any_steps() -> None:
    k = EpochKey(100, K)
    three = k.advance(103)
    assert three == k.advance(101).advance(102).advance(103)  # off for a while: same key
    assert len({k.key, k.advance(101).key, three.key}) == 3
    assert k.advance(100) == k
    with pytest.raises(ValueError, match="only goes forward"):
        three.advance(102)
    assert "key=" not in repr(k) and K.hex() not in repr(k)  # never in a log line


def test_the_key_file_holds_only_the_current_epochs_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pseudonym.key"
    first = load_or_create_key(path, 100)
    assert path.read_text() == f"v2 100 {first.key.hex()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    nxt = first.advance(101)
    store_key(path, nxt)
    data = path.read_bytes()
    assert data == f"v2 101 {nxt.key.hex()}\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the old key is nowhere in the directory, in any form; no backup or temporary is left
    assert os.listdir(path.parent) == ["pseudonym.key"]
    assert first.key.hex().encode() not in data and first.key not in data
    assert load_or_create_key(path, 101) == nxt


def test_a_stale_temporary_key_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    load_or_create_key(path, 5)
    stale = tmp_path / ".pseudonym.key.4242.tmp"  # a crash between write and rename
    stale.write_text(f"v2 6 {bytes(32).hex()}\n")
    load_or_create_key(path, 6)
    assert not stale.exists()


def test_a_master_key_file_is_migrated(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text(K.hex() + "\n")
    path.chmod(0o600)
    e = UTC.epoch(T0)
    with caplog.at_level(logging.WARNING, logger="agent.privacy"):
        ek = load_or_create_key(path, e)
    assert ek == EpochKey(e, epoch_key(K, e))
    assert path.read_text() == f"v2 {e} {ek.key.hex()}\n"  # the master key is gone
    assert "migrated from a master key" in caplog.text and str(path) in caplog.text
    # today's pseudonyms do not change with the migration
    before = Pseudonymizer(K, rotation=UTC).at(T0)("em4100", TAG)
    assert Pseudonymizer(ek, rotation=UTC).at(T0)("em4100", TAG) == before
    # a mode others can read is still refused
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(path, e)


def test_a_damaged_v2_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    for text in ("v2 12 abcd", "v2 x " + K.hex(), "v3 1 " + K.hex(), ""):
        path.write_text(text)
        path.chmod(0o600)
        with pytest.raises(KeyFileError, match="damaged"):
            load_or_create_key(path, 1)


def test_the_pseudonymiser_ratchets_from_the_key_file_and_never_back() -> None:
    day = UTC.start(UTC.epoch(T0))
    e = UTC.epoch(day)
    stored = EpochKey(e - 3, K)  # the gateway was off for three rotations
    p = Pseudonymizer(stored, rotation=UTC)
    p.at(day + 60)
    assert p.key_state == stored.advance(e) and p.epoch == e
    now = p("em4100", TAG)
    # a clock behind the key file keeps the key file's epoch
    ahead = Pseudonymizer(EpochKey(e + 1, K), rotation=UTC)
    ahead.at(day + 60)
    assert ahead.epoch == e + 1 and ahead.key_state == EpochKey(e + 1, K)
    # the same key at the same epoch gives the same pseudonyms: nothing else is stored
    assert Pseudonymizer(stored.advance(e), rotation=UTC).at(day)("em4100", TAG) == now


# ------------------------------------------------------------------------- the carry-over
def test_carry_over_keeps_live_wristbands_and_only_those() -> None:
    day = UTC.start(UTC.epoch(T0) + 1)  # a rotation
    live: set[int] = set()
    p = Pseudonymizer(EpochKey(UTC.epoch(day) - 1, K), rotation=UTC, carry_over_s=600,
                      live=lambda: live)
    inside, outside = b"\x01" * 5, b"\x02" * 5
    old_in, old_out = p.at(day - 10)("em4100", inside), p("em4100", outside)
    live.add(old_in)
    p.at(day + 1)
    assert p.carrying
    assert p("em4100", inside) == old_in  # the visit goes on
    new_out = p("em4100", outside)
    assert new_out != old_out  # not inside at the rotation: a new pseudonym at once
    p.settle(day + 5, {old_in})
    assert p("em4100", inside) == old_in and p.carrying
    p.settle(day + 6, set())  # it left: its next read is a new visit, the old key goes
    assert not p.carrying
    fresh = p("em4100", inside)
    assert fresh not in (old_in, old_out, new_out)
    assert p.carried_total == 1
    # the same, but the carry-over runs out while the wristband is still inside
    live2: set[int] = set()
    q = Pseudonymizer(EpochKey(UTC.epoch(day) - 1, K), rotation=UTC, carry_over_s=600,
                      live=lambda: live2)
    live2.add(q.at(day - 10)("em4100", inside))
    q.at(day + 1)
    assert q("em4100", inside) == old_in
    q.settle(day + 599, {old_in})
    assert q.carrying
    q.settle(day + 600, {old_in})
    assert not q.carrying and q("em4100", inside) == fresh
    assert q._old_mac is None  # the previous key is dropped


def test_no_carry_over_when_off_or_when_nobody_is_inside() -> None:
    day = UTC.start(UTC.epoch(T0) + 1)
    cases: list[tuple[float, set[int]]] = [(0.0, {1, 2}), (600.0, set())]
    for carry, live in cases:
        p = Pseudonymizer(K, rotation=UTC, carry_over_s=carry, live=live.copy)
        p.at(day - 1)
        p.at(day + 1)
        assert not p.carrying and p.rotations == 1


# ------------------------------------------------------------------------- two days
CONFIG = """
[venue]
id = "park"
[gateway]
id = "gw-1"
""" + RIDE_READERS + """
[[readers]]
id = "plaza"
protocol = "em4100"
port = "socket://127.0.0.1:7003"
zone = "plaza"
[[zones]]
id = "ride"
kind = "queue"
[[zones]]
id = "plaza"
kind = "area"
[privacy]
carry_over_s = CARRY
"""
RIDER, STROLLER, EARLY, LATE = (bytes([0x0A, 0, 0, 0, i]) for i in range(1, 5))


def _two_days(carry: float, key: EpochKey) -> tuple[GatewayCore, dict[str, object]]:
    """Reads stamped around a rotation through the core, one tick a second near it.

    RIDER queues from 10 min before the rotation to 10 min after; STROLLER is read on the
    plaza every 30 s from 15 min before to 15 min after; EARLY is read the evening before,
    LATE the next evening."""
    cfg = parse_config(CONFIG.replace("CARRY", str(carry)))
    rot = Rotation.of(cfg.privacy)
    boundary = rot.start(key.epoch + 1)
    core = GatewayCore(cfg, key=key, max_tags=256)
    seen: dict[str, object] = {"pseudonyms": {}, "states": {}}
    pseudonyms: dict[bytes, set[int]] = {}

    def read(reader: str, ts: float, band: bytes) -> None:
        core.accept_reads(reader, ts, [RawRead("em4100", band)])
        pseudonyms.setdefault(band, set()).add(int(core.buffer.tag[-1]))

    read("ride-in", boundary - 8 * 3600, EARLY)
    read("ride-out", boundary - 8 * 3600 + 300, EARLY)
    core.step(boundary - 8 * 3600 + 301)
    start = boundary - 1200
    for t in range(0, 2401, 5):  # a tick every 5 s keeps it quick
        now = start + t
        if now == boundary - 600:
            read("ride-in", now, RIDER)
        if now == boundary + 600:
            read("ride-out", now, RIDER)
        if boundary - 900 <= now <= boundary + 900 and (now - boundary) % 30 == 0:
            read("plaza", now, STROLLER)
        seen["states"][now] = core.step(now)  # type: ignore[index]
        if now == boundary + 60:
            seen["carrying_after_rotation"] = core.pseudonym.carrying
    read("ride-in", boundary + 14 * 3600, LATE)
    core.step(boundary + 14 * 3600 + 1)
    seen["pseudonyms"] = pseudonyms
    seen["boundary"] = boundary
    return core, seen


def _dwells(core: GatewayCore, zone: str) -> list[float]:
    """Every departure's duration recorded for ``zone`` (the engine's departure ring)."""
    z = core.zone_index[zone]
    e = core.engine
    n = int(e._dep_n[z])
    durations = (float(d) for d in e._dep_dur[z, :min(n, e._dep_dur.shape[1])])
    return sorted(d for d in durations if math.isfinite(d))  # NaN: left unseen


def test_two_days_a_visit_across_the_rotation_counts_once() -> None:
    key = EpochKey(UTC.epoch(T0), K)
    core, seen = _two_days(5400.0, key)
    ps: dict[bytes, set[int]] = seen["pseudonyms"]  # type: ignore[assignment]
    # different pseudonyms on the two days for wristbands outside the crossing visit
    early, late = ps[EARLY], ps[LATE]
    assert len(early) == 1 and len(late) == 1 and early != late
    # the crossing visits keep one pseudonym each
    assert len(ps[RIDER]) == 1 and len(ps[STROLLER]) == 1
    assert seen["carrying_after_rotation"] is True
    assert core.pseudonym.rotations == 1 and core.pseudonym.carried_total == 2
    assert not core.pseudonym.carrying  # ended: both left
    # measured once: one ride wait of 20 min, one plaza dwell of about 30 min
    rides = _dwells(core, "ride")
    assert [round(d) for d in rides if d > 600] == [1200], rides
    plaza = _dwells(core, "plaza")
    assert len(plaza) == 1 and 1790 <= plaza[0] <= 1800 + 130, plaza
    # and as published: the dwell in the zone state at the end of the visit
    boundary: float = seen["boundary"]  # type: ignore[assignment]
    states = seen["states"]
    assert states[boundary + 1100].values["plaza"]["dwell_p50_s"] > 1700  # type: ignore[index]


def test_without_carry_over_the_visit_splits() -> None:
    """The same two days with carry_over_s = 0: what the carry-over prevents."""
    key = EpochKey(UTC.epoch(T0), K)
    core, seen = _two_days(0.0, key)
    ps: dict[bytes, set[int]] = seen["pseudonyms"]  # type: ignore[assignment]
    assert len(ps[RIDER]) == 2 and len(ps[STROLLER]) == 2
    plaza = _dwells(core, "plaza")
    assert len(plaza) == 2 and max(plaza) < 1000, plaza
    assert 1200 not in [round(d) for d in _dwells(core, "ride")]


def test_after_the_rotation_no_file_holds_an_old_key_and_a_checkpoint_resumes(
        tmp_path: Path) -> None:
    """As the runtime does it: the key file replaced at the rotation, a checkpoint after
    it; a restart with that key file continues the same visits (same pseudonyms)."""
    state = tmp_path / "state"
    key_path = state / "pseudonym.key"
    e0 = UTC.epoch(T0)
    # an old-format master key is what the gateway had: migrated at start
    state.mkdir()
    key_path.write_text(K.hex() + "\n")
    key_path.chmod(0o600)
    key = load_or_create_key(key_path, e0)
    old_key = key.key
    core, seen = _two_days(5400.0, key)
    ek = core.pseudonym.key_state
    assert ek is not None and ek.epoch == e0 + 1
    store_key(key_path, ek)
    cp = core.checkpoint()
    checkpoint.save(state / "checkpoint.npz", cp)
    blobs = {p.name: p.read_bytes() for p in state.iterdir()}
    assert sorted(blobs) == ["checkpoint.npz", "pseudonym.key"]
    for secret in (old_key, K):  # the old epoch's key, the old master key
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            assert not any(form in b for b in blobs.values())
    assert blobs["pseudonym.key"] == f"v2 {e0 + 1} {ek.key.hex()}\n".encode()
    # restart: the key file's key gives LATE the pseudonym the checkpoint holds
    cfg = parse_config(CONFIG.replace("CARRY", "5400"))
    again = GatewayCore(cfg, key=load_or_create_key(key_path, e0 + 1), max_tags=256)
    boundary: float = seen["boundary"]  # type: ignore[assignment]
    loaded, why = checkpoint.load(state / "checkpoint.npz", checkpoint.fingerprint(cfg))
    assert loaded is not None, why
    again.restore(loaded, boundary + 14 * 3600 + 2)
    late = seen["pseudonyms"][LATE]  # type: ignore[index]
    assert set(again.engine.live_keys().tolist()) >= late
    again.accept_reads("ride-out", boundary + 14 * 3600 + 300, [RawRead("em4100", LATE)])
    assert {int(again.buffer.tag[-1])} == late
    again.step(boundary + 14 * 3600 + 301)
    assert [round(d) for d in _dwells(again, "ride")] == [300, 300, 1200]  # EARLY, LATE, RIDER


def test_a_restart_across_the_rotation_carries_the_checkpoints_visits(tmp_path: Path) -> None:
    """Off at the rotation: the key file is an epoch behind, the checkpoint holds the
    previous epoch's pseudonyms; on the first tick the core ratchets and those inside keep
    their pseudonym, and the key file can then be replaced."""
    e0 = UTC.epoch(T0)
    cfg = parse_config(CONFIG.replace("CARRY", "5400"))
    rot = Rotation.of(cfg.privacy)
    boundary = rot.start(e0 + 1)
    key = EpochKey(e0, K)
    before = GatewayCore(cfg, key=key, max_tags=256)
    before.accept_reads("ride-in", boundary - 300, [RawRead("em4100", TAG)])
    before.step(boundary - 299)
    old = int(before.engine.live_keys()[0])
    cp = before.checkpoint()
    after = GatewayCore(cfg, key=key, max_tags=256)  # the key file as it was left
    after.restore(cp, boundary + 60)
    after.step(boundary + 60)
    assert after.pseudonym.carrying and after.pseudonym.key_state == key.advance(e0 + 1)
    after.accept_reads("ride-out", boundary + 120, [RawRead("em4100", TAG)])
    assert int(after.buffer.tag[-1]) == old
    after.step(boundary + 121)
    assert [round(d) for d in _dwells(after, "ride")] == [420]
    assert after.pseudonym.carrying  # held a while after a queue exit (exit_hold_s)...
    after.step(boundary + 121 + after.engine.params.exit_hold_s + 1)
    assert after.engine.live_tags == 0
    assert not after.pseudonym.carrying  # ...then forgotten: the previous key is dropped


def test_a_late_read_never_brings_an_old_epoch_back() -> None:
    cfg = parse_config(CONFIG.replace("CARRY", "5400"))
    e0 = UTC.epoch(T0)
    boundary = Rotation.of(cfg.privacy).start(e0 + 1)
    core = GatewayCore(cfg, key=EpochKey(e0, K), max_tags=256)
    core.step(boundary + 10)  # a quiet gateway rotates on its tick
    assert core.pseudonym.epoch == e0 + 1
    assert core.pseudonym.key_state == EpochKey(e0, K).advance(e0 + 1)
    core.accept_reads("plaza", boundary - 5, [RawRead("em4100", TAG)])
    assert core.pseudonym.epoch == e0 + 1 and math.isfinite(core.buffer.ts[-1])
    assert np.uint64(core.buffer.tag[-1]) == np.uint64(
        Pseudonymizer(EpochKey(e0, K).advance(e0 + 1), rotation=Rotation.of(cfg.privacy))
        .at(boundary + 1)("em4100", TAG))


# ------------------------------------------------------------------------- the agent itself
def test_venue_agent_run_replaces_a_key_file_an_epoch_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`venue-agent run` with the key file of the epoch before (off at the rotation): on its
    first tick the key file holds the current epoch's key, and no file in the state
    directory holds the old one."""
    import time

    from agent import cli

    root = Path(__file__).resolve().parents[1]
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "gw.toml"
    cfg.write_text((root / "config" / "minimal.toml").read_text().replace(
        'path = "/var/lib/venue-agent/agent.db"', f'path = "{state / "agent.db"}"'))
    e = Rotation.of(parse_config(cfg.read_text()).privacy).epoch(time.time())
    stale = EpochKey(e - 1, K)
    key_path = state / "pseudonym.key"
    key_path.write_text(stale.line())
    key_path.chmod(0o600)
    assert cli.main(["run", "--config", str(cfg), "--duration", "2"]) == 0
    now = stale.advance(e)
    assert key_path.read_text() == now.line()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for f in state.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert K not in data and K.hex().encode() not in data, f
