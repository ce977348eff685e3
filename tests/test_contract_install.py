"""The install path: `venue-agent --version`, `venue-agent init`, and a wheel that carries the
files an install needs (example configs, systemd unit, udev rules, Mosquitto templates, the
docs with the AsyncAPI document and the JSON Schemas) and finds them once installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import main
from agent.config import load_config
from agent.install import UNIT_FILE, data_dir, shipped_file, starter_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "firmware_bridge", "kernels", "simulators")
# What the wheel needs to build: the tree without tests, caches or the venv.
SOURCES = ("pyproject.toml", "README.md", *PACKAGES, "config", "docs")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"venue-agent {__version__}"


def test_init_writes_a_config_that_check_config_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gateway.toml"
    assert main(["init", "--venue", "park-east", "--gateway", "gw-07", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"check-config {out}" in err and str(shipped_file(UNIT_FILE)) in err
    cfg = load_config(out)
    assert (cfg.venue.id, cfg.gateway.id) == ("park-east", "gw-07")
    assert {r.role for r in cfg.readers} == {"entry", "exit"} and cfg.zones[0].kind == "queue"
    assert main(["check-config", str(out)]) == 0
    assert 'id = "gw-07"' in capsys.readouterr().out

    # never replaces a config unasked
    out.write_text("# mine\n")
    assert main(["init", "--venue", "park-east", "--gateway", "gw-07", "--out", str(out)]) == 2
    assert out.read_text() == "# mine\n"
    assert "--force" in capsys.readouterr().err
    assert main(["init", "--venue", "park-east", "--gateway", "gw-07", "--out", str(out),
                 "--broker", "mqtts://broker.example:8883", "--force"]) == 0
    assert load_config(out).broker.url == "mqtts://broker.example:8883"


def test_init_prints_without_out_and_refuses_what_check_config_would(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--venue", "v", "--gateway", "g"]) == 0
    assert capsys.readouterr().out == starter_config("v", "g")
    assert main(["init", "--venue", "Park East", "--gateway", "g"]) == 2
    assert "--venue 'Park East'" in capsys.readouterr().err
    assert main(["init", "--venue", "v", "--gateway", "g", "--broker", "http://x"]) == 2
    assert "broker" in capsys.readouterr().err


def test_the_shipped_files_are_found_in_a_checkout() -> None:
    assert data_dir("config") == ROOT / "config"
    assert data_dir("docs") == ROOT / "docs"
    with pytest.raises(FileNotFoundError):
        shipped_file("nothing.conf")


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src / name)
    dist = tmp / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
                           str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = dist.glob("venue_agent-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.e2e
def test_the_wheel_carries_the_code_the_install_files_and_the_docs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    print("\n".join(sorted(names)))
    assert wheel.name == f"venue_agent-{__version__}-py3-none-any.whl"
    for pkg in PACKAGES:  # every module of every package (a new subpackage must be listed)
        for py in (ROOT / pkg).rglob("*.py"):
            assert py.relative_to(ROOT).as_posix() in names, py
    for f in (ROOT / "config").iterdir():
        assert f"venue_agent_data/config/{f.name}" in names, f.name
    for rel in ("mqtt.md", "operations.md", "asyncapi.yaml", "schemas/moment.v1.json",
                "schemas/zone-state.v1.json"):
        assert f"venue_agent_data/docs/{rel}" in names, rel
    assert "agent/py.typed" in names
    info = f"venue_agent-{__version__}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "venue-agent = agent.cli:main" in entry_points
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]


@pytest.mark.e2e
def test_the_installed_wheel_finds_its_files_and_writes_a_config(wheel: Path,
                                                                 tmp_path: Path) -> None:
    """Install the wheel into a fresh venv (its dependencies borrowed from this one) and use
    it from outside the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # numpy, paho, ... from this environment; venue-agent itself only from the wheel
    (Path(site) / "deps-from-test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)

    agent_bin = str(venv / "bin" / "venue-agent")
    assert run(agent_bin, "--version").stdout.strip() == f"venue-agent {__version__}"
    cfg = work / "gateway.toml"
    r = run(agent_bin, "init", "--venue", "park-east", "--gateway", "gw-01", "--out", str(cfg))
    assert r.returncode == 0, r.stderr
    shipped = Path(site) / "venue_agent_data" / "config"
    assert str(shipped / "example-venue.toml") in cfg.read_text()  # found via the package
    assert str(shipped / "venue-agent.service") in r.stderr
    r = run(agent_bin, "check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    r = run(str(py), "-m", "agent.install", "venue-agent.service")
    assert r.returncode == 0 and Path(r.stdout.strip()) == shipped / "venue-agent.service"
    assert "ExecStart=" in Path(r.stdout.strip()).read_text()
    r = run(str(py), "-c", "import agent; print(agent.__file__)")
    assert r.stdout.startswith(site), r.stdout  # not the checkout
    # The installed kernels hash to the checkout's tag: the wheel carries every compiled
    # source, so `build-kernels` there builds (and `run` loads) the module for this code.
    from kernels.backends import source_tag

    r = run(str(py), "-c", "from kernels import backends; print(backends.__file__, "
                           "backends.source_tag())")
    where, tag = r.stdout.split()
    assert where.startswith(site) and tag == source_tag(), (r.stdout, r.stderr)
    # the docs it ships are the contract the code generates
    r = run(agent_bin, "contract", "--check", "--out", str(Path(site) / "venue_agent_data" /
                                                          "docs"))
    assert r.returncode == 0, r.stderr


def test_the_install_walkthrough_names_real_commands_and_shipped_files() -> None:
    import argparse

    from agent.cli import build_parser

    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Install\n"):text.index("\n## ", text.index("## Install\n"))]
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    used = set(re.findall(r"bin/venue-agent ([a-z][a-z-]*)", section))
    assert {"init", "check-config", "doctor", "build-kernels"} <= used
    assert used <= set(sub.choices), used - set(sub.choices)
    init_flags = {o for a in sub.choices["init"]._actions for o in a.option_strings}
    assert set(re.findall(r"(--[a-z-]+)", section.split("venue-agent init", 1)[1][:200])) <= \
        init_flags
    shipped = set(re.findall(r"\$SHARE/(\w[\w.-]*)", section))
    assert {"venue-agent.service", "99-venue-readers.rules", "example-venue.toml"} <= shipped
    for name in shipped:
        assert (ROOT / "config" / name).is_file(), name
    assert re.search(r"^wheel:", (ROOT / "Makefile").read_text(), re.M)
    assert "python -m agent.install" in section
