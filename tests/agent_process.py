"""The agent as its own process (`venue-agent run --config F`), as systemd runs it, for the
end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
