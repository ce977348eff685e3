"""Pseudonyms: raw tag ids never leave the code that decoded them.

Every read is turned into a 64-bit keyed pseudonym (HMAC-SHA256 over the protocol name and
the raw id, truncated to 8 bytes) the moment the agent receives it. The key is 32 random
bytes generated on first start and kept in a file readable only by the agent's user, so a
pseudonym cannot be reversed by brute-forcing the (small) EM4100 id space without the key,
and pseudonyms from two gateways with different keys cannot be joined.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class KeyFileError(RuntimeError):
    """The pseudonym key file exists but is unusable, or cannot be created."""


def load_or_create_key(path: Path) -> bytes:
    """Return the key stored at ``path``, creating it (mode 0600, hex) on first start."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create_key(path)
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"pseudonym key {path}: cannot read it ({e})") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"pseudonym key {path}: expected {KEY_BYTES * 2} hex characters; the file is "
            "damaged. Restore it from backup (pseudonyms change if a new key is made), or "
            "delete it to start a new key.")
    return key


def _create_key(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two agents starting at once must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path)
    except OSError as e:
        raise KeyFileError(f"pseudonym key {path}: cannot create it ({e})") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


class Pseudonymizer:
    """Maps (protocol, raw tag id) to a non-zero uint64 pseudonym.

    A small cache keeps the hot path cheap: wristbands are read over and over, and an HMAC
    costs about a microsecond. The cache holds pseudonyms of raw ids, so it is bounded and
    cleared wholesale when full.
    """

    def __init__(self, key: bytes, cache_size: int = 65536) -> None:
        if len(key) < 16:
            raise ValueError("pseudonym key must be at least 16 bytes")
        self._key = key
        # One cache per protocol, keyed by the raw id alone: no tuple to build per read.
        self._cache: dict[str, dict[bytes, int]] = {}
        self._cache_size = cache_size

    def __call__(self, protocol: str, tag_id: bytes) -> int:
        cache = self._cache.get(protocol)
        if cache is None:
            cache = self._cache[protocol] = {}
        p = cache.get(tag_id)
        if p is None:
            digest = hmac.new(self._key, protocol.encode() + b":" + tag_id,
                              hashlib.sha256).digest()
            # 0 marks an empty slot in the kernels' hash table.
            p = int.from_bytes(digest[:8], "little") or 1
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[tag_id] = p
        return p
