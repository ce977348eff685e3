"""The ahead-of-time kernels (kernels/backends.py, kernels/aot_build.py).

The session's module is built once by conftest.py; the twin and engine tests run it and the
JIT side by side. Here: what is loaded and what is refused, the first-call argument checks,
and a real agent process that starts on the module without numba, or stops, named, when it
is forced to and there is none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import ZoneEngine, backends
from kernels.backends import AotCall, KernelsUnavailable, check_arg
from tests.agent_process import agent_env, start_agent
from tests.test_kernels_engine import ENTRY, TOPO, feed


def _session_module() -> tuple[Path, Path]:
    return backends.module_paths(backends.source_tag())


def test_the_session_module_is_loaded_and_numba_stays_out() -> None:
    """A fresh interpreter that builds an engine on the module never imports numba or
    llvmlite: that is where the start-up time and the memory went."""
    code = (
        "import sys, numpy as np\n"
        "from kernels import ZoneEngine, backends\n"
        "from tests.test_kernels_engine import TOPO\n"
        "e = ZoneEngine(TOPO, max_tags=64)\n"
        "e.ingest(np.array([1.0]), np.array([5], np.uint64), np.array([0], np.int32))\n"
        "m = e.tick(2.0)\n"
        "print(e.kernels.backend, int(m.queue_length[0]),\n"
        "      sorted(k for k in sys.modules if k.split('.')[0] in ('numba', 'llvmlite')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=agent_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["aot", "1", "[]"]


def test_jit_is_chosen_and_says_why_when_no_module_is_built(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty"))
    chosen = backends.choose("auto")
    assert chosen.backend == "jit"
    assert "no ahead-of-time module for this code" in (chosen.reason or "")
    assert "venue-agent build-kernels" in chosen.describe()
    with pytest.raises(KernelsUnavailable, match="build-kernels"):
        backends.choose("aot")
    with pytest.raises(ValueError, match="VENUE_AGENT_KERNELS"):
        backends.choose("fast")


def test_a_module_for_other_code_or_a_broken_one_is_refused(tmp_path: Path) -> None:
    so, meta = _session_module()
    other_tag = "0" * 16
    other_so, other_meta = backends.module_paths(other_tag, tmp_path)
    shutil.copy(so, other_so)
    shutil.copy(meta, other_meta)
    with pytest.raises(KernelsUnavailable, match="no ahead-of-time module for this code"):
        backends.load_aot(tmp_path)  # built from other sources: a stale module is not loaded

    mine_so, mine_meta = backends.module_paths(backends.source_tag(), tmp_path)
    mine_so.write_bytes(so.read_bytes()[:4096])  # a truncated copy (a full disk, a power cut)
    shutil.copy(meta, mine_meta)
    with pytest.raises(KernelsUnavailable, match="does not load"):
        backends.load_aot(tmp_path)

    shutil.copy(so, mine_so)
    described = json.loads(meta.read_text())
    del described["entry_points"]["zone_metrics"]
    mine_meta.write_text(json.dumps(described))
    with pytest.raises(KernelsUnavailable, match="zone_metrics"):
        backends.load_aot(tmp_path)


def test_the_tag_covers_the_sources_the_versions_and_the_cpu(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    tag = backends.source_tag()
    monkeypatch.setattr(backends, "cpu_identity", lambda: "another cpu")
    assert backends.source_tag() != tag
    monkeypatch.undo()
    monkeypatch.setattr(backends, "dist_version", lambda dist: "0.0" if dist == "numba" else "1")
    assert backends.source_tag() != tag


def test_the_first_call_checks_every_argument_and_names_the_wrong_one() -> None:
    spec = json.loads(_session_module()[1].read_text())["entry_points"]
    engine = ZoneEngine(TOPO, max_tags=64, kernels=backends.choose("aot"))
    feed(engine, [(1.0, 5, ENTRY)])
    ingest = engine.kernels.module.ingest_reads
    good = (np.array([2.0]), np.array([5], np.uint64), np.array([1], np.int32),
            np.empty(0, np.float32), np.float64(-np.inf), engine._shift, engine._k_topo,
            engine._k_tag_params, engine._k_table, engine._k_rows, engine._k_cand,
            engine._k_zones, engine._k_hist)
    for i, bad, message in [
        (1, np.array([5], np.int64), "argument 1: uint64"),  # another dtype
        (0, np.array([[2.0]]), "argument 0: float64\\[1-d\\] expected"),
        (0, np.arange(4.0)[::2], "C-contiguous"),
        (7, engine._k_tag_params._replace(fifo_slack_s="x"), "argument 7.fifo_slack_s: a num"),
        (9, tuple(engine._k_rows), "argument 9: a TagRows"),
    ]:
        args = list(good)
        args[i] = bad
        call = AotCall("ingest_reads", ingest, spec["ingest_reads"])
        with pytest.raises(TypeError, match=message):
            call.call(*args)
        assert call.call == call._first  # nothing bound after a refused call
    frozen = engine._k_rows._replace(key=engine._row_key.copy())
    frozen.key.setflags(write=False)
    with pytest.raises(TypeError, match="argument 9.key: the kernel writes it"):
        AotCall("ingest_reads", ingest, spec["ingest_reads"]).call(*good[:9], frozen, *good[10:])
    call = AotCall("ingest_reads", ingest, spec["ingest_reads"])
    call.call(*good)
    assert call.call is ingest  # checked once, then called directly
    assert engine.tick(3.0).queue_length[0] == 0  # the exit read went through
    check_arg({"scalar": "<i8"}, 3, "n")
    with pytest.raises(TypeError, match="n: a number of dtype <i8"):
        check_arg({"scalar": "<i8"}, 3.5, "n")
    with pytest.raises(TypeError):
        check_arg({"scalar": "<f8"}, True, "flag")


def _gateway(tmp_path: Path, cache: Path) -> Path:
    from agent.broker import free_port

    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[venue]
id = "v"
[gateway]
id = "gw-aot"
[broker]
url = "mqtt://127.0.0.1:{free_port()}"
[storage]
path = "{tmp_path / 'agent.db'}"
numba_cache_dir = "{cache}"
[[zones]]
id = "hall"
kind = "area"
[[readers]]
id = "hall-a"
protocol = "em4100"
port = "{tmp_path / 'no-such-port'}"
zone = "hall"
role = "presence"
""")
    return cfg


def _started(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> str:
    import time

    deadline = time.monotonic() + timeout
    while "first tick" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return log.read_text()


@pytest.mark.e2e
def test_an_agent_runs_on_the_module_without_numba_or_stops_naming_the_build(
        tmp_path: Path) -> None:
    session_aot = _session_module()[0].parent
    cache = tmp_path / "cache"
    shutil.copytree(session_aot, cache / "aot")
    cfg = _gateway(tmp_path, cache)
    env = dict(agent_env())
    env.pop("NUMBA_CACHE_DIR", None)  # the config's storage.numba_cache_dir decides
    log = tmp_path / "agent.log"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        text = _started(proc, log)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert f"kernels: ahead-of-time module {cache / 'aot'}" in text
    assert "llvmlite" not in maps and "/numba/" not in maps  # neither LLVM nor numba's C parts

    # Forced to the ahead-of-time kernels where there are none: a named stop, exit 1.
    empty = tmp_path / "empty"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config",
                          str(_gateway(tmp_path, empty))], capture_output=True, text=True,
                         env={**env, "VENUE_AGENT_KERNELS": "aot"}, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "cannot start: no ahead-of-time module for this code" in out.stderr
    assert "venue-agent build-kernels" in out.stderr


@pytest.mark.e2e
def test_an_agent_without_the_module_runs_on_jit_and_says_so(tmp_path: Path) -> None:
    cfg = _gateway(tmp_path, tmp_path / "cache")
    log = tmp_path / "agent.log"
    # The session's warm numba cache, no module in it for this test: JIT, loaded warm.
    proc = start_agent(cfg, log, VENUE_AGENT_KERNELS="jit")
    try:
        text = _started(proc, log, timeout=300)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "kernels: numba JIT, cached in " in text


def test_build_kernels_names_what_is_missing(tmp_path: Path) -> None:
    """No writable folder, no C compiler: exit 1 with what to do, nothing half-written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "build-kernels", "--dir",
                          str(blocker / "aot")], capture_output=True, text=True,
                         env=agent_env(), timeout=120)
    assert out.returncode == 1, out.stderr
    assert f"cannot write to {blocker / 'aot'}" in out.stderr

    folder = tmp_path / "aot"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "build-kernels", "--dir",
                          str(folder)], capture_output=True, text=True,
                         env=agent_env(CC=str(tmp_path / "no-such-cc")), timeout=300)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "cannot build the kernels: no C toolchain for numba's pycc" in out.stderr
    assert "needs a C compiler and the Python headers" in out.stderr
    assert "Traceback" not in out.stderr
    assert list(folder.iterdir()) == []  # its scratch folder removed, no module, no JSON
