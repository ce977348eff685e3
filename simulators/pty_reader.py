"""A serial wristband reader on a pseudo-terminal, at a stable path like a udev symlink.

The agent opens ``link_path`` with pyserial exactly as it would open ``/dev/rfid-dino-entry``
on a gateway; the simulator writes the reader's bytes into the PTY master.

Trade-off: the simulator keeps its own descriptor of the PTY *slave* open for the PTY's whole
life, so the PTY exists and accepts writes whether or not the agent has the port open (for
example while it reconnects), and the simulator never sees EIO for the agent's timing. The
cost: bytes written while nobody reads wait in the PTY buffer (about 20 KiB) and would reach a
late reader stamped with its receipt time, where a real USB reader that nobody has open loses
them. pyserial flushes the input buffer when it opens a port, so in practice only bytes sent
while the agent has the port open are delivered, as with real hardware. Once the buffer is
full, further frames are dropped and counted in ``dropped`` instead of blocking the
simulator, as a reader's UART would drop them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import tty
from collections.abc import Callable
from pathlib import Path


class VirtualSerialReader:
    """One simulated serial reader.

    encode: turns a tag's bytes into the exact frame the real reader sends (for EM4100
        readers ``firmware_bridge.em4100.encode``).
    """

    def __init__(self, link_path: Path, *, encode: Callable[[bytes], bytes]) -> None:
        self.link_path = Path(link_path)
        self._encode = encode
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        # A replay thread sends while a test thread may unplug: without the lock a write could
        # hit a closed descriptor, or worse a reused one.
        self._lock = threading.Lock()
        #: Frames (or raw chunks) written to the PTY / dropped because it was unplugged or full.
        self.sent = 0
        self.dropped = 0
        self._open()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def device_path(self) -> str | None:
        """The PTY slave's real path (``/dev/pts/N``) while plugged, else ``None``."""
        return self._device

    def unplug(self) -> None:
        """Pull the cable: close the PTY and remove the symlink, as udev would.

        A program holding the port open gets an error on its next read (EIO); reopening the
        link fails until :meth:`replug`.
        """
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            self._device = None

    def replug(self) -> None:
        """Plug back in: a new PTY (a new ``/dev/pts/N``) behind the same ``link_path``."""
        if self.plugged:
            self.unplug()
        self._open()

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> VirtualSerialReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data ---------------------------------------------------------------------------

    def send(self, tag: bytes) -> bool:
        """Send one read of ``tag`` as the reader's frame. False if it was dropped."""
        return self.send_raw(self._encode(tag))

    def send_raw(self, data: bytes) -> bool:
        """Write arbitrary bytes (line noise, a torn frame) to the port. False if dropped."""
        with self._lock:
            if self._master is None:
                self.dropped += 1
                return False
            try:
                written = os.write(self._master, data)
            except OSError:  # EAGAIN: buffer full; EIO: PTY hung up
                written = 0
            if written < len(data):
                # A torn frame is what an overflowing UART produces too; decoders resync.
                self.dropped += 1
                return False
            self.sent += 1
            return True

    def recv(self, max_bytes: int = 4096) -> bytes:
        """Bytes the agent wrote to the port (commands to the reader), without blocking."""
        with self._lock:
            if self._master is None:
                return b""
            try:
                return os.read(self._master, max_bytes)
            except OSError:  # EAGAIN: nothing written; EIO: the port is not open
                return b""

    # -- internals ----------------------------------------------------------------------

    def _open(self) -> None:
        master, slave = os.openpty()
        # Raw mode: no echo (an echo would fill the master's output that nobody reads and
        # then block us), no line discipline rewriting CR/LF or eating control bytes.
        tty.setraw(slave)
        os.set_blocking(master, False)
        device = os.ttyname(slave)
        with self._lock:
            self._master, self._slave, self._device = master, slave, device
        self._point_link(device)

    def _point_link(self, target: str) -> None:
        """Atomically (re)point ``link_path`` at ``target``."""
        self.link_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, self.link_path)
