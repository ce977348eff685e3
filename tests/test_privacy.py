"""Pseudonyms: keyed, stable, non-zero; the key file is created once, private, and checked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.privacy import KeyFileError, Pseudonymizer, load_or_create_key


def test_key_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pseudonym.key"
    k1 = load_or_create_key(path)
    assert len(k1) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == k1


def test_damaged_key_is_refused_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text("not hex")
    with pytest.raises(KeyFileError, match="pseudonym.key.*damaged"):
        load_or_create_key(path)


def test_pseudonyms_are_keyed_stable_and_protocol_scoped() -> None:
    a, b = Pseudonymizer(b"a" * 32), Pseudonymizer(b"b" * 32)
    tag = bytes.fromhex("62E3086CED")
    assert a("em4100", tag) == a("em4100", tag)
    assert a("em4100", tag) != b("em4100", tag)
    assert a("em4100", tag) != a("uhf-m100", tag)
    assert 0 < a("em4100", tag) < 2**64
    # the raw id is not recoverable from the pseudonym's digits
    assert "62e3086ced" not in format(a("em4100", tag), "x")


def test_cache_is_bounded() -> None:
    p = Pseudonymizer(b"k" * 32, cache_size=8)
    first = p("em4100", b"\x00\x00\x00\x00\x01")
    for i in range(100):
        p("em4100", i.to_bytes(5, "big"))
    assert len(p._cache) <= 8
    assert p("em4100", b"\x00\x00\x00\x00\x01") == first
