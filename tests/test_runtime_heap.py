"""The runtime's heap settling after start-up (agent.runtime.settle_heap)."""

from __future__ import annotations

import gc

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
