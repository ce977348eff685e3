"""What the command/response virtual readers (UHF M100, PN532) share: a PTY behind a
re-pointable symlink, a daemon thread that reads the agent's commands every ``poll_s``
seconds, and a power-on reset when the reader is replugged.

A subclass sets up its own state, then calls :meth:`_start`; it implements
:meth:`_power_on` (state after power-up or a replug) and :meth:`_step` (handle the bytes
the host sent since the last poll; may be empty).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

from simulators.pty_reader import VirtualSerialReader


class CommandReader:
    def __init__(self, link_path: Path, *, encode: Callable[[bytes], bytes], poll_s: float,
                 name: str) -> None:
        self.port = VirtualSerialReader(link_path, encode=encode)
        self._poll_s = poll_s
        self._device: str | None = self.port.device_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _start(self) -> None:
        self._thread.start()

    @property
    def link_path(self) -> Path:
        return self.port.link_path

    def unplug(self) -> None:
        self.port.unplug()

    def replug(self) -> None:
        self.port.replug()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.port.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            if self.port.device_path != self._device:
                self._device = self.port.device_path
                self._power_on()
            self._step(self.port.recv())

    def _power_on(self) -> None:
        raise NotImplementedError

    def _step(self, data: bytes) -> None:
        raise NotImplementedError
