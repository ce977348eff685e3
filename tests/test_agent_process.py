"""The test and bench harness never leaves an agent behind: a child started with
``die_with_parent`` gets SIGTERM when the process that started it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.agent_process import ROOT

CHILD = """
import subprocess, sys, time
from tests.agent_process import die_with_parent
p = subprocess.Popen(die_with_parent([sys.executable, "-c", "import time; time.sleep(60)"]))
print(p.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_dies_with_the_process_that_started_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    assert _alive(grandchild)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the child outlived the process that started it"
