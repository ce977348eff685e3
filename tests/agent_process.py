"""The agent as its own process (`venue-agent run --config F`), as systemd runs it, for the
end-to-end tests; and :func:`run_until`, an in-process Agent's run loop until a condition."""

from __future__ import annotations

import asyncio
import os
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


def start_agent(cfg: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """Start the agent on ``cfg``; its stdout and stderr are appended to ``log``."""
    with log.open("a") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), *args],
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
