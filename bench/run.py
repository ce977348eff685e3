"""Speed bench: `python bench/run.py [--quick] [--out bench/out/speed.json]`.

Measures, in one run on this machine, and prints next to the targets:

- kernels_backend: which compiled kernels the figures below ran (kernels/backends.py: "aot"
  unless the module cannot be built here);
- ingest_reads_per_s: ZoneEngine.ingest on one core (process pinned, NUMBA_NUM_THREADS=1),
  warm, median of repeats, in gateway-sized batches (one tick of reads) and in large batches;
- kernel_vs_bare / kernel_vs_bare_large_batch: that rate over the rate of a bare
  open-addressing update loop (bench/bare.py: the least work any presence engine must do per
  read) on the same reads, the two timed in alternation in this process (median of the
  per-round ratios): how near the kernel runs to the machine, whatever the machine;
- speedup_vs_python / speedup_vs_numpy: that rate over ReferenceEngine's and NumpyIngest's on
  the same stream and batches, measured in the same run (ratios, so they survive a slower or
  busier machine better than absolute figures do);
- tick_ms_p50 / tick_ms_p99: ZoneEngine.tick with 50,000 live tags in 20 zones;
- cold_start_s / warm_start_s / rss_mb: the agent process (bench/startup.py): cold on
  numba's JIT with an empty cache, warm and steady on the ahead-of-time kernels as an
  installed gateway runs (warm_start_jit_s / rss_jit_mb: on numba's warm cache instead;
  aot_build_s: ``venue-agent build-kernels``);
- gateway_pty_reads_per_cpu_s / gateway_socket_reads_per_cpu_s: the whole gateway,
  ``venue-agent run`` fed by EM4100 readers on PTYs and through ``socket://`` as fast as it
  takes bytes, reads per second of the agent's CPU (bench/gateway_speed.py: 2 readers of
  5,000 wristbands each, read over and over); gateway_pty_uncached_reads_per_cpu_s: the same
  with more wristbands per reader than the raw-id caches hold (every read checked and hashed:
  the worst case, not a venue's).

--quick bounds every stage (small stream, few repeats, short steady state) for CI; its
figures are noisier and not the ones to quote.
"""

from __future__ import annotations

import os

# numba reads these when first imported, which the imports below do. The kernels and the
# whole-gateway runs use one cache of their own, with the ahead-of-time module built in it
# (ensure_aot): the kernels a gateway installed by the book runs.
os.environ["NUMBA_NUM_THREADS"] = "1"
BENCH_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "numba-cache")
os.environ.setdefault("NUMBA_CACHE_DIR", BENCH_CACHE)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and the packages importable
    sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from bench import gateway_speed, speed, startup  # noqa: E402
from bench.workloads import make_workload  # noqa: E402

# name -> (comparison, target); "min": the figure must be at least the target.
TARGETS: dict[str, tuple[str, float]] = {
    "ingest_reads_per_s": ("min", 20e6),
    "kernel_vs_bare": ("min", 0.5),
    "kernel_vs_bare_large_batch": ("min", 0.5),
    "speedup_vs_python": ("min", 100.0),
    "speedup_vs_numpy": ("min", 3.0),
    "tick_ms_p99": ("max", 5.0),
    "warm_start_s": ("max", 1.0),
    "rss_mb": ("max", 150.0),
    "gateway_pty_reads_per_cpu_s": ("min", gateway_speed.TARGET_READS_PER_CPU_S),
}


@dataclass(frozen=True)
class Sizes:
    """How much each stage does (reads, repeats, ticks, seconds)."""

    n_reads: int  # stream length; numba runs all of it
    batch: int  # gateway batch: one 1 s tick of 40 readers at ~100 reads/s each
    large_batch: int
    repeats: int  # rounds of numba and the bare loop (medians reported)
    numpy_reads: int  # a prefix of the stream, so the slower engines stay bounded
    numpy_repeats: int
    python_reads: int
    python_repeats: int
    ticks: int
    warm_repeats: int  # agent warm starts (median reported)
    steady_s: float  # agent run time with simulated readers before RSS is read
    gateway_s: float  # whole-gateway steady window per transport


FULL = Sizes(4_000_000, 4000, 1_000_000, 7, 4_000_000, 3, 100_000, 3, 500, 3, 10.0, 8.0)
QUICK = Sizes(400_000, 4000, 200_000, 3, 200_000, 2, 12_000, 1, 50, 1, 3.0, 3.0)


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0],  # other work on the machine skews figures
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def pin_to_one_core() -> set[int] | None:
    """Pin this process to its last allowed core (the one core the ingest figure is for);
    return the previous affinity to restore, or None where affinity is not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    return before


def kernel_figures(sizes: Sizes, log: Any) -> dict[str, Any]:
    w = make_workload(n_reads=sizes.n_reads)
    speed.warm_up(w)
    batch, large = sizes.batch, sizes.large_batch
    log(f"ingest: {w.n_tags} tags, {w.topo.n_zones} zones, {w.stream.size} reads")
    pair = speed.paired_rate(w, "numba", "bare", w.stream, batch, sizes.repeats)
    pair_large = speed.paired_rate(w, "numba", "bare", w.stream, large, sizes.repeats)
    nb, nb_large = pair.a, pair_large.a
    log(f"  numba {nb.reads_per_s / 1e6:.1f} M/s, large batch {nb_large.reads_per_s / 1e6:.1f}")
    log(
        f"  bare loop {pair.b.reads_per_s / 1e6:.1f} M/s, large batch "
        f"{pair_large.b.reads_per_s / 1e6:.1f}: kernel_vs_bare {pair.ratio:.2f}, "
        f"large batch {pair_large.ratio:.2f}"
    )
    np_reads = w.stream.head(sizes.numpy_reads)
    npy = speed.ingest_rate(w, "numpy", np_reads, batch, sizes.numpy_repeats)
    npy_large = speed.ingest_rate(w, "numpy", np_reads, large, sizes.numpy_repeats)
    log(f"  numpy {npy.reads_per_s / 1e6:.2f} M/s, large batch {npy_large.reads_per_s / 1e6:.2f}")
    py = speed.ingest_rate(
        w, "python", w.stream.head(sizes.python_reads), batch, sizes.python_repeats
    )
    log(f"  python {py.reads_per_s / 1e6:.3f} M/s")
    tick = speed.tick_latency(w, batch, sizes.ticks)
    log(f"  tick p50 {tick['tick_ms_p50']:.2f} ms, p99 {tick['tick_ms_p99']:.2f} ms")
    return {
        "ingest_reads_per_s": nb.reads_per_s,
        "ingest_reads_per_s_large_batch": nb_large.reads_per_s,
        "kernel_vs_bare": pair.ratio,
        "kernel_vs_bare_large_batch": pair_large.ratio,
        "speedup_vs_python": nb.reads_per_s / py.reads_per_s,
        "speedup_vs_numpy": nb.reads_per_s / npy.reads_per_s,
        "speedup_vs_numpy_large_batch": nb_large.reads_per_s / npy_large.reads_per_s,
        "tick_ms_p50": tick["tick_ms_p50"],
        "tick_ms_p99": tick["tick_ms_p99"],
        "detail": {
            "workload": {
                "tags": w.n_tags,
                "zones": w.topo.n_zones,
                "readers": w.topo.n_readers,
                "stream_reads": w.stream.size,
                "reads_per_simulated_s": w.reads_per_s,
                "move_frac": w.move_frac,
                "gateway_batch": batch,
                "large_batch": large,
            },
            "numba": nb.as_dict(),
            "numba_large_batch": nb_large.as_dict(),
            "bare": {**pair.b.as_dict(), "kernel_vs_bare_per_round": pair.ratios},
            "bare_large_batch": {
                **pair_large.b.as_dict(),
                "kernel_vs_bare_per_round": pair_large.ratios,
            },
            "numpy": npy.as_dict(),
            "numpy_large_batch": npy_large.as_dict(),
            "python": py.as_dict(),
            "tick": tick,
        },
    }


def verdicts(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its figure and whether it is met (a missing figure is a miss)."""
    out = {}
    for name, (how, target) in TARGETS.items():
        v = figures.get(name)
        ok = v is not None and math.isfinite(v) and (v >= target if how == "min" else v <= target)
        out[name] = {"value": v, "target": target, "at_least": how == "min", "pass": bool(ok)}
    return out


def report(result: dict[str, Any]) -> str:
    """The figures as a table, targets and pass/miss beside them."""
    m = result["machine"]
    lines = [
        f"machine: {m['cpu_model']}, {m['cores']} cores, 1-min load {m['load_avg_1m_at_start']:.2f}"
        f", python {m['python']}, numpy {m['numpy']}, numba {m['numba']}"
        f"{'  [quick run: noisy]' if result['quick'] else ''}",
        f"{'figure':<32}{'value':>12}   {'target':<14}",
    ]
    mega = ("ingest_reads_per_s", "ingest_reads_per_s_large_batch")

    def fmt(name: str, v: float) -> str:
        if name.startswith("gateway_"):
            return f"{v / 1e3:,.0f} k"
        return f"{v / 1e6:.1f} M" if name in mega else f"{v:.2f}"

    for name, v in result["targets"].items():
        if v["value"] is None:
            lines.append(f"{name:<32}{'-':>12}   not measured")
            continue
        target = f"{'>=' if v['at_least'] else '<='} {fmt(name, v['target'])}"
        verdict = "pass" if v["pass"] else "MISS"
        lines.append(f"{name:<32}{fmt(name, v['value']):>12}   {target:<14}{verdict}")
    for name in (
        "ingest_reads_per_s_large_batch",
        "speedup_vs_numpy_large_batch",
        "tick_ms_p50",
        "cold_start_s",
        "cold_first_ingest_s",
        "aot_build_s",
        "warm_start_jit_s",
        "rss_peak_mb",
        "rss_jit_mb",
        "rss_cold_mb",
        "gateway_socket_reads_per_cpu_s",
        "gateway_pty_uncached_reads_per_cpu_s",
    ):
        if result.get(name) is not None:
            lines.append(f"{name:<32}{fmt(name, result[name]):>12}")
    if "start_measured_to" in result:
        lines.append(f"start-up measured to the {result['start_measured_to']}")
    return "\n".join(lines)


def ensure_aot(log: Any) -> Any:
    """The kernels this run measures: the ahead-of-time module of NUMBA_CACHE_DIR, built
    first when missing (kernels/backends.py); numba's JIT only if it cannot be built."""
    from kernels import backends
    from kernels.aot_build import BuildError, ensure

    try:
        kernels, took = ensure()
        if took is not None:
            log(f"built the ahead-of-time kernels in {took:.0f} s: {kernels.origin}")
        return kernels
    except (BuildError, backends.KernelsUnavailable) as e:
        log(f"measuring numba's JIT: {e}")
        return backends.jit_kernels(str(e))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="venue-agent speed bench")
    ap.add_argument("--quick", action="store_true", help="bounded run for CI (noisy figures)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "speed.json")
    ap.add_argument(
        "--skip-agent", action="store_true", help="kernels only: no agent start-up or RSS figures"
    )
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from agent.progress import progress
    from kernels.backends import aot_dir

    started = time.monotonic()
    kernels = ensure_aot(log)
    before = pin_to_one_core()
    try:
        with progress("bench: kernels"):  # a spinner and the elapsed time, on a terminal
            figures = kernel_figures(sizes, log)
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)  # the agent gets the whole machine, as in service
    figures["kernels_backend"] = kernels.backend
    detail = figures.pop("detail")
    if not args.skip_agent:
        log("agent: cold start, warm starts, steady RSS")
        with tempfile.TemporaryDirectory(prefix="venue-agent-bench-") as tmp, progress(
            "bench: agent start-up and RSS"
        ):
            # A bounded run copies this run's module (the same build) instead of building.
            prebuilt = aot_dir() if args.quick and kernels.backend == "aot" else None
            agent = startup.measure_agent(
                Path(tmp), warm_repeats=sizes.warm_repeats, steady_s=sizes.steady_s,
                prebuilt=prebuilt,
            )
        detail["agent"] = agent
        keys = ("cold_start_s", "cold_first_ingest_s", "warm_start_s", "rss_mb", "rss_peak_mb")
        for key in (*keys, "rss_cold_mb", "aot_build_s", "warm_start_jit_s", "rss_jit_mb",
                    "start_measured_to"):
            figures[key] = agent[key]
    if not args.skip_agent:
        log("whole gateway: venue-agent run fed by readers as fast as it takes bytes")
        runs = [("gateway_pty", "pty", gateway_speed.N_TAGS)]
        if not args.quick:
            runs += [("gateway_socket", "socket", gateway_speed.N_TAGS),
                     ("gateway_pty_uncached", "pty", gateway_speed.UNCACHED_TAGS)]
        cache = Path(os.environ["NUMBA_CACHE_DIR"])
        with progress("bench: whole gateway"):
            for name, transport, tags in runs:
                g = gateway_speed.measure(transport, 2, sizes.gateway_s, cache, n_tags=tags,
                                          warmup_s=min(3.0, sizes.gateway_s))
                log(f"  {name}: {g['reads_per_cpu_s']:,} reads per CPU-s "
                    f"({g['reads_per_s']:,} per s)")
                detail[name] = g
                figures[f"{name}_reads_per_cpu_s"] = float(g["reads_per_cpu_s"])
    result: dict[str, Any] = {
        **figures,
        "targets": verdicts(figures),
        "quick": args.quick,
        "machine": machine(),
        "sizes": asdict(sizes),
        "detail": detail,
        "bench_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
