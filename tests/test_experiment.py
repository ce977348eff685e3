"""The nudge experiment's estimator, its SQLite records and `venue-agent report`."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest

from agent import cli
from agent.experiment import (
    Opportunity,
    OpportunityStore,
    Outcome,
    estimate,
    parse_since,
)

NOW = 1_750_000_000.0


def _o(i: int, arm: str, y: float, x: float | None = None, alt: str = "jungle-queue") -> Outcome:
    return Outcome(f"id{i}", "dino-queue", alt, arm, NOW + i, y, x)


def test_the_difference_of_means_and_its_welch_interval() -> None:
    sent = [10.0, 12.0, 14.0, 16.0]
    held = [5.0, 7.0, 6.0]
    rows = [_o(i, "sent", y) for i, y in enumerate(sent)]
    rows += [_o(10 + i, "held_out", y) for i, y in enumerate(held)]
    e = estimate(rows)  # no covariates: no adjustment
    assert not e.adjusted and e.rough
    assert e.uplift_arrivals == pytest.approx(13.0 - 6.0)
    se = math.sqrt(statistics.variance(sent) / 4 + statistics.variance(held) / 3)
    assert e.ci_low == pytest.approx(7.0 - 1.959964 * se, rel=1e-5)
    assert e.ci_high == pytest.approx(7.0 + 1.959964 * se, rel=1e-5)
    assert e.uplift_pct == pytest.approx(100 * 7.0 / 6.0)


def test_the_covariate_removes_what_the_crowd_did_anyway() -> None:
    # Outcome = covariate + 5 when sent: the adjustment recovers 5 exactly, with a tiny
    # interval, although the arms' covariates differ.
    xs_s, xs_h = [10.0, 30.0, 50.0, 70.0], [20.0, 40.0, 60.0, 90.0]
    rows = [_o(i, "sent", x + 5.0 + (0.1 if i % 2 else -0.1), x) for i, x in enumerate(xs_s)]
    rows += [_o(10 + i, "held_out", x + (0.1 if i % 2 else -0.1), x)
             for i, x in enumerate(xs_h)]
    e = estimate(rows)
    assert e.adjusted
    assert e.uplift_arrivals == pytest.approx(5.0, abs=0.3)
    assert e.ci_high - e.ci_low < 1.0  # type: ignore[operator]
    assert estimate([r for r in rows if r.arm == "sent"]).uplift_arrivals is None


def test_since_reads_durations_and_dates() -> None:
    assert parse_since("90m", NOW) == NOW - 5400
    assert parse_since("7d", NOW) == NOW - 7 * 86400
    assert parse_since("2025-06-01", NOW) == 1748736000.0
    assert parse_since("2025-06-01T09:00:00Z", NOW) == 1748736000.0 + 9 * 3600
    with pytest.raises(ValueError, match="--since"):
        parse_since("last week", NOW)


def _record(db: Path, n: int = 12) -> None:
    store = OpportunityStore(db)
    t = time.time() - 3600
    for i in range(n):
        arm = "held_out" if i % 3 == 0 else "sent"
        store.opened(Opportunity(f"op{i}", "dino-queue", "jungle-queue", "gw-b", arm, t + i,
                                 900.0, 240.0, 2700.0, 480.0, 40.0 + i))
        store.measured(f"op{i}", 40.0 + i + (20.0 if arm == "sent" else 0.0))
    store.opened(Opportunity("open", "dino-queue", "jungle-queue", "gw-b", "sent", t + 99,
                             900.0, 240.0, 2700.0, 480.0, None))
    store.close()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[venue]\nid = "park"\n[gateway]\nid = "gw-a"\n[storage]\npath = '
                   f'"{tmp_path / "agent.db"}"\n[[zones]]\nid = "dino-queue"\nkind = "queue"\n'
                   'alternatives = [{zone = "jungle-queue", walk_s = 240}]\n')
    return cfg


def test_records_survive_a_restart_and_an_interrupted_one_is_incomplete(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    _record(db)
    store = OpportunityStore(db)  # the gateway starts again
    assert len(store.outcomes()) == 12
    assert store.counts() == {"measured": 12, "incomplete": 1, "sent": 9, "held_out": 4}
    store.close()


def test_report_prints_the_uplift_with_its_interval(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _record(tmp_path / "agent.db")
    cfg = _config(tmp_path)
    assert cli.main(["report", "--config", str(cfg), "--since", "1d"]) == 0
    out = capsys.readouterr().out
    assert "12 measured opportunities, 0 incomplete, 1 still measuring" in out
    assert "dino-queue -> jungle-queue" in out and "95 % interval" in out
    assert cli.main(["report", "--config", str(cfg), "--since", "1d", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sent"] == 8 and data["held_out"] == 4
    assert data["uplift_arrivals"] == pytest.approx(20.0, abs=0.01)
    assert data["ci_low"] <= 20.0 <= data["ci_high"]
    assert data["window_s"] == 900.0
    # Nothing began in the last minute.
    assert cli.main(["report", "--config", str(cfg), "--since", "1m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["opportunities"] == 0


def test_report_errors_name_the_problem(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    assert cli.main(["report", "--config", str(cfg)]) == 1  # no records yet
    assert "holds no nudge experiment records" in capsys.readouterr().err
    _record(tmp_path / "agent.db")
    assert cli.main(["report", "--config", str(cfg), "--since", "yesterday"]) == 2
    assert "--since: expected a duration" in capsys.readouterr().err
