"""Progress of long commands: drawn on a terminal (a real PTY here), silent otherwise."""

from __future__ import annotations

import io
import os
import select
import time

from agent.progress import enabled, progress


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    assert not enabled(out)
    with progress("replaying", total=3.0, stream=out) as advance:
        advance(1.0)
        advance(2.0)
    with progress("compiling", stream=out):
        pass
    assert out.getvalue() == ""


def test_a_bar_is_drawn_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert enabled(tty)
            with progress("replaying demo_rush", total=2.0, stream=tty) as advance:
                advance(1.0)
                time.sleep(0.3)  # Rich refreshes the bar ten times a second
                advance(1.0)
            tty.flush()
        drawn = b""
        deadline = time.monotonic() + 5.0
        while b"replaying demo_rush" not in drawn and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                drawn += os.read(master, 65536)
        assert b"replaying demo_rush" in drawn
    finally:
        os.close(master)
        os.close(slave)
