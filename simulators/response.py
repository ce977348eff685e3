"""How guests respond to a nudge: the ground truth the nudge experiment must recover.

The crowd model of :mod:`simulators.crowd` is drawn up front; a nudge depends on what the
gateway decides as time goes on, so this model advances step by step beside it:

- guests arrive at the long line as a Poisson process (``long_rate``, guests/s);
- while a nudge is live there, each arriving guest follows it with probability ``share``
  and, instead of joining, arrives at the alternative ``walk_s`` later (plus a uniform
  ``walk_jitter_s``);
- the alternative has its own Poisson arrivals (``alt_rate``), nudged guests on top.

:meth:`NudgedArrivals.arrivals_per_min` is what the alternative's zone state publishes
(arrivals over a trailing window, per minute); :attr:`NudgedArrivals.followed` counts the
guests who followed each nudge (by the label the caller gives the window), so a test knows
the true uplift per opportunity. Times are simulated seconds from 0.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from simulators.crowd import RateSchedule, poisson_times


@dataclass(frozen=True)
class GuestResponse:
    """The share of guests who see a nudge and walk to the alternative, and the walk (s)."""

    share: float
    walk_s: float
    walk_jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or self.walk_s < 0 or self.walk_jitter_s < 0:
            raise ValueError("share must be in [0, 1], walk_s and walk_jitter_s >= 0")


@dataclass
class NudgedArrivals:
    """Arrivals at a long line and at its alternative, with guests following nudges."""

    long_rate: RateSchedule
    alt_rate: RateSchedule
    duration_s: float
    response: GuestResponse
    seed: int
    followed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._long = poisson_times(self.long_rate, self.duration_s, self._rng).tolist()
        self._alt = poisson_times(self.alt_rate, self.duration_s, self._rng).tolist()
        self._next = 0  # the next long-line arrival not yet handled
        self.joined_long = 0

    def advance(self, t: float, nudge: str | None) -> None:
        """Guests who reach the long line up to ``t``; ``nudge``: the label of the nudge live
        there since the previous call (None: none)."""
        while self._next < len(self._long) and self._long[self._next] < t:
            arrive = self._long[self._next]
            self._next += 1
            if nudge is not None and self._rng.random() < self.response.share:
                walk = self.response.walk_s + self._rng.uniform(0.0, self.response.walk_jitter_s)
                bisect.insort(self._alt, arrive + walk)
                self.followed[nudge] = self.followed.get(nudge, 0) + 1
            else:
                self.joined_long += 1

    def arrivals_per_min(self, t: float, window_s: float) -> float:
        """Arrivals at the alternative in ``(t - window_s, t]``, per minute."""
        n = bisect.bisect_right(self._alt, t) - bisect.bisect_right(self._alt, t - window_s)
        return 60.0 * n / window_s

    def arrivals_between(self, t0: float, t1: float) -> int:
        """Arrivals at the alternative in ``(t0, t1]`` (guests)."""
        return bisect.bisect_right(self._alt, t1) - bisect.bisect_right(self._alt, t0)
