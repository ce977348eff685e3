"""A local MQTT broker for the demo and the tests.

``start_broker()`` runs Mosquitto when it is installed (MQTT 5 and 3.1.1), with its own
config file on a free loopback port. Without Mosquitto it falls back to amqtt, a pure
Python broker, in a child process (``python -m agent.broker --embedded --port N``) so its
asyncio loop and its bugs stay out of the agent's process. amqtt speaks only MQTT 3.1.1:
a publisher with ``protocol="auto"`` falls back to 3.1.1 and nudges lose message expiry.

Either way the broker is a real process on 127.0.0.1, so ``kill()`` (SIGKILL) and
``restart()`` on the same port exercise the agent's reconnect path for real.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

__all__ = ["BrokerError", "LocalBroker", "find_mosquitto", "free_port", "start_broker"]

BrokerKind = Literal["mosquitto", "embedded"]

_START_TIMEOUT_S = 15.0


class BrokerError(RuntimeError):
    """The local broker could not be started or died."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (PATH, then /usr/sbin where Debian puts it)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalBroker:
    """A broker child process on 127.0.0.1:``port``; a context manager that stops it."""

    def __init__(
        self, kind: BrokerKind, port: int, workdir: Path, *, persistence: bool, own_dir: bool
    ) -> None:
        self.kind: BrokerKind = kind
        self.port = port
        self.workdir = workdir
        self.persistence = persistence
        self._own_dir = own_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / f"{kind}.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            binary = find_mosquitto()
            if binary is None:
                raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                f"persistence {'true' if self.persistence else 'false'}",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "set_tcp_nodelay true",
                # Started as root, Mosquitto would switch to the "mosquitto" user and could
                # not write persistence into our work directory; stay who started it.
                f"user {pwd.getpwuid(os.getuid()).pw_name}",
            ]
            if self.persistence:
                lines.append(f"persistence_location {self.workdir}/")
            conf.write_text("\n".join(lines) + "\n")
            return [binary, "-c", str(conf)]
        return [sys.executable, "-m", "agent.broker", "--embedded", "--port", str(self.port)]

    def start(self) -> None:
        """Start the process and wait until it accepts TCP connections."""
        if self.running:
            return
        if _accepts(self.port):
            # Otherwise the readiness probe below would mistake the other listener for ours.
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use")
        env = dict(os.environ)
        # The embedded broker runs this module; make the package importable from anywhere.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts(self.port):
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.kind} broker on port {self.port} exited with code {code}: "
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"{self.kind} broker did not accept connections on port {self.port} within "
                    f"{_START_TIMEOUT_S:g} s: {self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop with SIGTERM (Mosquitto saves persistence), SIGKILL if it hangs."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved, connections reset."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def save(self, timeout: float = 5.0) -> None:
        """Make Mosquitto write its persistence file now (SIGUSR1) and wait for it."""
        if self.kind != "mosquitto" or not self.persistence or self._proc is None:
            raise BrokerError("save() needs a mosquitto broker started with persistence=True")
        db = self.workdir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else None
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime_ns != before:
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not write {db} within {timeout:g} s")

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def close(self) -> None:
        """Stop and remove the work directory if ``start_broker`` created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_broker(
    prefer: Literal["auto", "mosquitto", "embedded"] = "auto",
    port: int | None = None,
    workdir: Path | None = None,
    *,
    persistence: bool = False,
) -> LocalBroker:
    """Start a broker on 127.0.0.1 and return once it accepts connections.

    ``prefer="auto"`` uses Mosquitto when installed, else the embedded amqtt broker
    (MQTT 3.1.1 only). ``persistence`` (Mosquitto only) keeps sessions and queued
    messages in ``workdir`` across ``stop()``/``restart()`` and ``save()``.
    """
    if prefer not in ("auto", "mosquitto", "embedded"):
        raise ValueError(f"prefer must be 'auto', 'mosquitto' or 'embedded', not {prefer!r}")
    kind: BrokerKind = prefer if prefer != "auto" else (
        "mosquitto" if find_mosquitto() else "embedded"
    )
    if kind == "embedded" and persistence:
        raise BrokerError("the embedded broker has no persistence; use mosquitto")
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="venue-agent-broker-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(
        kind, port or free_port(), wd, persistence=persistence, own_dir=own_dir
    )
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return broker


async def _serve_embedded(port: int) -> None:
    from amqtt.broker import Broker  # optional dependency: only the fallback needs it

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        # The plugins section replaces amqtt's defaults: anonymous access, no $SYS.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the embedded MQTT 3.1.1 broker (amqtt).")
    parser.add_argument("--embedded", action="store_true", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve_embedded(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
