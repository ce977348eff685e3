"""Sortable unique message ids (ULID).

Every payload carries an ``id`` that consumers dedupe on (delivery is at-least-once) and
that sorts by creation time. A ULID is 128 bits: a 48-bit Unix time in milliseconds
followed by 80 random bits, written as 26 characters of Crockford base32, so the string
order equals the time order.

Ids from one process are strictly increasing, even for many ids within one millisecond and
across a backward step of the wall clock (NTP correcting a gateway that booted without an
RTC): in both cases the last timestamp is kept and the random part is incremented, as the
ULID spec's monotonic mode does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

__all__ = ["CROCKFORD32", "UlidGenerator", "id_time_ms", "new_id"]

CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(CROCKFORD32)}
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
_TIME_MAX = (1 << 48) - 1
_LENGTH = 26


def _encode(value: int) -> str:
    chars = []
    for _ in range(_LENGTH):
        chars.append(CROCKFORD32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class UlidGenerator:
    """Monotonic ULID source; ``clock_ms`` and ``randbytes`` are injectable for tests."""

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._randbytes = randbytes
        self._last_ms = -1
        self._last_rand = 0
        # Producers may live in more than one thread (reader threads log with ids too).
        self._lock = threading.Lock()

    def new(self) -> str:
        """Return the next id; strictly greater than every id this generator returned."""
        with self._lock:
            now = self._clock_ms()
            if now > self._last_ms:
                self._last_ms = now
                self._last_rand = int.from_bytes(self._randbytes(10), "big")
            else:
                # Same millisecond or the clock went back: stay on the last timestamp and
                # count up, so order is kept without waiting for the clock to catch up.
                self._last_rand += 1
                if self._last_rand > _RANDOM_MAX:
                    # 2**80 ids in one millisecond cannot happen from a random start in
                    # practice, but borrow the next millisecond rather than wrap.
                    self._last_ms += 1
                    self._last_rand = 0
            if self._last_ms > _TIME_MAX:
                raise OverflowError("ULID timestamp beyond year 10889")
            return _encode((self._last_ms << _RANDOM_BITS) | self._last_rand)


_default = UlidGenerator()


def new_id() -> str:
    """Return a new 26-character ULID, monotonic within this process."""
    return _default.new()


def id_time_ms(ulid: str) -> int:
    """Return the Unix time in milliseconds encoded in ``ulid``; ValueError if malformed."""
    if len(ulid) != _LENGTH:
        raise ValueError(f"not a ULID (expected {_LENGTH} characters): {ulid!r}")
    value = 0
    for ch in ulid.upper():
        if ch not in _DECODE:
            raise ValueError(f"not a ULID (bad character {ch!r}): {ulid!r}")
        value = (value << 5) | _DECODE[ch]
    if value >> 128:
        raise ValueError(f"not a ULID (exceeds 128 bits): {ulid!r}")
    return value >> _RANDOM_BITS
