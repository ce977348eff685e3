"""systemd notify: READY after the first tick, WATCHDOG from the tick loop, STOPPING on a clean
stop, captured on a real Unix datagram socket as systemd would receive them."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.sdnotify import Notifier


def _config(tmp: Path) -> str:
    return f"""
[venue]
id = "park"
[gateway]
id = "gw-1"
tick_s = 0.05
[broker]
url = "mqtt://127.0.0.1:9"
[storage]
path = "{tmp / 'agent.db'}"
[[readers]]
id = "r1"
protocol = "em4100"
port = "socket://127.0.0.1:9"
zone = "z"
role = "entry"
[[zones]]
id = "z"
kind = "queue"
"""


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.0)
    yield path, s
    s.close()


def _drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.extend(s.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return out


def test_the_agent_is_ready_after_its_first_tick_and_pets_the_watchdog(
        tmp_path: Path, notify_socket, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pets at least every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    from agent.runtime import Agent

    agent = Agent(parse_config(_config(tmp_path)))
    got: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(1200):  # up to 60 s: a busy machine starts slowly
            await asyncio.sleep(0.05)
            got.extend(_drain(sock))
            if got.count("WATCHDOG=1") >= 3:
                break
        stop.set()
        await asyncio.wait_for(task, 30)
        got.extend(_drain(sock))

    asyncio.run(main())
    assert "READY=1" in got
    assert got.count("WATCHDOG=1") >= 3
    assert got.index("READY=1") < got.index("WATCHDOG=1")
    assert got[-1] == "STOPPING=1"


def test_outside_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and not n.send("READY=1")


def test_abstract_socket_names_and_another_process_watchdog() -> None:
    n = Notifier({"NOTIFY_SOCKET": "@venue-test", "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": "1"})
    assert n.address == "\0venue-test"
    assert n.watchdog_s == 0.0  # the watchdog is for PID 1, not us


def test_an_unreachable_socket_is_logged_once_not_raised(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.send("READY=1") and not n.send("READY=1")
    assert len([r for r in caplog.records if "notify socket" in r.message]) == 1
