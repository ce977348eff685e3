"""Progress for long commands (simulate, demo start-up, the benchmarks), drawn with Rich.

Always on stderr, so stdout stays what the command prints (JSON, reports, paths), and only
when stderr is a terminal: under systemd, in CI or piped into a file nothing is drawn.

    with progress("replaying demo_rush", total=240.0) as advance:
        ...
        advance(1.0)          # units of ``total`` (seconds, scenarios, runs)

``total=None`` draws a spinner with the elapsed time (a step of unknown length, such as the
kernels' first compile).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


def _noop(_amount: float = 1.0) -> None:
    pass


def enabled(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal a bar can be drawn on."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


@contextmanager
def progress(description: str, total: float | None = None, *,
             stream: TextIO | None = None) -> Iterator[Callable[[float], None]]:
    """A bar (or a spinner when ``total`` is None) on ``stream`` (default stderr) while the
    block runs; yields ``advance(amount)``. Nothing is drawn when the stream is not a TTY."""
    stream = sys.stderr if stream is None else stream
    if not enabled(stream):
        yield _noop
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = ([SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
               if total is None else
               [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()])
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(amount: float = 1.0) -> None:
            bar.advance(task, amount)

        yield advance
