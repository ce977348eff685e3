"""The nudge experiment: its records, its estimator and where its records are kept.

Every venue-wide nudge opportunity (see :mod:`agent.nudges`) is assigned at random to
``sent`` (guests are nudged) or ``held_out`` (nobody is nudged) and its outcome is the number
of guests who arrived at the alternative during its measurement window (see docs/staff.md).
The effect of nudging is the difference between the arms' mean outcomes:

- ``uplift_arrivals``: extra arrivals at the alternative per opportunity, adjusted with the
  arrivals of the rate window just before each opportunity began (CUPED / ANCOVA: ``y - theta
  * (x - mean x)``, ``theta`` the within-arm regression slope of outcome on it; it removes
  the time-of-day swing of the alternative's crowd from the comparison, it does not shift
  the estimate: the covariate is measured before the assignment);
- a 95 % confidence interval from the Welch standard error, ``uplift +- 1.96 * sqrt(s1^2/n1 +
  s0^2/n0)`` (normal approximation: say so when an arm has fewer than 10 measured
  opportunities);
- ``uplift_pct``: the uplift relative to the held-out arm's mean.

:func:`estimate` is pure (the tests and the report call it). :class:`OpportunityStore` keeps
the records in the gateway's SQLite database (table ``nudge_opportunities``), so
``venue-agent report`` and a restarted gateway still have them. Records hold zone ids, times,
waits and counts only: nothing about any guest.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ARMS = ("sent", "held_out")
# A measured opportunity has its outcome; an incomplete one lost a sample (the alternative
# went stale or offline, or the gateway restarted) and is left out of the estimate.
STATUSES = ("measuring", "measured", "incomplete")
Z95 = statistics.NormalDist().inv_cdf(0.975)
SMALL_ARM = 10  # below this many measured opportunities in an arm the interval is rough


@dataclass(frozen=True)
class Opportunity:
    """One nudge opportunity as recorded when it began. Times are wall-clock epoch seconds,
    waits and the walk in seconds, ``covariate`` the arrivals at the alternative in the rate
    window before ``started_at`` (guests; None when unknown)."""

    id: str
    zone: str
    alternative: str
    alt_gateway: str
    arm: str
    started_at: float
    window_s: float
    walk_s: float
    own_wait_s: float
    alt_wait_s: float
    covariate: float | None


@dataclass(frozen=True)
class Outcome:
    """A measured opportunity: its arm, the arrivals at the alternative in its window
    (guests) and the covariate (guests, None when unknown)."""

    id: str
    zone: str
    alternative: str
    arm: str
    started_at: float
    arrivals: float
    covariate: float | None


@dataclass(frozen=True)
class Estimate:
    """What the experiment says so far. Arrivals are guests per opportunity window."""

    opportunities: int  # measured ones (both arms)
    sent: int
    held_out: int
    sent_mean: float | None
    held_out_mean: float | None
    uplift_arrivals: float | None
    ci_low: float | None
    ci_high: float | None
    uplift_pct: float | None
    adjusted: bool  # the covariate adjustment was applied
    rough: bool  # an arm has fewer than SMALL_ARM measured opportunities

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 3) if math.isfinite(v) else None
        return d


def _var(xs: Sequence[float]) -> float:
    return statistics.variance(xs) if len(xs) > 1 else math.nan


def estimate(outcomes: Iterable[Outcome]) -> Estimate:
    """The uplift of arrivals at the alternative, sent against held out (see the module)."""
    rows = list(outcomes)
    sent = [o for o in rows if o.arm == "sent"]
    held = [o for o in rows if o.arm == "held_out"]
    ys = [o.arrivals for o in sent]
    yh = [o.arrivals for o in held]
    sm = statistics.fmean(ys) if ys else None
    hm = statistics.fmean(yh) if yh else None
    base = Estimate(len(sent) + len(held), len(sent), len(held), sm, hm, None, None, None,
                    None, False, True)
    if len(sent) < 2 or len(held) < 2 or sm is None or hm is None:
        return base
    # CUPED: only when every row has its covariate and it varies.
    adjusted = False
    adj_s, adj_h = ys, yh
    if all(o.covariate is not None for o in rows):
        # theta: the slope of outcome on covariate within the arms (ANCOVA), so a chance
        # imbalance of the covariate between the arms does not leak into theta.
        sxx = sxy = 0.0
        for arm in (sent, held):
            xa = [float(o.covariate) for o in arm]  # type: ignore[arg-type]
            xm, ym = statistics.fmean(xa), statistics.fmean(o.arrivals for o in arm)
            sxx += sum((x - xm) ** 2 for x in xa)
            sxy += sum((x - xm) * (o.arrivals - ym) for x, o in zip(xa, arm, strict=True))
        if sxx > 0:
            theta = sxy / sxx
            xm = statistics.fmean(float(o.covariate) for o in rows)  # type: ignore[arg-type]
            adj_s = [o.arrivals - theta * (float(o.covariate) - xm)  # type: ignore[arg-type]
                     for o in sent]
            adj_h = [o.arrivals - theta * (float(o.covariate) - xm)  # type: ignore[arg-type]
                     for o in held]
            adjusted = True
    uplift = statistics.fmean(adj_s) - statistics.fmean(adj_h)
    se = math.sqrt(_var(adj_s) / len(adj_s) + _var(adj_h) / len(adj_h))
    lo, hi = uplift - Z95 * se, uplift + Z95 * se
    pct = 100.0 * uplift / hm if hm > 0 else None
    return Estimate(base.opportunities, len(sent), len(held), sm, hm, uplift, lo, hi, pct,
                    adjusted, min(len(sent), len(held)) < SMALL_ARM)


def by_alternative(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], Estimate]:
    """One estimate per (zone, alternative) pair."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.zone, o.alternative), []).append(o)
    return {k: estimate(v) for k, v in sorted(groups.items())}


# ----------------------------------------------------------------------------- the store
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nudge_opportunities (
    id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    alternative TEXT NOT NULL,
    alt_gateway TEXT NOT NULL,
    arm TEXT NOT NULL,
    started_at REAL NOT NULL,
    window_s REAL NOT NULL,
    walk_s REAL NOT NULL,
    own_wait_s REAL NOT NULL,
    alt_wait_s REAL NOT NULL,
    covariate REAL,
    arrivals REAL,
    status TEXT NOT NULL DEFAULT 'measuring'
);
CREATE INDEX IF NOT EXISTS nudge_opportunities_started ON nudge_opportunities (started_at);
"""


class OpportunityStore:
    """The experiment's records in the gateway's SQLite database (its own table beside the
    outbox's; WAL lets ``venue-agent report`` read while the gateway writes)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.executescript(_SCHEMA)
            # Opportunities still measuring when the gateway stopped lost their samples.
            self._db.execute("UPDATE nudge_opportunities SET status = 'incomplete' "
                             "WHERE status = 'measuring'")
            self._db.commit()

    def close(self) -> None:
        self._db.close()

    def opened(self, o: Opportunity) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO nudge_opportunities (id, zone, alternative, alt_gateway, "
            "arm, started_at, window_s, walk_s, own_wait_s, alt_wait_s, covariate) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (o.id, o.zone, o.alternative, o.alt_gateway, o.arm, o.started_at, o.window_s,
             o.walk_s, o.own_wait_s, o.alt_wait_s, o.covariate))
        self._db.commit()

    def measured(self, opportunity_id: str, arrivals: float | None) -> None:
        """The outcome of an opportunity (None: incomplete)."""
        self._db.execute("UPDATE nudge_opportunities SET arrivals = ?, status = ? WHERE id = ?",
                         (arrivals, "incomplete" if arrivals is None else "measured",
                          opportunity_id))
        self._db.commit()

    def outcomes(self, since: float = -math.inf) -> list[Outcome]:
        """Measured opportunities that began at or after ``since`` (epoch s), oldest first."""
        rows = self._db.execute(
            "SELECT id, zone, alternative, arm, started_at, arrivals, covariate FROM "
            "nudge_opportunities WHERE status = 'measured' AND started_at >= ? "
            "ORDER BY started_at", (since if math.isfinite(since) else -1e18,)).fetchall()
        return [Outcome(*r) for r in rows]

    def counts(self, since: float = -math.inf) -> dict[str, int]:
        """Opportunities by status (and by arm) that began at or after ``since``."""
        rows = self._db.execute(
            "SELECT status, arm, COUNT(*) FROM nudge_opportunities WHERE started_at >= ? "
            "GROUP BY status, arm", (since if math.isfinite(since) else -1e18,)).fetchall()
        out: dict[str, int] = {}
        for status, arm, n in rows:
            out[status] = out.get(status, 0) + n
            out[arm] = out.get(arm, 0) + n
        return out


def table_exists(path: str | Path) -> bool:
    """Whether the database at ``path`` holds experiment records at all."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'nudge_opportunities'"
                          ).fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        db.close()


# ----------------------------------------------------------------------------- the report
def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from ``now`` (``90m``, ``12h``, ``7d``) or an RFC 3339
    date or time (``2025-06-01``, ``2025-06-01T09:00:00Z``). Epoch seconds; ValueError with
    what was expected."""
    import re
    from datetime import UTC, datetime

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        return now - float(m.group(1)) * {"m": 60.0, "h": 3600.0, "d": 86400.0}[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: expected a duration such as 90m, 12h or 7d, or a date or "
                         f"time such as 2025-06-01 or 2025-06-01T09:00:00Z, got {text!r}"
                         ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


def report_text(outcomes: Sequence[Outcome], counts: dict[str, int], since: float,
                window_s: float) -> str:
    """The report of ``venue-agent report``: the experiment overall and per alternative."""
    from agent.timefmt import rfc3339

    lines = [f"Nudge experiment since {rfc3339(since)}: {counts.get('measured', 0)} measured "
             f"opportunities, {counts.get('incomplete', 0)} incomplete, "
             f"{counts.get('measuring', 0)} still measuring.",
             f"Outcome: guests arriving at the alternative within {window_s / 60:.0f} min "
             "(from one walk after each opportunity began).", ""]
    header = (f"{'zone -> alternative':34} {'sent':>5} {'held':>5} {'sent mean':>9} "
              f"{'held mean':>9} {'uplift':>7} {'95 % interval':>17} {'uplift %':>8}")
    lines.append(header)
    rows = [("all", estimate(outcomes))]
    rows += [(f"{z} -> {a}", e) for (z, a), e in by_alternative(outcomes).items()]
    for name, e in rows:
        ci = "-" if e.ci_low is None else f"[{e.ci_low:.1f}, {e.ci_high:.1f}]"
        lines.append(f"{name:34} {e.sent:>5} {e.held_out:>5} {_fmt(e.sent_mean):>9} "
                     f"{_fmt(e.held_out_mean):>9} {_fmt(e.uplift_arrivals):>7} {ci:>17} "
                     f"{_fmt(e.uplift_pct, ' %'):>8}")
    overall = rows[0][1]
    lines.append("")
    if overall.uplift_arrivals is None:
        lines.append("Not enough yet: the uplift needs two measured opportunities in each arm.")
    else:
        lines.append("uplift: extra arrivals per opportunity, sent minus held out, adjusted for "
                     "the arrivals just before each opportunity"
                     + (" (rough: an arm has fewer than 10 opportunities)" if overall.rough
                        else "") + ".")
    return "\n".join(lines) + "\n"
