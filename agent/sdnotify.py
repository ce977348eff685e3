"""systemd's notify protocol: tell the service manager we are ready, alive, stopping.

With ``Type=notify`` and ``WatchdogSec=`` in the unit, systemd passes ``NOTIFY_SOCKET`` (a
Unix datagram socket; a leading ``@`` means the abstract namespace) and ``WATCHDOG_USEC``
(microseconds) in the environment. The agent sends ``READY=1`` after its first tick,
``WATCHDOG=1`` from the tick loop at least twice per watchdog interval (so a hung loop is
restarted, not merely a dead process), and ``STOPPING=1`` on a clean stop. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.

The protocol is one datagram of ``KEY=VALUE`` lines (sd_notify(3)); it is written here rather
than taken from a package because it is these few lines and the packages that wrap it add
nothing a gateway needs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("venue_agent.sdnotify")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process the watchdog is for.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else 0.0
        self._last_ping = -float("inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification; False (logged once) if the socket cannot be reached."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("systemd notify socket %s: %s", self.address.lstrip("\0"), e)
                self._warned = True
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def ping(self, now: float | None = None) -> None:
        """Pet the watchdog, at most twice per interval (cheap to call every tick)."""
        if not self.watchdog_s:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_s / 2.0:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
