"""`bench/run.py --quick` runs end to end and writes every figure, sane and in one run.

Only ratios measured in the same run are asserted (never an absolute time or rate): the
compiled engine must beat its plain-Python twin by a wide margin and the numpy baseline at
all. The targets themselves are judged by the full bench, not here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FIGURES = (
    "ingest_reads_per_s",
    "ingest_reads_per_s_large_batch",
    "speedup_vs_python",
    "speedup_vs_numpy",
    "speedup_vs_numpy_large_batch",
    "tick_ms_p50",
    "tick_ms_p99",
    "warm_start_s",
    "cold_start_s",
    "cold_first_ingest_s",
    "rss_mb",
    "rss_cold_mb",
)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    for key in FIGURES:
        v = result[key]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (key, v)
    assert result["quick"] is True
    assert result["machine"]["cores"] >= 1
    # Every target is reported with a verdict, and printed beside its figure.
    for name, t in result["targets"].items():
        assert t["value"] == result[name] and isinstance(t["pass"], bool)
        assert name in proc.stdout
    # Same run, same reads: ratios only.
    assert result["speedup_vs_python"] > 20
    assert result["speedup_vs_numpy"] > 1
    assert result["tick_ms_p50"] <= result["tick_ms_p99"]
    # A warm numba cache must pay off against compiling every kernel.
    assert result["warm_start_s"] < result["cold_start_s"]
    assert result["detail"]["tick"]["live_tags_last"] == result["detail"]["workload"]["tags"]
