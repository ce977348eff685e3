"""The runtime's heap settling after start-up (agent.runtime.settle_heap)."""

from __future__ import annotations

import gc
import subprocess
import sys

from agent.runtime import settle_heap


def test_settle_heap_moves_the_start_up_heap_out_of_the_collectors_sight() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    Cycle()  # start-up garbage: collected, not frozen
    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
        assert not [o for o in gc.get_objects() if isinstance(o, Cycle)]
        # what was alive at start-up is no longer walked by a full collection
        assert len(gc.get_objects()) < gc.get_freeze_count()
    finally:
        gc.unfreeze()


_CHECKPOINT_LIKE = """
import sys, threading
import numpy as np
from agent.runtime import give_back_large_blocks

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

if sys.argv[1] == "on":
    give_back_large_blocks()

def checkpoints():  # copies of 1 MB arrays in a worker thread, freed, three times over
    for _ in range(3):
        copies = [np.ones(1 << 17) for _ in range(28)]
        del copies
        big = np.ones(1 << 20)
        del big

base = rss_mb()
t = threading.Thread(target=checkpoints)
t.start()
t.join()
print(rss_mb() - base)
"""


def test_freed_large_blocks_go_back_to_the_os() -> None:
    """The memory of a checkpoint's array copies is returned once they are freed; without
    give_back_large_blocks glibc keeps ~28 MB of them (the ratio, not an absolute size)."""
    kept = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", _CHECKPOINT_LIKE, mode], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        kept[mode] = float(out)
    assert kept["off"] > 20 and kept["on"] < 0.2 * kept["off"]
