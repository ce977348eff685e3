"""Pseudonyms: keyed, stable within an epoch, rotated between epochs, non-zero; the key file
is created once, private, and refused when others can read it; the [privacy] config keys."""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigError, PrivacyConfig, parse_config, to_toml
from agent.privacy import (
    CACHE_SIZE,
    KeyFileError,
    Pseudonymizer,
    Rotation,
    epoch_key,
    load_or_create_key,
)

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = (ROOT / "config" / "minimal.toml").read_text()
TAG = bytes.fromhex("62E3086CED")
UTC = Rotation(24, "04:00", utcoffset=lambda _ts: 0)
T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


# ------------------------------------------------------------------------- key file
def test_key_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pseudonym.key"
    old = os.umask(0)
    try:
        k1 = load_or_create_key(path, 100)
    finally:
        os.umask(old)
    assert len(k1.key) == 32 and k1.epoch == 100
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path, 100) == k1


def test_damaged_key_is_refused_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text("not hex")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="pseudonym.key.*damaged"):
        load_or_create_key(path, 100)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o666])
def test_key_others_can_read_or_write_is_refused_naming_file_and_fix(tmp_path: Path,
                                                                      mode: int) -> None:
    path = tmp_path / "pseudonym.key"
    load_or_create_key(path, 100)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as e:
        load_or_create_key(path, 100)
    msg = str(e.value)
    assert str(path) in msg and f"{mode:04o}" in msg and f"chmod 600 {path}" in msg
    path.chmod(0o600)
    assert len(load_or_create_key(path, 100).key) == 32
    path.chmod(0o400)  # read-only for the owner is fine too
    assert len(load_or_create_key(path, 100).key) == 32


def test_key_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    load_or_create_key(real, 100)
    link = tmp_path / "pseudonym.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="pseudonym.key"):
        load_or_create_key(link, 100)
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="dir.key"):
        load_or_create_key(tmp_path / "dir.key", 100)


# ------------------------------------------------------------------------- pseudonyms
def test_pseudonyms_are_keyed_stable_and_protocol_scoped() -> None:
    a, b = Pseudonymizer(b"a" * 32), Pseudonymizer(b"b" * 32)
    assert a("em4100", TAG) == a("em4100", TAG)
    assert a("em4100", TAG) != b("em4100", TAG)
    assert a("em4100", TAG) != a("uhf-m100", TAG)
    assert 0 < a("em4100", TAG) < 2**64
    # the raw id is not recoverable from the pseudonym's digits
    assert "62e3086ced" not in format(a("em4100", TAG), "x")


def test_cache_is_bounded_by_default() -> None:
    assert CACHE_SIZE <= 16384  # two generations: at most 32,768 raw ids (docs/privacy.md)
    p = Pseudonymizer(b"k" * 32, cache_size=8)
    first = p("em4100", b"\x00\x00\x00\x00\x01")
    for i in range(100):
        p("em4100", i.to_bytes(5, "big"))
    assert p.cached() <= 2 * 8
    assert p("em4100", b"\x00\x00\x00\x00\x01") == first
    big = Pseudonymizer(b"k" * 32)
    for i in range(3 * CACHE_SIZE):
        big("em4100", i.to_bytes(5, "big"))
    assert big.cached() <= 2 * CACHE_SIZE


def test_a_working_set_as_large_as_the_cache_is_hashed_once() -> None:
    """Wristbands read in turn, as many as the cache size: after the first round no read
    pays an HMAC (the old one-generation-of-half scheme hashed ~20 % of such reads)."""
    p = Pseudonymizer(b"k" * 32, cache_size=64)
    ids = [i.to_bytes(5, "big") for i in range(64)]
    first = p.many("em4100", ids)
    hashed = 0
    real = p._hash

    def counting(*args: object) -> int:
        nonlocal hashed
        hashed += 1
        return real(*args)  # type: ignore[arg-type]

    p._hash = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert p.many("em4100", ids) == first
    assert hashed == 0
    p.many("em4100", [i.to_bytes(5, "big") for i in range(64, 200)])  # a larger set: hashed
    assert hashed == 136


def test_pseudonyms_differ_across_an_epoch_boundary_but_not_within_one() -> None:
    p = Pseudonymizer(b"k" * 32, rotation=UTC)
    day = UTC.start(UTC.epoch(T0))
    before = {p.at(ts)("em4100", TAG) for ts in (day + 1, day + 3600, day + 86399.9)}
    assert len(before) == 1
    after = {p.at(ts)("em4100", TAG) for ts in (day + 86400, day + 90000, day + 2 * 86400 - 1)}
    assert len(after) == 1 and after != before
    assert p.rotations == 1
    # the next day's pseudonym is that of a fresh pseudonymiser at that time: no state
    assert Pseudonymizer(b"k" * 32, rotation=UTC).at(day + 86400)("em4100", TAG) in after
    # a late batch stamped before the rotation does not bring the old epoch key back
    assert p.at(day + 86399)("em4100", TAG) in after
    assert p.epoch == UTC.epoch(day + 86400)


def test_rotation_clears_the_cache_and_drops_the_old_key() -> None:
    p = Pseudonymizer(b"k" * 32, rotation=UTC)
    day = UTC.start(UTC.epoch(T0))
    for i in range(10):
        p.at(day + 10)("em4100", i.to_bytes(5, "big"))
    assert p.cached() == 10
    p.at(day + 86400)
    assert p.cached() == 0
    old = epoch_key(b"k" * 32, UTC.epoch(day + 10))
    assert all(v != old for v in vars(p).values())


def test_rotation_logs_epoch_and_local_times(caplog: pytest.LogCaptureFixture) -> None:
    p = Pseudonymizer(b"k" * 32, rotation=UTC)
    day = UTC.start(UTC.epoch(T0))
    with caplog.at_level(logging.INFO, logger="agent.privacy"):
        p.at(day + 5)
        p.at(day + 86400 + 5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "rotated" in lines[1] and "rotated" not in lines[0]


def test_epoch_starts_at_rotate_at_local_time() -> None:
    r = Rotation(24, "04:00", utcoffset=lambda _ts: 3600)  # UTC+1, no DST
    e = r.epoch(T0)
    start = r.start(e)
    assert datetime.utcfromtimestamp(start + 3600).strftime("%H:%M") == "04:00"
    assert r.epoch(start) == e and r.epoch(start - 0.001) == e - 1
    assert r.start(e + 1) - start == 86400
    six = Rotation(6, "04:30", utcoffset=lambda _ts: 0)
    hours = {datetime.utcfromtimestamp(six.start(six.epoch(T0) + i)).strftime("%H:%M")
             for i in range(8)}
    assert hours == {"04:30", "10:30", "16:30", "22:30"}


def test_rotation_follows_local_time_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")

    def offset(ts: float) -> int:
        off = datetime.fromtimestamp(ts, berlin).utcoffset()
        assert off is not None
        return int(off.total_seconds())

    r = Rotation(24, "04:00", utcoffset=offset)
    for day in ("2026-03-27", "2026-10-23"):  # the clocks change on the 29th / the 25th
        first = r.epoch(datetime.fromisoformat(f"{day}T12:00").replace(tzinfo=berlin)
                        .timestamp())
        for e in range(first, first + 5):
            local = datetime.fromtimestamp(r.start(e), berlin)
            assert local.strftime("%H:%M") == "04:00", local
            assert r.epoch(r.start(e)) == e and r.epoch(r.start(e) - 1) == e - 1


@pytest.mark.parametrize(("hours", "at", "key"), [
    (5, "04:00", "rotate_hours"), (36, "04:00", "rotate_hours"), (0, "04:00", "rotate_hours"),
    (24, "4:00", "rotate_at"), (24, "24:00", "rotate_at"), (24, "04:60", "rotate_at"),
    (24, "", "rotate_at"),
])
def test_rotation_refusals_name_the_key(hours: int, at: str, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Rotation(hours, at)


# ------------------------------------------------------------------------- config keys
def _privacy(lines: str) -> str:
    return MINIMAL + "[privacy]\n" + lines + "\n"


def test_privacy_defaults_and_values() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.privacy == PrivacyConfig(rotate_hours=24, rotate_at="04:00", retention_days=1.0)
    assert cfg.privacy.retention_s == 86400.0
    printed = tomllib.loads(to_toml(cfg))
    assert printed["privacy"] == {"rotate_hours": 24, "rotate_at": "04:00",
                                  "retention_days": 1.0, "carry_over_s": 5400.0}
    cfg = parse_config(_privacy('rotate_hours = 168\nrotate_at = "05:30"\nretention_days = 7\n'
                                'carry_over_s = 0'))
    assert cfg.privacy == PrivacyConfig(168, "05:30", 7.0, 0.0)
    assert parse_config(to_toml(cfg)).privacy == cfg.privacy


@pytest.mark.parametrize(("line", "key"), [
    ("rotate_hours = 5", "privacy.rotate_hours"),
    ("rotate_hours = 0", "privacy.rotate_hours"),
    ("rotate_hours = 24.0", "privacy.rotate_hours"),
    ('rotate_at = "25:00"', "privacy.rotate_at"),
    ("rotate_at = 4", "privacy.rotate_at"),
    ("retention_days = 0", "privacy.retention_days"),
    ("retention_days = -1", "privacy.retention_days"),
    ("retain_days = 1", "privacy.retain_days"),
    ("carry_over_s = -1", "privacy.carry_over_s"),
    ("carry_over_s = 90000", "privacy.carry_over_s"),
])
def test_privacy_refusals_name_the_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_privacy(line), "gw.toml")
    assert e.value.key == key


def test_privacy_keys_are_in_the_config_reference() -> None:
    from dataclasses import fields

    doc = (ROOT / "docs" / "operations.md").read_text()
    reference = doc[doc.index("## Config reference"):]
    for f in fields(PrivacyConfig):
        assert re.search(rf"`privacy\.{f.name}`", reference), f.name


def test_run_refuses_to_start_with_a_readable_key(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`venue-agent run` stops before anything starts, naming the key file and the fix."""
    from agent import cli

    key = tmp_path / "pseudonym.key"
    load_or_create_key(key, 100)
    key.chmod(0o644)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(MINIMAL.replace('path = "/var/lib/venue-agent/agent.db"',
                                   f'path = "{tmp_path / "agent.db"}"'))
    assert cli.main(["run", "--config", str(cfg), "--duration", "0.1"]) == 1
    err = capsys.readouterr().err
    assert f"cannot start: pseudonym key {key}" in err and f"chmod 600 {key}" in err


def test_many_gives_what_one_call_per_id_gives_across_cache_generations() -> None:
    """The batch path of the per-read pseudonymiser: same pseudonyms, same bound on the
    cache, also when a batch overflows a generation (cache_size 8: 8 ids each)."""
    ids = [i.to_bytes(5, "big") for i in (1, 2, 3, 1, 4, 5, 6, 7, 8, 2, 9, 1, 10, 3)]
    batch = Pseudonymizer(b"k" * 32, cache_size=8)
    one = Pseudonymizer(b"k" * 32, cache_size=8)
    got = batch.many("em4100", ids) + batch.many("uhf-m100", ids[:3])
    assert got == [one("em4100", t) for t in ids] + [one("uhf-m100", t) for t in ids[:3]]
    assert batch.cached() <= 2 * 8 + 3
    assert batch.many("em4100", []) == []
