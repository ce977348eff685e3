"""Pseudonyms: raw tag ids never leave the code that decoded them, and pseudonyms rotate.

Every read is turned into a 64-bit keyed pseudonym the moment the core receives it::

    epoch      = floor((local time of ts - rotate_at) / rotate_hours)
    epoch_key  = HMAC-SHA256(master key, "venue-agent/pseudonym-epoch/<epoch>")
    pseudonym  = first 8 bytes of HMAC-SHA256(epoch_key, "<protocol>:" + raw id)  (0 -> 1)

The **master key** is 32 random bytes made on first start, in a file only the agent's user
may read (mode 0600): the agent refuses to start with a key file that its group or others can
read or write, as ssh does, and names the file and the fix. Without the key a pseudonym
cannot be reversed by brute-forcing the small EM4100 id space, and pseudonyms of two
gateways (two keys) cannot be joined.

**Rotation.** The epoch key changes every ``privacy.rotate_hours`` at local time
``privacy.rotate_at`` (default every 24 h at 04:00, when venues are closed), so the same
wristband gets unrelated pseudonyms on two days: reads from two epochs cannot be linked
without the master key. The epoch is taken from the reads' own time stamps (each batch's
``ts``), so a replay or a simulation gets the pseudonyms of its own time. It never goes
back: a late batch stamped before a rotation that already happened gets the new epoch's
pseudonyms, so an old epoch key is never derived again. A guest who is in a zone at the
rotation instant gets a new pseudonym and is counted as having left and a new guest as
having arrived: that is why rotation belongs to a time when the venue is closed. The epoch
key of the past epoch is dropped at rotation (the agent keeps no reference to it; Python
cannot promise to overwrite its memory).

**Memory.** Raw ids live between decoding and hashing. A cache of the current epoch's
pseudonyms, keyed by raw id, saves the HMAC for wristbands read over and over: it holds at
most ``cache_size`` (4096) ids per protocol, drops the older half when full, and is emptied
at every rotation.

What this does not protect against (see docs/privacy.md): whoever holds the master key and
a raw id (e.g. the venue, reading a wristband) can compute that id's pseudonym for any epoch
and so re-link it; pseudonyms of one epoch link a guest's reads at one gateway for that epoch.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_BYTES = 32
CACHE_SIZE = 4096
_EPOCH_LABEL = b"venue-agent/pseudonym-epoch/"
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class KeyFileError(RuntimeError):
    """The pseudonym key file exists but is unusable, or cannot be created."""


def load_or_create_key(path: Path) -> bytes:
    """Return the master key stored at ``path``, creating it (mode 0600, hex) on first start.

    Refuses (:class:`KeyFileError`) a key file that its group or others may read or write,
    a file that is not a regular file, and a damaged one; each message names the file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _create_key(path)
    except OSError as e:
        raise KeyFileError(f"pseudonym key {path}: cannot read it ({e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"pseudonym key {path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"pseudonym key {path}: its mode {mode:04o} lets the group or others read or "
                f"write it; the agent refuses a key others can read. Fix: chmod 600 {path} "
                "(and check who could have copied it)")
        try:
            text = os.read(fd, 4096).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"pseudonym key {path}: cannot read it ({e})") from None
    finally:
        os.close(fd)
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
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("pseudonym key %s: created (mode 0600); back it up with the config", path)
    return key


# ----------------------------------------------------------------------------- rotation
class RotationSettings(Protocol):
    """What :class:`Rotation` needs from a config (``agent.config.PrivacyConfig``)."""

    @property
    def rotate_hours(self) -> int: ...

    @property
    def rotate_at(self) -> str: ...


def local_utcoffset(ts: float) -> int:
    """Seconds east of UTC of the machine's local time zone at ``ts`` (DST included)."""
    return time.localtime(ts).tm_gmtoff


@dataclass(frozen=True)
class Rotation:
    """When pseudonyms change: every ``rotate_hours`` hours, at local time ``rotate_at``.

    ``rotate_hours`` divides 24 or is a multiple of it, so rotations fall at ``rotate_at``
    on every day they happen (with 168, weekly, on the weekday of 1970-01-01: a Thursday).
    Epochs are counted in local time: a DST change moves the clock, not the rotation hour
    (keep ``rotate_at`` out of the hour the clocks change, 01:00-03:59 in most zones).
    Raises ``ValueError`` naming the key for anything else."""

    rotate_hours: int = 24
    rotate_at: str = "04:00"
    utcoffset: Callable[[float], int] = local_utcoffset

    def __post_init__(self) -> None:
        h = self.rotate_hours
        if isinstance(h, bool) or not isinstance(h, int) or h < 1 or h > 24 * 366:
            raise ValueError(f"rotate_hours {h!r}: expected an integer 1..{24 * 366}")
        if 24 % h and h % 24:
            raise ValueError(f"rotate_hours {h}: expected a divisor of 24 (1, 2, 3, 4, 6, 8, "
                             "12) or a multiple of it (24, 48, 168...), so that rotations "
                             "fall at rotate_at every day")
        if not isinstance(self.rotate_at, str) or not _HHMM.match(self.rotate_at):
            raise ValueError(f"rotate_at {self.rotate_at!r}: expected local time \"HH:MM\" "
                             "(00:00..23:59)")

    @classmethod
    def of(cls, settings: RotationSettings | None) -> Rotation:
        if settings is None:
            return cls()
        return cls(settings.rotate_hours, settings.rotate_at)

    @property
    def period_s(self) -> int:
        return self.rotate_hours * 3600

    @property
    def offset_s(self) -> int:
        """``rotate_at`` in seconds after local midnight."""
        hh, mm = self.rotate_at.split(":")
        return int(hh) * 3600 + int(mm) * 60

    def epoch(self, ts: float) -> int:
        """The epoch number of time ``ts`` (seconds since the Unix epoch)."""
        local = ts + self.utcoffset(ts)
        return math.floor((local - self.offset_s) / self.period_s)

    def start(self, epoch: int) -> float:
        """The time (seconds since the Unix epoch) at which ``epoch`` begins."""
        local = epoch * self.period_s + self.offset_s
        ts = local - self.utcoffset(local)
        return local - self.utcoffset(ts)


def epoch_key(master: bytes, epoch: int) -> bytes:
    """The key of one epoch: HMAC-SHA256(master key, label + epoch number)."""
    return hmac.digest(master, _EPOCH_LABEL + str(epoch).encode("ascii"), "sha256")


# ----------------------------------------------------------------------------- pseudonyms
class Pseudonymizer:
    """Maps (protocol, raw tag id) to a non-zero uint64 pseudonym of the current epoch.

    ``at(ts)`` selects the epoch of a batch of reads stamped ``ts`` (forward only) and
    returns the pseudonymiser; calls before any ``at`` use the epoch of the wall clock.

    The cache holds at most ``cache_size`` raw ids per protocol, in two generations: when
    the current one is half full it becomes the previous one (the one before is dropped),
    and a hit in the previous one moves the id back. Wristbands read over and over stay
    cached; a venue with more live wristbands than fit costs an HMAC (about 1.5 us) per miss.
    """

    def __init__(self, key: bytes, privacy: RotationSettings | None = None, *,
                 cache_size: int = CACHE_SIZE, rotation: Rotation | None = None) -> None:
        if len(key) < 16:
            raise ValueError("pseudonym key must be at least 16 bytes")
        self._master = bytes(key)
        self.rotation = rotation if rotation is not None else Rotation.of(privacy)
        self._generation = max(1, cache_size // 2)
        # Per protocol, keyed by the raw id alone: no tuple to build per read.
        self._cache: dict[str, dict[bytes, int]] = {}
        self._previous: dict[str, dict[bytes, int]] = {}
        self._prefix: dict[str, bytes] = {}
        self._mac: Any = None  # HMAC-SHA256 keyed with the epoch key, copied per miss
        self.epoch: int | None = None
        self.rotations = 0  # rotations since start (the first epoch does not count)
        # [_lo, _hi): the times known to be in the current epoch (the fast path of at()).
        self._lo, self._hi = math.inf, -math.inf

    def at(self, ts: float) -> Pseudonymizer:
        """The pseudonymiser for reads stamped ``ts``: rotates first if ``ts`` is in a later
        epoch than the current one."""
        if self._lo <= ts < self._hi:
            return self
        e = self.rotation.epoch(ts)
        if self.epoch is None or e > self.epoch:
            self._enter(e)
        return self

    def _enter(self, e: int) -> None:
        first = self.epoch is None
        # The old epoch key goes with the old HMAC object and the caches of its pseudonyms.
        self._mac = hmac.new(epoch_key(self._master, e), digestmod=hashlib.sha256)
        self._cache.clear()
        self._previous.clear()
        self.epoch = e
        self._lo, self._hi = self.rotation.start(e), self.rotation.start(e + 1)
        if not first:
            self.rotations += 1
        log.info("pseudonyms: epoch %d (%s until %s local time)%s", e,
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(self._lo)),
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(self._hi)),
                 "" if first else "; rotated: earlier pseudonyms cannot be linked to new ones")

    def __call__(self, protocol: str, tag_id: bytes) -> int:
        cache = self._cache.get(protocol)
        if cache is None:
            cache = self._start_protocol(protocol)
        p = cache.get(tag_id)
        if p is None:
            p = self._miss(protocol, cache, tag_id)
        return p

    def _start_protocol(self, protocol: str) -> dict[bytes, int]:
        if self.epoch is None:
            self.at(time.time())
        self._prefix[protocol] = protocol.encode() + b":"
        self._previous[protocol] = {}
        cache: dict[bytes, int] = {}
        self._cache[protocol] = cache
        return cache

    def _miss(self, protocol: str, cache: dict[bytes, int], tag_id: bytes) -> int:
        p = self._previous[protocol].get(tag_id)
        if p is None:
            mac = self._mac.copy()
            mac.update(self._prefix[protocol] + tag_id)
            # 0 marks an empty slot in the kernels' hash table.
            p = int.from_bytes(mac.digest()[:8], "little") or 1
        if len(cache) >= self._generation:
            self._previous[protocol] = cache
            cache = self._cache[protocol] = {}
        cache[tag_id] = p
        return p

    def cached(self) -> int:
        """Raw ids held in the cache now (all protocols, both generations)."""
        return sum(len(c) for c in self._cache.values()) + sum(
            len(c) for c in self._previous.values())
