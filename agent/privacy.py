"""Pseudonyms: raw tag ids never leave the code that decoded them, and pseudonyms rotate.

Every read is turned into a 64-bit keyed pseudonym the moment the core receives it::

    epoch      = floor((local time of ts - rotate_at) / rotate_hours)
    key[e + 1] = HMAC-SHA256(key[e], "venue-agent/pseudonym-ratchet/<e + 1>")
    pseudonym  = first 8 bytes of HMAC-SHA256(key[epoch], "<protocol>:" + raw id)  (0 -> 1)

**The key file holds only the current epoch's key.** ``pseudonym.key`` (mode 0600) is one
ASCII line, ``v2 <epoch> <64 hex digits of key[epoch]>``, made on first start from 32 random
bytes. At every rotation the next key is derived from the current one by a one-way
function (a hash ratchet) and written over the file atomically (a temporary file, mode
0600, fsync, rename, fsync of the directory): the previous epoch's key is then gone from
the disk, and nothing on the gateway can recompute it, so the pseudonyms of past epochs
(in a checkpoint, a copied disk) can no longer be linked to a raw id by anyone, the
venue included. The next keys can still be derived from the current one: whoever copies the
key file can follow wristbands from then on, not before. A gateway that was off for several
epochs ratchets forward as many steps at once; a clock that goes back never derives an
older epoch (there is no way back). A key file of the first format (a master key, 64 hex
digits, from which every epoch's key was derived) is migrated on start: the current epoch's
key is derived from it as before (so today's pseudonyms do not change) and replaces it.

The agent refuses a key file that its group or others can read or write, as ssh does, and
names the file and the fix. Without the key a pseudonym cannot be reversed by
brute-forcing the small EM4100 id space, and pseudonyms of two gateways (two keys) cannot
be joined.

**Rotation.** The key changes every ``privacy.rotate_hours`` at local time
``privacy.rotate_at`` (default every 24 h at 04:00), so the same wristband gets unrelated
pseudonyms on two days. The epoch is taken from the reads' own time stamps (each batch's
``ts``) and from the core's ticks, so a replay or a simulation gets the pseudonyms of its
own time, and a quiet gateway still rotates on time. It never goes back: a late batch
stamped before a rotation that already happened gets the new epoch's pseudonyms.

**Visits across a rotation stay whole (carry-over).** For ``privacy.carry_over_s`` after a
rotation (default 5400 s, the queue's absence timeout; 0: off) the previous epoch's key is
kept **in memory only**. A wristband read in that time whose previous-epoch pseudonym is
still live in the zone engine (it was inside at the rotation and has not left) keeps that
pseudonym, so its visit is measured once, not as a departure and a new arrival. The
carry-over ends for a wristband when the engine forgets it (it left), and for all of them,
with the previous key dropped, when ``carry_over_s`` has passed, when no carried wristband
is left, or at the next rotation. A wristband that was not inside at the rotation gets its
new pseudonym at once. What it costs: for the wristbands inside at the rotation, their reads
of the first ``carry_over_s`` of the new epoch are linked to their old pseudonym (that is
the point), and the previous key lives that long in memory. A restart during the carry-over
ends it (the previous key is not on disk): visits in progress then split.

**Memory.** Raw ids live between decoding and hashing. A cache of the current epoch's
pseudonyms, keyed by raw id, saves the HMAC for wristbands read over and over: it keeps a
working set of up to ``cache_size`` (16384) ids per protocol, in two generations of that size
(at most twice as many raw ids, ~4 MB; the older generation is dropped when the current one
fills), and is emptied at every rotation. The bound is sized for the wristbands a gateway's readers hear again and
again (a crowd at an entry, a plaza full of beacons): a working set over it pays an HMAC per
read. Python cannot promise that a dropped key's memory is overwritten.

A pseudonymiser made with plain ``bytes`` (simulations, benchmarks, tests) treats them as a
master key and derives every epoch's key from it directly (``epoch_key``), as the first
format did; the agent itself always runs the ratchet (:class:`EpochKey`).

What this does not protect against (see docs/privacy.md): whoever holds the current key and
a raw id can compute that id's pseudonyms of the current and later epochs; pseudonyms of one
epoch link a guest's reads at one gateway for that epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_BYTES = 32
CACHE_SIZE = 16384  # working set of raw ids per protocol (two generations of this size)
_EPOCH_LABEL = b"venue-agent/pseudonym-epoch/"  # the first format: master key -> epoch key
_RATCHET_LABEL = b"venue-agent/pseudonym-ratchet/"  # key[e] -> key[e + 1]
_FORMAT = "v2"  # the key file's first word
_TMP_SUFFIX = ".tmp"
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class KeyFileError(RuntimeError):
    """The pseudonym key file exists but is unusable, or cannot be created or replaced."""


@dataclass(frozen=True)
class EpochKey:
    """The pseudonym key of one epoch: ``key`` (32 bytes) and the epoch ``epoch`` it is for."""

    epoch: int
    key: bytes = field(repr=False)  # never in a log line or a traceback

    def advance(self, epoch: int) -> EpochKey:
        """The key of ``epoch`` (>= this one): the ratchet applied once per epoch between,
        ``key[e + 1] = HMAC-SHA256(key[e], label + (e + 1))``. There is no way back: an
        earlier ``epoch`` raises ``ValueError``."""
        if epoch < self.epoch:
            raise ValueError(f"pseudonym key: epoch {epoch} is before {self.epoch}; the "
                             "ratchet only goes forward")
        k = self.key
        for e in range(self.epoch + 1, epoch + 1):
            k = hmac.digest(k, _RATCHET_LABEL + str(e).encode("ascii"), "sha256")
        return EpochKey(epoch, k)

    @classmethod
    def from_master(cls, master: bytes, epoch: int) -> EpochKey:
        """The key the first format's master key gave ``epoch`` (:func:`epoch_key`)."""
        return cls(epoch, epoch_key(master, epoch))

    def line(self) -> str:
        """The key file's content: ``v2 <epoch> <key in hex>`` and a newline (ASCII)."""
        return f"{_FORMAT} {self.epoch} {self.key.hex()}\n"


def load_or_create_key(path: Path, epoch: int) -> EpochKey:
    """The pseudonym key stored at ``path``; on first start a new random key for ``epoch``
    (the current one), written mode 0600.

    A key file of the first format (a master key) is replaced by the key of ``epoch``
    derived from it, and the log says so. The key returned may be of an earlier epoch than
    ``epoch`` (the gateway was off): the pseudonymiser ratchets it forward. Refuses
    (:class:`KeyFileError`) a key file that its group or others may read or write, a file
    that is not a regular file, and a damaged one; each message names the file."""
    _remove_stale_temporaries(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _create_key(path, epoch)
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
    parts = text.split()
    if len(parts) == 1:
        master = _hex_key(parts[0])
        if master is not None:
            ek = EpochKey.from_master(master, epoch)
            store_key(path, ek)
            log.warning("pseudonym key %s: migrated from a master key (which could recompute "
                        "every past epoch's key) to the key of epoch %d alone, derived from "
                        "it, so today's pseudonyms do not change; from now on each rotation "
                        "replaces it and earlier keys are gone from the disk", path, epoch)
            return ek
    elif len(parts) == 3 and parts[0] == _FORMAT and re.fullmatch(r"-?[0-9]{1,12}", parts[1]):
        key = _hex_key(parts[2])
        if key is not None:
            ek = EpochKey(int(parts[1]), key)
            if ek.epoch > epoch + 1:
                log.warning("pseudonym key %s is of epoch %d, later than the clock's (%d): "
                            "pseudonyms rotate again only when the clock passes that epoch. "
                            "Is the clock right (NTP)? Deleting the key file starts a new key",
                            path, ek.epoch, epoch)
            return ek
    raise KeyFileError(
        f"pseudonym key {path}: expected \"{_FORMAT} <epoch> <{KEY_BYTES * 2} hex "
        "characters>\"; the file is damaged. Delete it to start a new key (pseudonyms "
        "change, as at a rotation).")


def _hex_key(text: str) -> bytes | None:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        return None
    return key if len(key) == KEY_BYTES else None


def _create_key(path: Path, epoch: int) -> EpochKey:
    ek = EpochKey(epoch, secrets.token_bytes(KEY_BYTES))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two agents starting at once must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path, epoch)
    except OSError as e:
        raise KeyFileError(f"pseudonym key {path}: cannot create it ({e})") from None
    _write_fd(fd, ek)
    _fsync_dir(path.parent)
    log.info("pseudonym key %s: created for epoch %d (mode 0600); it is replaced at every "
             "rotation, so a backup of it is of no use", path, epoch)
    return ek


def store_key(path: Path, ek: EpochKey) -> None:
    """Replace the key file with ``ek``, atomically: a temporary file beside it (mode 0600,
    fsynced) renamed over it, then the directory fsynced. The previous key is gone from the
    file system once this returns (no backup is kept). Raises :class:`KeyFileError`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        _write_fd(fd, ek)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeyFileError(f"pseudonym key {path}: cannot replace it with the key of epoch "
                           f"{ek.epoch} ({e})") from None


def _write_fd(fd: int, ek: EpochKey) -> None:
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(ek.line())
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable (a power cut must not bring the old file back)."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """A temporary key file left by a crash between writing and renaming holds a key that a
    later rotation makes old: it must not stay on the disk."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


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
#: How long after a rotation visits in progress keep their pseudonym (privacy.carry_over_s).
CARRY_OVER_S = 5400.0


class PrivacySettings(RotationSettings, Protocol):
    """What :class:`Pseudonymizer` needs from a config (``agent.config.PrivacyConfig``)."""

    @property
    def carry_over_s(self) -> float: ...


class Pseudonymizer:
    """Maps (protocol, raw tag id) to a non-zero uint64 pseudonym of the current epoch.

    ``key``: an :class:`EpochKey` (the agent: the ratchet, see the module docstring), or
    ``bytes``, a master key every epoch's key is derived from (simulations and tests).
    ``at(ts)`` selects the epoch of a batch of reads stamped ``ts`` (forward only) and
    returns the pseudonymiser; calls before any ``at`` use the epoch of the wall clock.
    ``key_state`` is the current :class:`EpochKey`, which the runtime writes to the key file
    when its epoch changes.

    ``live()``: the pseudonyms the core holds now (the zone engine's tags and the reads
    buffered for it). Asked once per rotation; with it, wristbands live at the rotation keep
    their previous-epoch pseudonym for ``carry_over_s`` (the carry-over, module docstring),
    and ``settle(now, live)`` after each tick ends it for those that left.

    The cache holds at most ``2 * cache_size`` raw ids per protocol, in two generations: when
    the current one holds ``cache_size`` it becomes the previous one (the one before is
    dropped), and a hit in the previous one moves the id back, so a working set of up to
    ``cache_size`` wristbands read in turn never misses. Wristbands read over and over stay
    cached; a venue with more live wristbands than fit costs an HMAC (about 1.5 us) per miss
    (two during a carry-over).
    """

    def __init__(self, key: bytes | EpochKey, privacy: PrivacySettings | None = None, *,
                 cache_size: int = CACHE_SIZE, rotation: Rotation | None = None,
                 carry_over_s: float | None = None,
                 live: Callable[[], set[int]] | None = None) -> None:
        if isinstance(key, EpochKey):
            self._master: bytes | None = None
            self._key: EpochKey | None = key
        else:
            if len(key) < 16:
                raise ValueError("pseudonym key must be at least 16 bytes")
            self._master, self._key = bytes(key), None
        self.rotation = rotation if rotation is not None else Rotation.of(privacy)
        if carry_over_s is None:
            carry_over_s = privacy.carry_over_s if privacy is not None else CARRY_OVER_S
        self.carry_over_s = float(carry_over_s)
        self._live = live
        self._generation = max(1, cache_size)
        # Per protocol, keyed by the raw id alone: no tuple to build per read.
        self._cache: dict[str, dict[bytes, int]] = {}
        self._previous: dict[str, dict[bytes, int]] = {}
        self._prefix: dict[str, bytes] = {}
        self._mac: Any = None  # HMAC-SHA256 keyed with the epoch key, copied per miss
        # The carry-over: the previous epoch's HMAC (in memory only), until when, the
        # previous-epoch pseudonyms live at the rotation (and still live), and of those
        # that were read since, pseudonym -> (protocol, raw id) to uncache when they leave.
        self._old_mac: Any = None
        self._carry_until = -math.inf
        self._carry_live: set[int] = set()
        self._carried: dict[int, tuple[str, bytes]] = {}
        self.epoch: int | None = None
        self.rotations = 0  # rotations since start (the first epoch does not count)
        self.carried_total = 0  # wristbands that kept their pseudonym across a rotation
        # [_lo, _hi): the times known to be in the current epoch (the fast path of at()).
        self._lo, self._hi = math.inf, -math.inf

    @property
    def key_state(self) -> EpochKey | None:
        """The current epoch's key (None for a master key): what the key file must hold."""
        return self._key

    @property
    def carrying(self) -> bool:
        """A carry-over is in progress (the previous epoch's key is in memory)."""
        return self._old_mac is not None

    def at(self, ts: float) -> Pseudonymizer:
        """The pseudonymiser for reads stamped ``ts``: rotates first if ``ts`` is in a later
        epoch than the current one."""
        if self._lo <= ts < self._hi:
            return self
        e = self.rotation.epoch(ts)
        if self.epoch is None or e > self.epoch:
            self._enter(e, ts)
        return self

    def _enter(self, e: int, ts: float) -> None:
        first = self.epoch is None
        previous_mac = self._mac
        prev_epoch: int | None
        if self._key is not None:
            cur = self._key
            # Never back: a clock behind the key file's epoch keeps that epoch.
            e = max(e, cur.epoch)
            if first and e == cur.epoch + 1:
                # The key file is a rotation behind (the gateway was off at it): what a
                # checkpoint holds is of that epoch, so its visits may carry over.
                previous_mac = hmac.new(cur.key, digestmod=hashlib.sha256)
                first = False
            elif first and e > cur.epoch:
                first = False
            if e > cur.epoch:
                self._key = cur.advance(e)
            key = self._key.key
            prev_epoch = cur.epoch if self.epoch is None else self.epoch
        else:
            assert self._master is not None
            key = epoch_key(self._master, e)
            prev_epoch = self.epoch
        self._end_carry()  # a carry-over never spans two rotations
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._cache.clear()
        self._previous.clear()
        self.epoch = e
        self._lo, self._hi = self.rotation.start(e), self.rotation.start(e + 1)
        if first:
            log.info("pseudonyms: epoch %d (%s until %s local time)", e, self._local(self._lo),
                     self._local(self._hi))
            return
        self.rotations += 1
        carry = ""
        if (previous_mac is not None and prev_epoch == e - 1 and self.carry_over_s > 0
                and self._live is not None and ts < self._lo + self.carry_over_s):
            live = set(self._live())
            if live:
                self._old_mac, self._carry_live = previous_mac, live
                self._carry_until = self._lo + self.carry_over_s
                carry = (f"; the {len(live)} wristbands inside keep their pseudonyms until "
                         f"they leave, at most until {self._local(self._carry_until)}")
        log.info("pseudonyms: epoch %d (%s until %s local time); rotated: earlier pseudonyms "
                 "cannot be linked to new ones%s", e, self._local(self._lo),
                 self._local(self._hi), carry)

    @staticmethod
    def _local(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))

    def settle(self, now: float, live: set[int] | None = None) -> None:
        """After a tick at ``now`` (the reads' clock): end the carry-over for the wristbands
        the engine no longer holds (``live``: its pseudonyms now), and altogether once
        ``carry_over_s`` has passed or none is left; the previous key is then dropped."""
        if self._old_mac is None:
            return
        if now >= self._carry_until or live is None:
            self._end_carry()
            return
        self._carry_live &= live
        for p in [p for p in self._carried if p not in live]:
            self._uncache(*self._carried.pop(p))
        if not self._carry_live:
            self._end_carry()

    def _end_carry(self) -> None:
        if self._old_mac is None:
            return
        for protocol, tag_id in self._carried.values():
            self._uncache(protocol, tag_id)  # their next read gets the new pseudonym
        n = len(self._carried)
        self._old_mac, self._carry_until = None, -math.inf
        self._carry_live, self._carried = set(), {}
        log.info("pseudonyms: carry-over ended (%d wristbands kept their pseudonym across the "
                 "rotation); the previous epoch's key is dropped", n)

    def _uncache(self, protocol: str, tag_id: bytes) -> None:
        self._cache.get(protocol, {}).pop(tag_id, None)
        self._previous.get(protocol, {}).pop(tag_id, None)

    def __call__(self, protocol: str, tag_id: bytes) -> int:
        cache = self._cache.get(protocol)
        if cache is None:
            cache = self._start_protocol(protocol)
        p = cache.get(tag_id)
        if p is None:
            p = self._miss(protocol, cache, tag_id)
        return p

    def many(self, protocol: str, tag_ids: Iterable[bytes]) -> list[int]:
        """``[self(protocol, t) for t in tag_ids]``, in one pass: the per-read path of a
        reader's batch (one protocol), with no method call per cached id."""
        cache = self._cache.get(protocol)
        if cache is None:
            cache = self._start_protocol(protocol)
        get = cache.get
        out: list[int] = []
        append = out.append
        for t in tag_ids:
            p = get(t)
            if p is None:
                p = self._miss(protocol, cache, t)
                cache = self._cache[protocol]  # a new generation may have begun
                get = cache.get
            append(p)
        return out

    def _start_protocol(self, protocol: str) -> dict[bytes, int]:
        if self.epoch is None:
            self.at(time.time())
        self._prefix[protocol] = protocol.encode() + b":"
        self._previous[protocol] = {}
        cache: dict[bytes, int] = {}
        self._cache[protocol] = cache
        return cache

    def _hash(self, mac: Any, protocol: str, tag_id: bytes) -> int:
        m = mac.copy()
        m.update(self._prefix[protocol] + tag_id)
        # 0 marks an empty slot in the kernels' hash table.
        return int.from_bytes(m.digest()[:8], "little") or 1

    def _miss(self, protocol: str, cache: dict[bytes, int], tag_id: bytes) -> int:
        p = self._previous[protocol].get(tag_id)
        if p is None:
            p = self._carried_over(protocol, tag_id) if self._old_mac is not None else 0
            if not p:
                p = self._hash(self._mac, protocol, tag_id)
        if len(cache) >= self._generation:
            self._previous[protocol] = cache
            cache = self._cache[protocol] = {}
        cache[tag_id] = p
        return p

    def _carried_over(self, protocol: str, tag_id: bytes) -> int:
        """The previous epoch's pseudonym of a wristband live at the rotation, else 0."""
        old = self._hash(self._old_mac, protocol, tag_id)
        if old not in self._carry_live:
            return 0
        if old not in self._carried:
            self._carried[old] = (protocol, tag_id)
            self.carried_total += 1
        return old

    def cached(self) -> int:
        """Raw ids held in the cache now (all protocols, both generations)."""
        return sum(len(c) for c in self._cache.values()) + sum(
            len(c) for c in self._previous.values())
