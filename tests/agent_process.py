"""The agent as its own process (`venue-agent run --config F`), as systemd runs it, for the
end-to-end tests; and :func:`run_until`, an in-process Agent's run loop until a condition."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def agent_env(**extra: str) -> dict[str, str]:
    """This environment, with the checkout importable and ``extra`` variables set."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def die_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` run so that Linux sends it SIGTERM when the process that started it dies
    (util-linux ``setpriv --pdeathsig``, which sets it and execs ``cmd`` in place, same pid),
    so an agent a test or a bench started never outlives a killed or crashed run (a leftover
    agent once held a PTY and stole a later test's bytes). ``cmd`` unchanged where setpriv
    is missing. (Not ``preexec_fn``: unsafe in a process with threads, as the tests are.)"""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)


def start_agent(cfg: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """Start the agent on ``cfg``; its stdout and stderr are appended to ``log``. It gets
    SIGTERM if this process dies first (:func:`die_with_parent`)."""
    with log.open("a") as f:
        return subprocess.Popen(
            die_with_parent([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg),
                             *args]),
            stdout=f, stderr=subprocess.STDOUT, env=agent_env(**env))


async def run_until(agent: Any, done: Callable[[], Any], timeout: float,
                    poll_s: float = 0.05) -> None:
    """Run ``agent.run`` (an in-process :class:`agent.runtime.Agent`) until ``done()`` is
    true, ``timeout`` seconds pass or the agent stops by itself; then stop it cleanly."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(poll_s)
    stop.set()
    await asyncio.wait_for(task, 30)
